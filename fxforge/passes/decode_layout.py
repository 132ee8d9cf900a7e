"""The `decode_layout` pass: store the 4-bit weights of decode-shaped `qlinear`s in a decode layout (issue #13 item 5).

A `qlinear` whose weight is a w4a16-int4 or w4a8-fp (FP4-E2M1) `#quantized` const is re-encoded by
`ir.weight_layouts.to_decode_layout` (codes pre-shuffled into int32 words for the in-register dequantization of
`codegen.templates.qlinear_decode`; W4A8 then runs as W4A16 on the E4M3 activation codes' fp16 values);
the encoding's `layout` then says so, the codegen routes the layer's template call to `_qlinear_w4_decode`, and
the reference semantics are unchanged (`decode_weight` reads every layout exactly).

Which layers (decided per `qlinear`, statistics `layers`: {layer: "decode" or why not}):
- decode-shaped: the rows of the input (the product of its leading dims) are static and <= 16 (a decode step
  traced with static shapes, e.g. HF `generate` under `fxforge.compile`, where dynamo specialises T = 1); or
  symbolic in a decode-step graph (one that writes a KV cache, `cache_write`: `compile_decoder`'s step, whose
  T is dynamic because prefill and decode share it). Static rows > 16 are prefill-shaped: the row-major
  weight and the qlinear template stay (the decode layout would buy them nothing).
- w4a16-int4 or w4a8-fp with no LoRC, a group that admits a decode tile (`weight_layouts.decode_tile`), fp16
  or bf16 activations (the magic-number trick makes fp16 pairs; bf16 x is scaled into fp16 per row by a power
  of two in the kernel's prologue, exactly; f32 models keep the qlinear template), and a const read only by
  such qlinears.
Decisions:
- One weight copy: a decode-step graph whose T is dynamic runs its prefill calls through the same decode
  kernel with 64-row tiles (`qlinear_decode.decode_blocks`), never a second row-major copy of the weight.
- The layout's MMA-operand variant follows the GPU this process sees (`weight_layouts.preferred_operand`:
  kWidth 4 for Triton 3.6 on sm_80, x-permuted but on sm_80 with Triton >= 3.9); without a GPU, sm_90's.
  Only speed depends on it. w4a8-fp weights whose groups are multiples of 32 take "f4w128e" (the FP8-MMA kernel
  `qlinear_decode_f8`) unless the GPU is older than sm_90 (the option `decode_layout.fp8` overrides); a GPU
  without FP8 MMA that meets one re-encodes it for the fp16 kernel.
- Runs for the generated-kernel executors only (the reference evaluator gains nothing), after quantize.
- A stacked [gate; up] weight read as silu(gate) * up (`concat_linears`) gets its rows interleaved, gate and up
  alternating, before the layout is made (statistics `swiglu`): a row permutation of the row-major payload
  (scales and zero points move with their rows), not a change of the layout, and the two slices of the result
  become its even and odd columns. The decode kernel's SwiGLU epilogue (`qlinear_decode_fuse`) then finds
  whole (gate, up) pairs in every tile whatever BLOCK_N is (decode and prefill tiles differ).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
from typing import Any

import torch

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Weight
from fxforge.ir.types import Quantized
from fxforge.ir.weight_layouts import DECODE_ROWS, decode_tile, preferred_operand, to_decode_layout
from fxforge.passes.calibrate import site_name
from fxforge.passes.concat_linears import permute_rows
from fxforge.passes.fusion_rules import swiglu_ops
from fxforge.passes.manager import PassContext

DECODE_SCHEMES = {"w4a16-int4": "i4", "w4a8-fp": "f4e2m1"}  # scheme -> the weight format its decode layout holds


def _rows(op: Op) -> int | None:
    """The static row count of a qlinear's input (product of its leading dims), None when symbolic."""
    rows = math.prod(op.operands[0].type.shape[:-1])
    return int(rows) if getattr(rows, "is_number", True) else None


def _label(graph: Graph, op: Op) -> str:
    name = site_name(graph, op)
    return name.removesuffix(".q").removesuffix(".weight") if name else f"%{op.result.name}"


