"""Concatenate the linears that read the same input into one GEMM (issue #13, fewer launches).

Q, K and V projections (and any other siblings: an MLP's gate and up) read one activation: one
`linear` with their weights stacked along the output dim, then a `slice` per original result (a view,
read by stride), so a decode step launches one GEMM where it launched three.

    %q = linear(%x, %wq, %bq); %k = linear(%x, %wk, %bk); %v = linear(%x, %wv, %bv)
 -> %qkv = linear(%x, %wqkv, %bqkv); %q = slice(%qkv) {dim=-1, end=Nq}; %k = slice(...); %v = slice(...)

Decisions:
- Dense `linear`s whose weights (and biases, all or none) are plain constants of one dtype, and
  `qlinear`s of row-major `#quantized` const weights that share the encoding (format, group, scale
  dtype, zero point), the attributes (scheme, act_format, group) and the payload parts (`_key`). Every
  payload part (codes, scale, zero, shift; w4a8-fp's s_max too) is per output row, so the parts stack
  along dim 0 and decode(stacked) == cat(decode(each)) bit for bit (`stack_weights`); the activation
  quantization is per token of the shared input, the same for every sibling. Runs before
  `decode_layout`, which re-encodes the stacked weight. Left alone: LoRC (its U factors would stack but
  V would need a block-diagonal stack), `#nm` / `#blockfp` weights and weights already in a layout.
- The quantized SwiGLU pair is stacked [gate; up] too; the row-major qlinear template has no SwiGLU
  epilogue (silu * mul runs as one pointwise kernel reading the two halves), the decode kernel has: the
  `decode_layout` pass interleaves the pair's rows for it (`permute_rows`).
- A group whose linears each carry a fusible consumer keeps those consumers: the fuse pass sees a
  GEMM followed by views and fuses what it can. MLP siblings (a linear feeding silu or mul) are left
  alone except the SwiGLU pair silu(gate) * up (dense linears with or without biases, bias-free qlinears), stacked
  [gate; up] in that order:
  the dense GEMM template runs it with the SwiGLU epilogue (two accumulators, one launch instead of
  two GEMMs and a pointwise kernel). `concat_linears.mlp` stacks every sibling group regardless.
- The stacked weight is a new weight (`<prefix>.{q_proj+k_proj+v_proj}.weight`); the originals go
  with dce. Runs for the generated-kernel executors, before dce.
"""

from __future__ import annotations

import re
from collections.abc import Hashable

import torch

from fxforge.ir.graph import Graph, Op, Value, Weight
from fxforge.ir.optable import GATED_ACTIVATIONS
from fxforge.ir.types import Quantized
from fxforge.passes.manager import PassContext


def _const_weight(graph: Graph, v: Value, encoded: bool = False) -> str | None:
    """The weight name of a const (plain, or `#quantized` row-major when `encoded`), else None."""
    p, enc = v.producer, v.type.encoding
    plain = enc is None or (encoded and isinstance(enc, Quantized) and not enc.layout)
    if p is None or p.opcode != "const" or not plain:
        return None
    return p.attrs["weight"]


def _key(graph: Graph, op: Op) -> Hashable | None:
    """What sibling GEMMs must share to stack into one, None when this op cannot: the opcode, the weight's
    dtype, encoding and K, bias or not, and for a `qlinear` its attributes (scheme, act_format, group) and
    payload parts; a LoRC-corrected qlinear stays alone (its factors would need a block-diagonal stack)."""
    if op.opcode not in ("linear", "qlinear") or len(op.operands) < 2:
        return None
    w, bias = op.operands[1], op.operands[2:]
    quantized = op.opcode == "qlinear"
    name = _const_weight(graph, w, encoded=quantized)
    if name is None or len(bias) > 1 or any(_const_weight(graph, b) is None for b in bias):
        return None
    if not quantized:
        return ("linear", w.type.dtype, w.type.shape[1], len(bias))
    if not isinstance(w.type.encoding, Quantized) or op.attrs["lorc_rank"]:
        return None
    attrs = tuple(sorted(op.attrs.items()))
    return ("qlinear", w.type.dtype, w.type.shape[1], len(bias), w.type.encoding, attrs,
            tuple(sorted(graph.weight(name).payload)))


def _gated_act(op: Op) -> bool:
    """`op` is the activation of a gated MLP (`GATED_ACTIVATIONS`: silu, tanh or erf GeLU)."""
    return op.opdef.activation_of(op.attrs) in GATED_ACTIVATIONS


def _feeds_swiglu(op: Op) -> bool:
    """The linear's result is gated by another linear's result (act(gate) * up): an MLP sibling."""
    return any(u.opcode == "mul" or _gated_act(u) for u in op.result.uses)


def _swiglu_pair(users: list[Op], keys: dict[int, Hashable]) -> list[Op] | None:
    """[gate, up] among sibling linears when the only use of gate is a gated activation act (silu, GeLU),
    whose only use is act(gate) * up, the only use of up: one GEMM with the gated (SwiGLU / GeGLU) epilogue
    (`fusion_rules.swiglu_ops`). Biases (both or neither, `_key`) only for dense linears: the dense template adds
    [b_gate; b_up] to its two accumulators; the 4-bit decode kernel's gated epilogue takes none."""
    for gate in users:
        act = gate.result.uses[0] if len(gate.result.uses) == 1 else None
        if act is None or not _gated_act(act) or len(act.result.uses) != 1:
            continue
        mul = act.result.uses[0]
        other = [v for v in mul.operands if v is not act.result]
        if mul.opcode != "mul" or len(other) != 1:
            continue
        up = next((u for u in users if u is not gate and u.result is other[0] and len(u.result.uses) == 1), None)
        if up is not None and keys[id(up)] == keys[id(gate)] and (len(gate.operands) == 2 or gate.opcode == "linear"):
            return [gate, up]
    return None


