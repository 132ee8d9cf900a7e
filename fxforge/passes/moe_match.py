"""What the `moe` rules match with (`moe_rules.py`: router and experts; `moe_shared.py`: shared experts; the
attention rules' LSE test reads `src` / `op_of` too): values through views and casts, producers by opcode (or the
in-place externs of one), operand pairs, the gate / up halves of one product, the norm the experts read."""

from __future__ import annotations

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Op, Value
from fxforge.passes.rewriter import dims_match

VIEWS = ("reshape", "expand")
DIV = ("aten.div_.Tensor", "aten.div.Tensor")
ADD = ("aten.add_.Tensor", "aten.add.Tensor")


def src(v: Value, skip: tuple[str, ...] = VIEWS) -> Value:
    """v through the producers of the opcodes `skip` (views: the value they view)."""
    while v.producer is not None and v.producer.opcode in skip:
        v = v.producer.operands[0]
    return v


def op_of(v: Value, opcode: str, externs: tuple[str, ...] = ()) -> Op | None:
    """v's producer if it is `opcode` (or an extern of one of `externs`, in-place or not, on two tensors)."""
    p = v.producer
    if p is None:
        return None
    if p.opcode == opcode or (p.opcode == "extern" and p.attrs.get("target") in externs and len(p.operands) == 2):
        return p
    return None


def is_const(v: Value) -> bool:
    """v is made by a `const` (a weight)."""
    return v.producer is not None and v.producer.opcode == "const"


def pairs(op: Op) -> list[tuple[Value, Value]]:
    """A binary op's operands in both orders."""
    a, b = op.operands
    return [(a, b), (b, a)]


def upcast_src(v: Value) -> Value:
    """v before casts to fp32 from a narrower float (exact: the router's fp32 logits of fp16 / bf16 weights, Flint's
    fp32 attention scores of 16-bit q and k)."""
    while (v.producer is not None and v.producer.opcode == "cast" and v.type.dtype == DType.f32
           and v.producer.operands[0].type.dtype in (DType.f16, DType.bf16, DType.f32)):
        v = v.producer.operands[0]
    return v


def gate_up_halves(g: Value, u: Value) -> tuple[Value, str] | None:
    """(up, layout) when g and u are the gate and up halves of one `up` [S, 2I] (or [S, 1, 2I], the halves reshaped:
    Aria's transposed experts): concat or interleaved (the experts' bmm, `moe_rules`; a shared MLP's one linear,
    `moe_shared`)."""
    gs, us = op_of(src(g, ("reshape",)), "slice"), op_of(src(u, ("reshape",)), "slice")
    if (gs is None or us is None or gs.operands[0] is not us.operands[0]
            or gs.attrs["dim"] not in (-1, gs.operands[0].type.rank - 1) or us.attrs["dim"] != gs.attrs["dim"]
            or not all(dims_match(t.type.shape[-1], h.result.type.shape[-1]) for t, h in ((g, gs), (u, us)))):
        return None  # (a reshape between may drop unit dims only: the halves' last dim stays)
    up = gs.operands[0]
    n = up.type.shape[-1]
    a, b = gs.attrs, us.attrs
    if (a["start"], a["step"], b["start"], b["step"]) == (0, 2, 1, 2):
        return up, "interleaved"
    if a["step"] == b["step"] == 1 and a["start"] == 0 and 2 * a["end"] == n and b["start"] == a["end"]:
        return up, "concat"
    return None


def weighted_norm(x: Value) -> tuple[str, Value, Value, float] | None:
    """(kind, input, weight, eps) when x = rms_norm(x0, w) or layer_norm(x0, w) (kind "rms" / "layer", the `moe` op's
    `norm`; a LayerNorm without bias), or x = cast(norm(cast(x0, f32), w), x0's dtype) (the norm in fp32, weight
    included, rounded once: GPT-OSS's, Gemma's, Cohere's): the op's norm computes the latter; the former it rounds
    once too, where an rms_norm chain rounded before the weight."""
    p = x.producer
    if p is not None and p.opcode == "cast":
        inner = p.operands[0].producer
        first = inner.operands[0].producer if inner is not None and inner.opcode in _NORMS else None
        if first is not None and first.opcode == "cast" and first.operands[0].type.dtype == x.type.dtype:
            p, x0 = inner, first.operands[0]
        else:
            return None
    elif p is not None and p.opcode in _NORMS:
        x0 = p.operands[0]
    else:
        return None
    if len(p.operands) != 2 or (p.opcode == "rms_norm" and _centered(x0)):
        return None
    return _NORMS[p.opcode], x0, p.operands[1], float(p.attrs["eps"])


def _centered(v: Value) -> bool:
    """v = x - mean(x, keepdim): an rms_norm of it is a LayerNorm canonicalize has not made one yet (Cohere's is
    written out): `moe_rules._norm_into` takes the layer_norm once it is."""
    p = v.producer
    m = p.operands[1].producer if p is not None and p.opcode == "sub" else None
    return m is not None and m.opcode == "mean" and m.operands[0] is p.operands[0]


_NORMS = {"rms_norm": "rms", "layer_norm": "layer"}  # IR opcode -> the moe op's norm
