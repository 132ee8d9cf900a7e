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

GPT-OSS's attention sinks (a learned logit per head [Hq] that joins the softmax's denominator only):

    s = cat(s, expand(reshape(sinks, [1, Hq, 1, 1]), [b, Hq, Lq, 1]), dim=3)
    p = slice(softmax(s), dim=3, end=Lk)   # the sink column dropped (GPT-OSS's shift by the row max: below)
 -> o = attention(q, k, v, mask?, sinks) {scale, softcap, sinks=true}

Granite-SWA's sinks, the same function written as a scale on the output (softmax(s) @ v times
sum(e^s) / (sum(e^s) + e^sink)):

    o = mul(matmul(softmax(s), v), reshape(sigmoid(sub(logsumexp(s, -1), reshape(sinks, [1, Hq, 1])))))
        (fp16: the softmax between casts as above, the sigmoid of the difference cast to fp32 and back)
 -> o = attention(q, k, v, mask?, sinks) {scale, softcap, sinks=true}

A softmax of scores shifted by their row max (GPT-OSS's and MiMo-V2-Flash's eager attention) is the softmax of the
scores (`softmax_unshift`: softmax(sub(s, max_dim(s, -1, keepdim)[0])) -> softmax(s), the max read by the sub only,
its indices by nobody), so the forms above match it too;

so it runs as one flash-attention / flash-decoding kernel instead of two bmm and a softmax with the
scores in memory; the soft-cap is the op's `softcap` attribute (the templates apply it at the score
step, before the mask; the reference executor computes it as eager does, `attention_op._eager_attention`).

Decisions:
- One rule per combination of the optional pieces (a table, `_VARIANTS`), each asking every interior op
  to be single use: scores read elsewhere (returned attention weights) stay as they are.