def _groups(graph: Graph, mlp: bool) -> list[list[Op]]:
    groups = []
    for x in graph.values():
        users = [u for u in dict.fromkeys(x.uses) if u.operands and u.operands[0] is x]
        keys = {id(u): _key(graph, u) for u in users}
        users = [u for u in users if keys[id(u)] is not None]
        if not mlp:
            pair = _swiglu_pair(users, keys)
            if pair is not None:
                groups.append(pair)
            users = [u for u in users if not _feeds_swiglu(u)]
        by_key: dict[Hashable, list[Op]] = {}
        for u in users:
            by_key.setdefault(keys[id(u)], []).append(u)
        groups += [sorted(same, key=graph.ops.index) for same in by_key.values() if len(same) >= 2]
    return groups


def stacked_name(names: list[str]) -> str:
    """The name of a weight stacked from `names`: their common prefix and suffix around `{a+b+...}`, which
    `export.stacked.parts_of` reads back (`moe_shared.py` names the experts stacked with a shared MLP so too)."""
    parts = [n.split(".") for n in names]
    head = 0
    while all(len(p) > head + 1 and p[head] == parts[0][head] for p in parts):
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 and p[-1 - tail] == parts[0][-1 - tail] for p in parts):
        tail += 1
    mid = "+".join(".".join(p[head:len(p) - tail]) for p in parts)
    return ".".join(parts[0][:head] + ["{" + mid + "}"] + (parts[0][len(parts[0]) - tail:] if tail else []))


def first_part(name: str) -> str:
    """The first weight name a stacked one lists (the name itself when it is not stacked)."""
    return re.sub(r"\{([^+{}]*)[^{}]*\}", r"\1", name, count=1)


def stack_weights(weights: list[Weight]) -> Weight:
    """One weight with the given ones' rows stacked (along the output dim). An encoded (`#quantized`,
    row-major) weight keeps its encoding: every payload part (codes, scale, zero, shift) is per output
    row, so the parts stack row for row and decode(stacked) == cat(decode(each)) exactly."""
    first = weights[0]
    if first.encoding is None:
        return Weight(torch.cat([w.data for w in weights], dim=0))
    if any(w.encoding != first.encoding or set(w.payload) != set(first.payload) for w in weights):
        raise ValueError("stack_weights: the encoded weights differ in encoding or payload parts")
    rows = sum(w.data.shape[0] for w in weights)
    placeholder = first.data.new_zeros(()).expand(rows, *first.data.shape[1:])  # the logical shape, 4 bytes
    return Weight(placeholder, first.encoding, {k: torch.cat([w.payload[k] for w in weights], dim=0).contiguous()
                                                for k in first.payload})


def permute_rows(weight: Weight, perm: torch.Tensor) -> Weight:
    """The weight with its output rows in the order `perm` (row i of the result is row perm[i]): every payload
    part of a row-major encoded weight is per row, so each part is indexed along dim 0 (`stack_weights`)."""
    rows = weight.data.shape[0]
    if any(t.shape[0] != rows for t in weight.payload.values()) or weight.encoding is not None and not weight.payload:
        raise ValueError("permute_rows: a payload part is not per output row")
    data = weight.data if weight.data.stride(0) == 0 else weight.data[perm]  # a stacked placeholder stays one
    return Weight(data, weight.encoding, {k: t[perm].contiguous() for k, t in weight.payload.items()})


def _stack(graph: Graph, anchor: Op, operands: list[Value]) -> Value:
    names = [operand.producer.attrs["weight"] for operand in operands]
    name = stacked_name(names)
    graph.add_weight(name, stack_weights([graph.weight(n) for n in names]))
    return graph.insert_before(anchor, "const", attrs={"weight": name}, name=name.rsplit(".", 1)[0].split(".")[-1]).result


def concat_group(graph: Graph, group: list[Op]) -> None:
    anchor = group[0]
    x = anchor.operands[0]
    w = _stack(graph, anchor, [op.operands[1] for op in group])
    bias = [_stack(graph, anchor, [op.operands[2] for op in group])] if len(anchor.operands) == 3 else []
    fused = graph.insert_before(anchor, anchor.opcode, [x, w, *bias], dict(anchor.attrs), name="qkv").result
    start, parts = 0, []
    for op in group:
        n = op.operands[1].type.shape[0]
        parts.append(graph.insert_before(anchor, "slice", [fused], {"dim": fused.type.rank - 1, "start": start,
                                                                   "end": start + n}).result)
        start += n
    for op, part in zip(group, parts):
        graph.replace_op(op, [part])


class ConcatLinears:
    """stats: groups (how many), linears (how many became part of one)."""

    name = "concat_linears"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        groups = _groups(graph, bool(ctx.option("concat_linears.mlp", False)))
        for group in groups:
            concat_group(graph, group)
        ctx.stats["groups"] = len(groups)
        ctx.stats["linears"] = sum(len(g) for g in groups)
        return graph
