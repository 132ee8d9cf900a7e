"""The `attention` op: scaled dot-product attention, sdpa's contract plus HF's eager extras.

    %o = attention(%q, %k, %v, %mask?, %sinks?) {scale, is_causal, enable_gqa, softcap, sinks} : f32[1, 4, s0, 16]

q [..., Hq, Lq, D], k/v [..., Hkv, Lk, D]; mask (optional) broadcasts to the scores [..., Hq, Lq, Lk], boolean
(True = attend) or additive; `enable_gqa`: query head h reads kv head h // (Hq / Hkv). Optional extras, each
exactly as HF's eager attention computes it:
- `softcap` (Gemma2): scores tanh(s / cap) * cap after the scale, before the mask;
- `sinks=true` (GPT-OSS's attention sinks): the last operand is a learned logit per query head [Hq] that
  joins the softmax's denominator only: p = softmax([scores, sink])[..., :Lk] (the sink's column dropped);
- `upcast=true` (Flint in 16 bits): the scores are computed in fp32 from q and k cast up, the mask added in fp32,
  p cast back to q's dtype for p @ v (the templates' dot already accumulates 16-bit q.k in fp32).

Decisions:
- The sinks are flagged by an attribute, not found by position: with the mask absent a 4th operand would
  otherwise be ambiguous. `attention_mask(op)` / `attention_sinks(op)` read an op's optional operands.
- Heads wider than `MAX_TEMPLATE_HEAD_DIM` (Gemma 4's global layers: 512) run on the host (`wide_head`).
- The reference runs sdpa when no extra is set, else the eager chain op for op (`_eager_attention`:
  softmax in fp32, cast back to q's dtype), which is what the templates are checked against.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fxforge.ir.errors import ShapeError
from fxforge.ir.ops import OpDef, register
from fxforge.ir.types import TensorType, may_equal


def _split_extras(extra: tuple, sinks: bool) -> tuple[Any, Any]:
    """(mask or None, sinks or None) of the operands after q, k, v."""
    mask = extra[0] if len(extra) > int(sinks) else None
    return mask, extra[-1] if sinks else None


def attention_mask(op) -> Any:
    """The mask operand of an `attention` op, or None."""
    return _split_extras(tuple(op.operands[3:]), bool(op.attrs.get("sinks")))[0]


def attention_sinks(op) -> Any:
    """The sinks operand [Hq] of an `attention` op, or None."""
    return _split_extras(tuple(op.operands[3:]), bool(op.attrs.get("sinks")))[1]


MAX_TEMPLATE_HEAD_DIM = 256  # the attention templates hold a whole head in one tile


def wide_head(op) -> str | None:
    """Why an `attention` op's head is too wide for the templates (it then runs on the host, torch), or None (also for
    any other op)."""
    d = op.operands[0].type.shape[-1] if op.opcode == "attention" else 0
    if isinstance(d, int) and d <= MAX_TEMPLATE_HEAD_DIM:
        return None
    return f"attention: head dim {d} is over the templates' {MAX_TEMPLATE_HEAD_DIM}: host torch"


def _attention(q, k, v, *extra, scale, is_causal, enable_gqa, softcap=None, sinks=False, upcast=False):
    mask, sink = _split_extras(extra, sinks)
    if softcap is None and sink is None and not upcast:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=enable_gqa)
    return _eager_attention(q, k, v, mask, scale, is_causal, enable_gqa, softcap, sink, upcast)


def _eager_attention(q, k, v, mask, scale, is_causal, enable_gqa, softcap, sinks, upcast=False):
    """sdpa with HF's eager extras (module docstring), op for op in q's dtype (`upcast`: the scores in fp32),
    softmax in fp32."""
    if enable_gqa:
        k, v = (t.repeat_interleave(q.shape[-3] // t.shape[-3], -3) for t in (k, v))
    qs, ks = (q.float(), k.float()) if upcast else (q, k)
    s = torch.matmul(qs, ks.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if is_causal:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    if sinks is not None:
        s = torch.cat([s, sinks.to(s.dtype).reshape(-1, 1, 1).expand(*s.shape[:-1], 1)], -1)
    p = torch.softmax(s, -1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(p[..., :k.shape[-2]] if sinks is not None else p, v)


def _attention_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    q, k, v = types[:3]
    if q.rank < 3 or not may_equal(q.shape[-1], k.shape[-1]) or not may_equal(k.shape[-2], v.shape[-2]):
        raise ShapeError(f"attention: q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)} do not fit")
    if attrs.get("sinks"):
        s = types[-1]
        if len(types) < 4 or s.rank != 1 or not may_equal(s.shape[0], q.shape[-3]):
            raise ShapeError(f"attention: sinks=true needs a last operand [Hq={q.shape[-3]}], got "
                             f"{list(s.shape) if len(types) > 3 else 'none'}")
    elif len(types) > 4:
        raise ShapeError("attention: a 5th operand (the sinks) needs sinks=true")
    return [TensorType(q.shape[:-1] + (v.shape[-1],), q.dtype)]


register(OpDef("attention", (3, 5), {"scale": None, "is_causal": False, "enable_gqa": False, "softcap": None,
                                     "sinks": False, "upcast": False},
               _attention_infer, _attention, "composite",
               "scaled dot-product attention: attention(q, k, v, mask?, sinks?); softcap: scores tanh(s / cap) * cap "
               "before the mask; sinks=true: the last operand [Hq] joins the softmax denominator only",
               kernel="template"))
