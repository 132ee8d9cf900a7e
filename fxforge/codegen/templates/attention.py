"""Flash-attention template: `attention_kernel` and its launcher `attention` (same contract as torch's sdpa).

This module owns fused scaled-dot-product attention for q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D]:
- one program per (BLOCK_M queries, batch * head); it walks the keys BLOCK_N at a time with an online
  softmax (running max m, running sum l, fp32 accumulator; `online_softmax.py`, in exp2 with log2(e)
  folded into the scale), so the Lq x Lk scores never exist in memory;
- causal masking matches torch's `is_causal` exactly: top-left aligned, query i sees keys j <= i, also
  when Lq != Lk; the key loop stops at the last block any query of the tile can see;
- an optional mask [B or 1, H or 1, Lq, Lk] (any shape that broadcasts to it): boolean (True = attend)
  or additive float; broadcast axes get stride 0, so nothing is copied;
- grouped-query attention: query head h reads kv head h // (Hq // Hkv);
- D is padded to a power of two BLOCK_D (>= 16) and masked, so D = 48 or 80 work; v's head dim DV may differ
  from q/k's (MiMo-V2-Flash: 192 / 128; MLA models written out per head), padded apart (BLOCK_DV);
- rows that can see no key (all masked) give 0, as torch's sdpa does;
- an optional logit soft-cap (Gemma2): scores become tanh(score / cap) * cap before the mask
  (`online_softmax.scaled_scores`), as HF's eager attention computes them;
- optional attention sinks (GPT-OSS): a logit per query head [Hq] in the softmax's denominator only
  (the online softmax starts from it: `online_softmax.softmax_start`); a row that sees no key gives 0;
- one query position (Lq = 1, a decode step) without `is_causal` goes to `decode_attention.py`
  (flash-decoding: split-KV + combine, the query heads of one kv head packed in one tile).
Plain pointers with strides and masks (triton 3.6 and 3.9), tile shape from
`fxforge.codegen.blocks.attention_blocks`. Dot operand handling (UPCAST, INPUT_PRECISION) as in
`templates.gemm`: exact fp32 dots for fp32 inputs, bf16 upcast to fp32 under the interpreter.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fxforge.codegen.blocks import attention_blocks
from fxforge.codegen.pool import Workspace, out_tensor
from fxforge.codegen.templates.decode_attention import decode_attention
from fxforge.codegen.templates.gemm import dot_options
from fxforge.codegen.templates.online_softmax import (
    online_softmax_step,
    scaled_scores,
    score_scales,
    softmax_start,
    v_channels,
)
from fxforge.errors import ShapeError

MASK_KINDS = ("none", "bool", "add")


@triton.jit
def _masked_scores(s, mask_ptr, offs_m, offs_n, mask_m, mask_n, stride_mm, stride_mn,
                   IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr):
    """The score tile with the user's mask (bool: keep where set; add: add it), causality and the key
    padding applied: excluded scores become -inf."""
    if MASK_KIND != "none":
        mv = tl.load(mask_ptr + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn,
                     mask=mask_m[:, None] & mask_n[None, :], other=0)
        if MASK_KIND == "bool":
            s = tl.where(mv != 0, s, float("-inf"))
        else:
            s += mv.to(tl.float32) * 1.4426950408889634  # log2(e): scores are in log2 units
    valid = mask_n[None, :]
    if IS_CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None])
    return tl.where(valid, s, float("-inf"))


@triton.jit
def attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, sinks_ptr, out_ptr,
    Hq, Lq, Lk, D, DV, GROUP, qk_scale, cap_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_ob, stride_oh, stride_om, stride_od,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DV_APART: tl.constexpr,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """out[b, h, m] = softmax(cap(scale * q k^T) + mask) v for BLOCK_M queries m of head h of batch b (with
    HAS_SINKS the sink sinks[h] joins the softmax's denominator); qk_scale, cap_scale from
    `online_softmax.score_scales` (the softmax runs in exp2)."""
    start_m = tl.program_id(0) * BLOCK_M
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    kvh = h // GROUP  # grouped-query attention: GROUP query heads share one kv head
    q_ptr += b * stride_qb + h * stride_qh
    k_ptr += b * stride_kb + kvh * stride_kh
    v_ptr += b * stride_vb + kvh * stride_vh
    mask_ptr += b * stride_mb + h * stride_mh
    out_ptr += b * stride_ob + h * stride_oh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    mask_m = offs_m < Lq
    mask_d = offs_d < D
    offs_dv, mask_dv = v_channels(offs_d, mask_d, DV, BLOCK_DV, DV_APART)

    q = tl.load(q_ptr + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # running row max and row sum of exp2 (from the head's sink with HAS_SINKS)
    m_i, l_i = softmax_start(sinks_ptr, h + tl.zeros((BLOCK_M,), dtype=tl.int64), mask_m, True, BLOCK_M, HAS_SINKS)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)

    if IS_CAUSAL:  # top-left aligned: query i sees keys 0..i
        end_n = tl.minimum(Lk, start_m + BLOCK_M)
    else:
        end_n = Lk
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + offs_n0
        mask_n = offs_n < Lk
        # K tile read transposed as [BLOCK_D, BLOCK_N]
        kt = tl.load(k_ptr + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_kn,
                     mask=mask_d[:, None] & mask_n[None, :], other=0.0)
        v = tl.load(v_ptr + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                    mask=mask_n[:, None] & mask_dv[None, :], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        s = scaled_scores(tl.dot(q, kt, input_precision=INPUT_PRECISION), qk_scale, cap_scale, SOFTCAP)  # log2 units
        s = _masked_scores(s, mask_ptr, offs_m, offs_n, mask_m, mask_n, stride_mm, stride_mn, IS_CAUSAL, MASK_KIND)

        m_i, l_i, acc = online_softmax_step(s, m_i, l_i, acc, v, INPUT_PRECISION)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # rows that saw no key give 0
    o = acc / l_safe[:, None]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
             o.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_dv[None, :])


def _broadcasts(shape: tuple, to: tuple) -> bool:
    if len(shape) > len(to):
        return False
    return all(a in (1, b) for a, b in zip(shape[::-1], to[::-1]))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
              scale: float | None = None, is_causal: bool = False, enable_gqa: bool = False,
              softcap: float | None = None, sinks: torch.Tensor | None = None, out: torch.Tensor | None = None,
              ws: Workspace | None = None) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, scale=, is_causal=, enable_gqa=), no dropout;
    `softcap`: scores tanh(score / softcap) * softcap before the mask (HF's eager soft-capped attention);
    `sinks` [Hq]: a logit per query head that joins the softmax's denominator only (HF's GPT-OSS attention).

    q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, DV] (rank 3 [B, L, D] is taken as one head); mask
    broadcasts to [B, Hq, Lq, Lk], boolean (True = attend) or additive float. `out`: the result's storage
    (contiguous, [B, Hq, Lq, DV]; a planned buffer of the generated `run()`), else allocated; `ws`: the workspace the
    decode path's split partials come from.
    """
    squeeze = q.dim() == 3
    if squeeze:
        q, k, v = q[:, None], k[:, None], v[:, None]
        out = out[:, None] if out is not None else None
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ShapeError(f"attention needs q/k/v of rank 4 [B, H, L, D] (or 3); got {q.dim()}, {k.dim()}, {v.dim()}")
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    DV = v.shape[-1]
    if k.shape != (B, Hkv, Lk, D) or v.shape != (B, Hkv, Lk, DV):
        raise ShapeError(f"k must be [B, Hkv, Lk, D={D}] and v [B, Hkv, Lk, DV]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Hq != Hkv and not (enable_gqa and Hq % Hkv == 0):
        raise ShapeError(f"{Hq} query heads and {Hkv} kv heads need enable_gqa=True and Hq a multiple of Hkv")
    if is_causal and mask is not None:
        raise ShapeError("pass either mask or is_causal=True, not both (fold the causal mask into the mask)")
    if max(D, DV) > 256:
        raise ShapeError(f"head dims {D} (q, k) and {DV} (v) must be <= 256 for the attention template")
    if sinks is not None:
        if sinks.numel() != Hq or not sinks.is_floating_point():
            raise ShapeError(f"sinks must be {Hq} floats (one per query head); got {sinks.dtype}{tuple(sinks.shape)}")
        sinks = sinks.reshape(Hq).contiguous()
    if Lq == 1 and Lk > 0 and not is_causal and B * Hq > 0:  # a decode step: flash-decoding, GQA heads packed
        if mask is not None and not _broadcasts(mask.shape, (B, Hq, 1, Lk)):
            raise ShapeError(f"mask {tuple(mask.shape)} does not broadcast to {(B, Hq, Lq, Lk)}")
        out = decode_attention(q, k, v, mask, scale=scale, softcap=softcap, sinks=sinks, out=out, ws=ws)
        return out[:, 0] if squeeze else out
    out = out_tensor(out, (B, Hq, Lq, DV), q.dtype, q.device, "attention")
    mask_kind = "none"
    if mask is not None:
        try:
            mask = mask.expand(B, Hq, Lq, Lk)
        except RuntimeError as e:
            raise ShapeError(f"mask {tuple(mask.shape)} does not broadcast to {(B, Hq, Lq, Lk)}") from e
        if mask.dtype == torch.bool:
            mask_kind, mask = "bool", mask.view(torch.uint8)
        else:
            mask_kind = "add"
    m = mask if mask is not None else out
    m_strides = m.stride() if mask is not None else (0, 0, 0, 0)
    if out.numel() == 0:
        return out[:, 0] if squeeze else out
    cfg = attention_blocks(Lq, Lk, D, q.dtype, masked=mask_kind != "none", dv=DV)
    grid = (triton.cdiv(Lq, cfg["BLOCK_M"]), B * Hq)
    qk_scale, cap_scale = score_scales(float(scale if scale is not None else 1.0 / math.sqrt(D)), softcap)
    attention_kernel[grid](
        q, k, v, m, sinks if sinks is not None else out, out,
        Hq, Lq, Lk, D, DV, Hq // Hkv, qk_scale, cap_scale,
        *q.stride(), *k.stride(), *v.stride(), *m_strides, *out.stride(),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"], BLOCK_DV=cfg["BLOCK_DV"],
        DV_APART=DV != D,
        IS_CAUSAL=bool(is_causal), MASK_KIND=mask_kind, SOFTCAP=softcap is not None, HAS_SINKS=sinks is not None,
        **dot_options(q.dtype, k.dtype, v.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out[:, 0] if squeeze else out
