"""Eager attention written out as ops becomes the `attention` op (canonicalize's `ATTENTION_RULES`).

HF's `eager_attention_forward` (the only attention of models sdpa cannot express, e.g. Gemma2's logit
soft-capping) captures as

    s = matmul(q, permute(k, [0, 1, 3, 2]))               # q [b, h, Lq, d], k [b, h, Lk, d]
    s = mul(s, scale)  |  div(s, 1 / scale)                # optional
    s = mul(tanh(div(s, cap)), cap)                        # optional: logit soft-cap
    s = add(s, mask)                                       # optional: additive mask, broadcasting to s
    p = softmax(s, dim=-1)  |  cast(softmax(cast(s, f32)), q.dtype)
    o = matmul(p, v)
 -> o = attention(q, k, v, mask?) {scale, softcap}

so it runs as one flash-attention / flash-decoding kernel instead of two bmm and a softmax with the
scores in memory; the soft-cap is the op's `softcap` attribute (the templates apply it at the score
step, before the mask; the reference executor computes it as eager does, `optable._softcapped_attention`).

Decisions:
- One rule per combination of the optional pieces (a table, `_VARIANTS`), each asking every interior op
  to be single use: scores read elsewhere (returned attention weights) stay as they are.
- The cap is read from the `full`s the div and mul take; both must hold the same number. Only an
  additive float mask of q's dtype whose dims are 1 or the scores' is taken (the templates' contract).
- The head repeat (HF's repeat_kv) stays in the operands: `gqa_attention` takes it into the op.
"""

from __future__ import annotations

import itertools

import torch

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Value
from fxforge.passes.rewriter import P, Pattern, Rule, dims_match


def _scalar(full: Value) -> float | None:
    value = full.producer.attrs["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(torch.tensor(value, dtype=full.type.dtype.torch).item())


def _scores(scale: str, softcap: bool, mask: bool) -> Pattern:
    s = P.op("matmul", P.any("q"), P.any("kt"), name="qk")
    if scale == "mul":
        s = P.op("mul", s, P.full("scale"), commutative=True)
    elif scale == "div":
        s = P.op("div", s, P.full("inv_scale"))
    if softcap:
        s = P.op("mul", P.op("tanh", P.op("div", s, P.full("cap"))), P.full("cap_out"), commutative=True)
    if mask:
        s = P.op("add", s, P.any("mask"), commutative=True)
    return s


def _pattern(scale: str, softcap: bool, mask: bool, upcast: bool) -> Pattern:
    s = _scores(scale, softcap, mask)
    p = P.op("cast", P.op("softmax", P.op("cast", s, dtype=DType.f32)), name="p") if upcast else P.op("softmax", s)
    return P.op("matmul", p, P.any("v"))


def _key(kt: Value) -> Value | None:
    """k when kt is k transposed in its last two dims (rank 4)."""
    p = kt.producer
    if p is None or p.opcode != "permute" or tuple(p.attrs["dims"]) != (0, 1, 3, 2):
        return None
    return p.operands[0]


def _mask_fits(mask: Value, scores: Value) -> bool:
    shape, to = mask.type.shape, scores.type.shape
    return mask.type.dtype == scores.type.dtype and len(shape) <= len(to) and all(a == 1 or dims_match(a, b) for a, b in zip(shape[::-1], to[::-1]))


def _to_attention(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    q, v, qk = b["q"], b["v"], b["qk"]
    k = _key(b["kt"])
    if k is None or any(t.type.rank != 4 for t in (q, k, v)) or not q.type.dtype.is_float:
        return None
    if len({t.type.dtype for t in (q, k, v)}) != 1 or op.result.type.dtype != q.type.dtype:
        return None
    if not (dims_match(q.type.shape[3], k.type.shape[3]) and dims_match(k.type.shape[2], v.type.shape[2])):
        return None
    if "p" in b and b["p"].producer.attrs["dtype"] != q.type.dtype:
        return None
    softmax = op.operands[0].producer if "p" not in b else b["p"].producer.operands[0].producer
    if softmax.attrs["dim"] != 3:
        return None
    scale = _scalar(b["scale"]) if "scale" in b else 1.0
    if "inv_scale" in b:
        inv = _scalar(b["inv_scale"])
        scale = 1.0 / inv if inv else None
    cap = _scalar(b["cap"]) if "cap" in b else None
    if scale is None or ("cap" in b and (not cap or cap != _scalar(b["cap_out"]))):
        return None
    if "mask" in b and not _mask_fits(b["mask"], qk):
        return None
    operands = [q, k, v] + ([b["mask"]] if "mask" in b else [])
    return g.insert_before(op, "attention", operands, {"scale": scale, "softcap": cap}).result


# (scale op, soft-cap, mask, fp32 softmax between casts) -> one rule each
_VARIANTS = list(itertools.product(("mul", "div", "none"), (True, False), (True, False), (True, False)))
ATTENTION_RULES: list[Rule] = [
    Rule(_pattern(*variant), _to_attention, "eager_attention" + "_softcap" * variant[1], single_use=True) for variant in _VARIANTS
]