def why_not(op: Op, decode_step: bool) -> str | None:
    """None when this qlinear's weight goes into a decode layout, else the reason it stays row-major."""
    x, w = op.operands[:2]
    enc, const = w.type.encoding, w.producer
    if op.attrs["scheme"] not in DECODE_SCHEMES or not isinstance(enc, Quantized) or enc.format != DECODE_SCHEMES[
            op.attrs["scheme"]]:
        return f"scheme {op.attrs['scheme']}: decode layouts hold w4a16-int4 and w4a8-fp weights"
    if const is None or const.opcode != "const" or enc.layout:
        return "weight is not a row-major const"
    if op.attrs["lorc_rank"]:
        return "LoRC factors: the decode kernel has no LoRC step"
    k = w.type.shape[1]
    if not isinstance(k, int) or k % 2 or decode_tile(enc.group, k) is None:
        return f"group {enc.group} (K {k}) admits no decode tile"
    if x.type.dtype not in (DType.f16, DType.bf16):
        return f"{x.type.dtype.name} activations: the decode kernel takes fp16 or bf16"
    rows = _rows(op)
    if rows is None and not decode_step:
        return "symbolic rows outside a decode step"
    if rows is not None and rows > DECODE_ROWS:
        return f"prefill-shaped ({rows} rows > {DECODE_ROWS})"
    return None


def _gpu_arch() -> int | None:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return 10 * major + minor
    return None


def _gpu_operand() -> tuple[int, bool]:
    version = tuple(int(v) for v in importlib.metadata.version("triton").split(".")[:2])
    return preferred_operand(_gpu_arch(), version)


def apply_decode_layouts(graph: Graph, operand: tuple[int, bool] | None = None, fp8: bool | None = None
                         ) -> dict[str, Any]:
    """Re-encode the weights of decode-shaped qlinears in place (see the module docstring); the statistics."""
    decode_step = any(op.opcode == "cache_write" for op in graph.ops)
    layers: dict[str, str] = {}
    chosen: dict[int, Op] = {}
    for op in graph.find("qlinear"):
        label = _label(graph, op)
        reason = why_not(op, decode_step)
        layers[label] = reason or "decode"
        if reason is None:
            chosen[id(op.operands[1].producer)] = op.operands[1].producer
    kw, xperm = _gpu_operand() if operand is None and chosen else operand or (2, True)
    fp8 = (_gpu_arch() or 90) >= 90 if fp8 is None else fp8  # FP4 weights for the FP8-MMA kernel (sm_90)
    converted, swiglu = 0, []
    for const in chosen.values():
        users = const.result.uses
        if any(u.opcode != "qlinear" or u.operands[1] is not const.result or why_not(u, decode_step) for u in users):
            for u in users:  # read by something else too: one weight, one layout
                if u.opcode == "qlinear" and layers.get(_label(graph, u)) == "decode":
                    layers[_label(graph, u)] = "weight shared with a reader that keeps the row-major layout"
            continue
        name = const.attrs["weight"]
        weight, chain = graph.weight(name), swiglu_ops(users[0], graph, interleaved=False) if len(users) == 1 else None
        if chain is not None:  # concat_linears' [gate; up]: rows interleaved for the decode kernel's SwiGLU epilogue
            weight = interleave_swiglu(weight, chain)
            swiglu.append(_label(graph, users[0]))
        new = to_decode_layout(weight, kw=kw, xperm=xperm, fp8=fp8)
        graph.weights[name] = new
        const.result.type = dataclasses.replace(const.result.type, encoding=new.encoding)
        converted += 1
    return {"decode_step": decode_step, "weights": converted, "kwidth": kw, "xperm": xperm, "fp8": fp8,
            "layers": layers, "swiglu": swiglu}


def interleave_swiglu(weight: Weight, chain: list[Op]) -> Weight:
    """[gate; up] rows -> [g0, u0, g1, u1, ...], and the chain's two slices (`fusion_rules.swiglu_ops`) read the
    result's even and odd columns: the IR means what it meant, and a tile of the decode kernel holds whole pairs."""
    n = weight.data.shape[0] // 2
    gate, up = chain[:2]
    gate.attrs.update(start=0, end=2 * n, step=2)
    up.attrs.update(start=1, end=2 * n, step=2)
    return permute_rows(weight, torch.stack([torch.arange(n), torch.arange(n, 2 * n)], dim=1).reshape(-1))


class DecodeLayout:
    """stats: see `apply_decode_layouts`."""

    name = "decode_layout"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        ctx.stats.update(apply_decode_layouts(graph, ctx.option("decode_layout.operand"),
                                              ctx.option("decode_layout.fp8")))
        return graph