- The cap is read from the `full`s the div and mul take; both must hold the same number. Only an
  additive float mask of q's dtype whose dims are 1 or the scores' is taken (the templates' contract).
- The head repeat (HF's repeat_kv) stays in the operands: `gqa_attention` takes it into the op.
- A max subtraction is dropped (softmax is shift-invariant; the templates' online softmax keeps its own running
  max). The sinks' scores `cat` is read by the softmax only; the sink column may be any reshape/expand chain of a
  tensor of Hq numbers (views, not checked for single use).
- logsumexp is matched as the `extern` the frontend leaves it as (its last dim, no keepdim); the scores are
  read by it and the softmax only.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Value
from fxforge.passes.moe_match import op_of, src, upcast_src
from fxforge.passes.rewriter import P, Pattern, Rule, dims_match, same_type


def _scalar(full: Value) -> float | None:
    value = full.producer.attrs["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(torch.tensor(value, dtype=full.type.dtype.torch).item())


def _scores(scale: str, softcap: bool, mask: bool) -> Pattern:
    """The scores, each op asking for single use (the sinks rule cannot ask it of the whole match)."""
    s = P.op("matmul", P.any("q"), P.any("kt"), name="qk", single_use=True)
    if scale == "mul":
        s = P.op("mul", s, P.full("scale"), commutative=True, single_use=True)
    elif scale == "div":
        s = P.op("div", s, P.full("inv_scale"), single_use=True)
    if softcap:
        s = P.op("mul", P.op("tanh", P.op("div", s, P.full("cap"), single_use=True), single_use=True),
                 P.full("cap_out"), commutative=True, single_use=True)
    if mask:
        s = P.op("add", s, P.any("mask"), commutative=True, single_use=True)
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


def _mask_fits(mask: Value, scores: Value, q_dtype: DType | None = None) -> bool:
    """An additive mask of the scores' dtype (or, upcast scores, of q's: added exactly in fp32) broadcasting to them."""
    shape, to = mask.type.shape, scores.type.shape
    return mask.type.dtype in (scores.type.dtype, q_dtype) and len(shape) <= len(to) and all(
        a == 1 or dims_match(a, b) for a, b in zip(shape[::-1], to[::-1]))


def _upcast_qk(q: Value, kt: Value) -> tuple[Value, Value] | None:
    """(q16, k16) when the scores are matmul(cast(q16, f32), k16 cast to f32 and transposed, in either order), else
    None (Flint's scores in fp32 from 16-bit q and k)."""
    k = _key(kt)
    q16, k16 = upcast_src(q), upcast_src(k) if k is not None else _key(upcast_src(kt))
    ok = q16 is not q and k16 is not None and q16.type.dtype == k16.type.dtype and q16.type.dtype.bits == 16
    return (q16, k16) if ok else None


def _attention_args(op: Op, b: dict[str, Value], softmax: Op) -> tuple[list[Value], dict] | None:
    """([q, k, v, mask?], {scale, softcap[, upcast]}) of a matched eager attention rooted at `op` (p @ v), or None."""
    q, v, qk = b["q"], b["v"], b["qk"]
    k = _key(b["kt"])
    up = _upcast_qk(q, b["kt"]) if q.type.dtype != v.type.dtype else None
    if up is not None:
        q, k = up
    if k is None or any(t.type.rank != 4 for t in (q, k, v)) or not q.type.dtype.is_float:
        return None
    if len({t.type.dtype for t in (q, k, v)}) != 1 or op.result.type.dtype != q.type.dtype:
        return None
    if not (dims_match(q.type.shape[3], k.type.shape[3]) and dims_match(k.type.shape[2], v.type.shape[2])):
        return None
    if "p" in b and b["p"].producer.attrs["dtype"] != q.type.dtype:
        return None
    if softmax.attrs["dim"] != 3:
        return None
    scale = _scalar(b["scale"]) if "scale" in b else 1.0
    if "inv_scale" in b:
        inv = _scalar(b["inv_scale"])
        scale = 1.0 / inv if inv else None
    cap = _scalar(b["cap"]) if "cap" in b else None
    if scale is None or ("cap" in b and (not cap or cap != _scalar(b["cap_out"]))):
        return None
    if "mask" in b and not _mask_fits(b["mask"], qk, q.type.dtype if up is not None else None):
        return None
    attrs = {"scale": scale, "softcap": cap, **({"upcast": True} if up is not None else {})}
    return [q, k, v] + ([b["mask"]] if "mask" in b else []), attrs


def _to_attention(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    softmax = op.operands[0].producer if "p" not in b else b["p"].producer.operands[0].producer
    args = _attention_args(op, b, softmax)
    return None if args is None else g.insert_before(op, "attention", *args).result


def _sink_source(col: Value, heads: int) -> Value | None:
    """The [Hq] logits whose reshape/expand views `col` [b, Hq, Lq, 1] (or [1, Hq, 1]) is (sink h in every row of
    head h)."""
    v = col
    while v.producer is not None and v.producer.opcode == "expand":
        v = v.producer.operands[0]
    if v.type.rank not in (3, 4) or tuple(v.type.shape) != (1, heads) + (1,) * (v.type.rank - 2):
        return None
    while v.producer is not None and v.producer.opcode == "reshape":  # the flat order is kept: any shape of Hq numbers
        v = v.producer.operands[0]
    return v if v.type.dtype.is_float and v.type.numel() == heads else None


def _is_shift_by_max(g: Graph, maxv: Value, s: Value, sub: Op) -> bool:
    """maxv is max_dim(s, last dim, keepdim)'s values, read by `sub` only; its indices unused."""
    m = maxv.producer
    last = (s.type.rank - 1, -1)
    return (m is not None and m.opcode == "max_dim" and m.operands[0] is s and m.attrs["dim"] in last
            and m.attrs["keepdim"] and m.results[0] is maxv and maxv.uses == [sub] and not m.results[1].uses
            and not any(r is o for r in m.results for o in g.outputs))


def _sink_args(op: Op, b: dict[str, Value], softmax: Op, view: Value) -> tuple[list[Value], dict] | None:
    """`_attention_args` of p @ v (`op`) with the [Hq] sinks `view` views (`_sink_source`) appended, or None."""
    heads = b["q"].type.shape[1]
    sinks = _sink_source(view, heads) if isinstance(heads, int) else None
    args = None if sinks is None else _attention_args(op, b, softmax)
    if args is None:
        return None
    if sinks.type.rank != 1:
        sinks = op.graph.insert_before(op, "reshape", [sinks], {"shape": [heads]}).result
    return args[0] + [sinks], {**args[1], "sinks": True}


def _to_sink_attention(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    sl, cat = b["probs"].producer, b["cat"]
    softmax = sl.operands[0].producer
    qk, heads = b["qk"], b["q"].type.shape[1]
    if not isinstance(heads, int) or [u.opcode for u in cat.uses] != ["softmax"] or any(cat is o for o in g.outputs):
        return None
    if sl.attrs["dim"] not in (3, -1) or sl.attrs["start"] != 0 or sl.attrs["step"] != 1 or not dims_match(sl.result.type.shape[3], qk.type.shape[3]):
        return None
    args = _sink_args(op, b, softmax, cat.producer.operands[1])
    return None if args is None else g.insert_before(op, "attention", *args).result


def _unshift(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """softmax(s - rowmax(s)) -> softmax(s) (shift-invariant; the templates keep their own running max)."""
    s, sub = b["s"], op.operands[0].producer
    if op.attrs["dim"] not in (s.type.rank - 1, -1) or not _is_shift_by_max(g, b["max"], s, sub):
        return None
    out = g.insert_before(op, "softmax", [s], dict(op.attrs)).result
    maxv = sub.operands[1]
    g.set_operand(sub, 1, s)  # the sub (erased with the match) no longer reads the max, which dies here
    g.erase(maxv.producer)
    return out


def _sink_pattern(scale: str, softcap: bool, mask: bool, cast_out: bool) -> Pattern:
    cat = P.op("cat", _scores(scale, softcap, mask), P.any("sink_col"), name="cat", dim=lambda d: d in (3, -1))
    p = P.op("softmax", cat, single_use=True)  # (a shift by the row max: `softmax_unshift` took it off first)
    probs = P.op("slice", p, name="probs", single_use=True)
    if cast_out:  # fp32 scores from upcast q and k, p cast back to v's dtype (Flint in 16 bits)
        probs = P.op("cast", probs, name="p", single_use=True)
    return P.op("matmul", probs, P.any("v"))


def _to_lse_sink_attention(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    pv = b["pv"].producer
    if not same_type(op.result.type, pv.result.type):  # (a scale of another dtype or shape would promote p @ v)
        return None
    p = pv.operands[0].producer
    args = _sink_args(pv, b, p if p.opcode == "softmax" else p.operands[0].producer, b["sink_view"])
    return None if args is None else g.insert_before(op, "attention", *args).result


def _last_dim(args) -> bool:
    """logsumexp's args reduce the scores' last dim without keepdim."""
    return len(args) in (2, 3) and tuple(args[1]) in ((-1,), (3,)) and (len(args) == 2 or args[2] is False)


def _lse_scaled(v: Value) -> bool:
    """v = mul(a, b) with a logsumexp extern below a sigmoid under views of a or b: the one test of every mul before
    the variants' patterns (as 24 rules of their own they cost canonicalize ~50% more on a 32-layer Llama)."""
    for w in v.producer.operands:
        sig = op_of(src(w, ("reshape", "cast")), "sigmoid")
        sub = op_of(src(sig.operands[0], ("cast",)), "sub") if sig is not None else None
        lse = op_of(sub.operands[0], "extern") if sub is not None else None
        if lse is not None and lse.attrs.get("target") == "aten.logsumexp.default":
            return True
    return False


def _lse_sink_pattern(scale: str, softcap: bool, mask: bool, upcast: bool) -> Pattern:
    s = _scores(scale, softcap, mask)
    s = s if s.name else dataclasses.replace(s, name="scores")  # (the scores read twice: one name binds both)
    p = P.op("cast", P.op("softmax", P.op("cast", s, dtype=DType.f32, single_use=True), single_use=True),
             single_use=True) if upcast else P.op("softmax", s, single_use=True)
    lse = P.op("extern", P.any(s.name), target="aten.logsumexp.default", args=_last_dim, kwargs={},
               single_use=True)
    d = P.op("sub", lse, P.any("sink_view"), single_use=True)
    w = P.op("sigmoid", P.op("cast", d, dtype=DType.f32, single_use=True) if upcast else d, single_use=True)
    if upcast:  # the cast back and the unsqueeze in either order (canonicalize moves casts across views)
        views = ("reshape", "cast")
        w = P.op(views, P.op(views, w, single_use=True), single_use=True)
    else:
        w = P.op("reshape", w, single_use=True)
    return P.op("mul", P.op("matmul", p, P.any("v"), name="pv", single_use=True), w, commutative=True)


# (scale op, soft-cap, mask, fp32 softmax between casts) -> one rule each
_VARIANTS = list(itertools.product(("mul", "div", "none"), (True, False), (True, False), (True, False)))
ATTENTION_RULES: list[Rule] = [
    Rule(_pattern(*variant), _to_attention, "eager_attention" + "_softcap" * variant[1], single_use=True) for variant in _VARIANTS
] + [
    Rule(_sink_pattern(*variant), _to_sink_attention, "eager_attention_sinks")
    for variant in itertools.product(("mul", "div", "none"), (True, False), (True, False), (False, True))
] + [Rule(P.op("softmax", P.op("sub", P.any("s"), P.any("max"), single_use=True)), _unshift, "softmax_unshift"),
      Rule(P.either(*(_lse_sink_pattern(*variant) for variant in _VARIANTS), check=_lse_scaled), _to_lse_sink_attention,
         "eager_attention_lse_sinks")]
