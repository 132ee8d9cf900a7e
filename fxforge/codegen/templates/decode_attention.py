"""Flash-decoding template: attention of ONE query position (Lq = 1, a decode step) over a long cache.

`decode_attention(q, k, v, mask, scale=, splits=)` computes sdpa for q [B, Hq, 1, D], k [B, Hkv, Lk, D],
v [B, Hkv, Lk, DV] (DV, v's head dim, may differ from D; a packed cache has one head dim):
- `decode_split_kernel`, grid (splits, B * Hkv): the GROUP = Hq / Hkv query heads that share one kv
  head are packed as the rows of one tile (padded to 16, the smallest dot), so each K/V tile is read
  once for all of them; each program walks its split of the keys with an online softmax and writes
  its partial (row max m, row sum l, unnormalised accumulator) in fp32, or, with one split, the
  normalised output directly (one launch);
- `decode_combine_kernel`, grid (B * Hq,): merges the splits' partials (weights exp(m_s - max m)).
The mask (bool: True = attend, or additive float) broadcasts to [B, Hq, 1, Lk] as in `attention`;
rows that see no key give 0. `attention()` sends Lq = 1 without `is_causal` here.

Decisions:
- Splits from `blocks.decode_attention_blocks`: enough (B * Hkv * splits) programs to cover the GPU's
  SMs twice, at least 256 keys each; one split under the interpreter (no arch), where the launch
  count matters more than parallelism. Tests force `splits` to check the combine.
- exp2 with log2(e) folded into the scale (one multiply fewer per score); an optional logit soft-cap
  (`softcap`, Gemma2) at the score step, before the mask (`online_softmax.scaled_scores`).
- Attention sinks (`sinks` [Hq], GPT-OSS): split 0 starts its online softmax from the sink (m = sink,
  l = 1, `online_softmax.softmax_start`), the other splits from (-inf, 0); the combine's weighted sum of
  the l's then counts it once, and it never reaches an accumulator.
- A packed KV cache (`kv_format`, issue #12) is decoded tile by tile inside the key loop
  (`kv_cache.kv_decode_tile`: codes and block scales of each key row, rounded to q's dtype as the reference
  `kv_load` is): the compressed cache is what the kernel reads from memory, no dequantized copy exists.
  Tiles of at most 32 keys then (`packed_blocks`): the decoded tile lives in registers.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fxforge.codegen.blocks import decode_attention_blocks
from fxforge.codegen.pool import Workspace, out_tensor, scratch
from fxforge.codegen.templates.gemm import device_arch, dot_options
from fxforge.codegen.templates.kv_cache import kv_decode_tile
from fxforge.codegen.templates.online_softmax import (
    online_softmax_step,
    scaled_scores,
    score_scales,
    softmax_start,
    v_channels,
)
from fxforge.ir.kv_ops import kv_row_layout


@triton.jit
def decode_split_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, sinks_ptr, out_ptr, part_ptr, ml_ptr,
    Hq, Lk, D, DV, GROUP, qk_scale, cap_scale, keys_per_split,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mn,
    stride_ob, stride_oh, stride_od,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DV_APART: tl.constexpr,
    MASK_KIND: tl.constexpr,
    SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr, FINAL: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    KV_FORMAT: tl.constexpr, KV_BLOCK: tl.constexpr, CODE_BYTES: tl.constexpr, D_CONST: tl.constexpr,
):
    """One split of the keys for the GROUP query heads of one kv head (see the module docstring)."""
    split = tl.program_id(0)
    n_splits = tl.num_programs(0)
    pid = tl.program_id(1)
    Hkv = Hq // GROUP
    b = (pid // Hkv).to(tl.int64)
    kvh = (pid % Hkv).to(tl.int64)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    mask_g = offs_g < GROUP
    mask_d = offs_d < D
    offs_dv, mask_dv = v_channels(offs_d, mask_d, DV, BLOCK_DV, DV_APART)
    heads = kvh * GROUP + offs_g
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                mask=mask_g[:, None] & mask_d[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_ptr += b * stride_kb + kvh * stride_kh
    v_ptr += b * stride_vb + kvh * stride_vh
    m_i, l_i = softmax_start(sinks_ptr, heads, mask_g, split == 0, BLOCK_G, HAS_SINKS)  # split 0 counts the sinks
    acc = tl.zeros((BLOCK_G, BLOCK_DV), dtype=tl.float32)
    start = split * keys_per_split
    end = tl.minimum(Lk, start + keys_per_split)
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        if KV_FORMAT == "dense":
            kt = tl.load(k_ptr + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_kn,
                         mask=mask_d[:, None] & mask_n[None, :], other=0.0)
            v = tl.load(v_ptr + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                        mask=mask_n[:, None] & mask_dv[None, :], other=0.0)
        else:  # packed rows: decoded here, in the model's dtype as the reference kv_load gives them
            kt = tl.trans(kv_decode_tile(k_ptr + offs_n[:, None] * stride_kn, mask_n[:, None], D_CONST, BLOCK_D,
                                         KV_FORMAT, KV_BLOCK, CODE_BYTES).to(q_ptr.dtype.element_ty))
            v = kv_decode_tile(v_ptr + offs_n[:, None] * stride_vn, mask_n[:, None], D_CONST, BLOCK_D,
                               KV_FORMAT, KV_BLOCK, CODE_BYTES).to(q_ptr.dtype.element_ty)
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        s = scaled_scores(tl.dot(q, kt, input_precision=INPUT_PRECISION), qk_scale, cap_scale, SOFTCAP)  # log2 units
        if MASK_KIND != "none":
            mv = tl.load(mask_ptr + b * stride_mb + heads[:, None] * stride_mh + offs_n[None, :] * stride_mn,
                         mask=mask_g[:, None] & mask_n[None, :], other=0)
            if MASK_KIND == "bool":
                s = tl.where(mv != 0, s, float("-inf"))
            else:
                s += mv.to(tl.float32) * 1.4426950408889634  # log2(e): scores are in log2 units
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(s, m_i, l_i, acc, v, INPUT_PRECISION)
    rows = b * Hq + heads  # flat (batch, head) row of this tile's query heads
    if FINAL:
        o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_dv[None, :] * stride_od,
                 o.to(out_ptr.dtype.element_ty), mask=mask_g[:, None] & mask_dv[None, :])
    else:
        slot = rows * n_splits + split
        tl.store(part_ptr + slot[:, None] * BLOCK_DV + offs_dv[None, :], acc, mask=mask_g[:, None])
        tl.store(ml_ptr + slot * 2, m_i, mask=mask_g)
        tl.store(ml_ptr + slot * 2 + 1, l_i, mask=mask_g)


@triton.jit
def decode_combine_kernel(out_ptr, part_ptr, ml_ptr, Hq, D, n_splits, stride_ob, stride_oh, stride_od,
                          BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[b, h] = sum_s exp2(m_s - M) acc_s / sum_s exp2(m_s - M) l_s over the splits of one row."""
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < n_splits
    slot = row * n_splits + offs_s
    m = tl.load(ml_ptr + slot * 2, mask=mask_s, other=float("-inf"))
    l_s = tl.load(ml_ptr + slot * 2 + 1, mask=mask_s, other=0.0)
    m_max = tl.max(m, 0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max)))
    total = tl.sum(w * l_s, 0)
    acc = tl.load(part_ptr + slot[:, None] * BLOCK_D + offs_d[None, :], mask=mask_s[:, None], other=0.0)
    o = tl.sum(acc * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    b, h = row // Hq, row % Hq
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_d * stride_od, o.to(out_ptr.dtype.element_ty),
             mask=offs_d < D)


def packed_blocks(cfg: dict, kv_format: str) -> dict:
    """The tile config for a packed cache: at most 32 keys per tile (decoding a 64-key tile of D=128 in
    registers took 254 registers on sm_90, 32 keys 144-189, no spills)."""
    return cfg if kv_format == "dense" else dict(cfg, BLOCK_N=min(cfg["BLOCK_N"], 32))


def kv_constexprs(kv_format: str, kv_block: int, D: int) -> dict:
    """`decode_split_kernel`'s constexprs for the cache layout (dense: placeholders the kernel ignores)."""
    if kv_format == "dense":
        return {"KV_FORMAT": "dense", "KV_BLOCK": 16, "CODE_BYTES": 0, "D_CONST": 0}
    return {"KV_FORMAT": kv_format, "KV_BLOCK": kv_block, "CODE_BYTES": kv_row_layout(kv_format, kv_block, D)[0],
            "D_CONST": D}


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *,
                     scale: float | None = None, softcap: float | None = None, sinks: torch.Tensor | None = None,
                     splits: int | None = None,
                     kv_format: str = "dense",
                     kv_block: int = 32, out: torch.Tensor | None = None, ws: Workspace | None = None) -> torch.Tensor:
    """sdpa for one query position: q [B, Hq, 1, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, DV] (a `kv_format`: packed cache
    rows uint8 [B, Hkv, Lk, row_bytes] of head dim D, `kv_ops.kv_row_layout`), mask broadcasting to [B, Hq, 1, Lk]
    or None (shapes checked by `attention` / `kv_attention`, which call this); `sinks`: contiguous [Hq] or None.
    `out`: the result's storage (contiguous, [B, Hq, 1, DV]), else allocated; `ws`: the workspace the split partials
    come from."""
    B, Hq, _, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    DV = D if kv_format != "dense" else v.shape[-1]
    group = Hq // Hkv
    cfg = packed_blocks(decode_attention_blocks(B * Hkv, group, Lk, D, q.dtype, device_arch(q.device), mask is not None,
                                                dv=DV), kv_format)
    n_splits = max(1, min(splits or cfg["splits"], triton.cdiv(Lk, cfg["BLOCK_N"])))
    keys_per_split = triton.cdiv(triton.cdiv(Lk, n_splits), cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    n_splits = triton.cdiv(Lk, keys_per_split)
    out = out_tensor(out, (B, Hq, 1, DV), q.dtype, q.device, "decode_attention")
    mask_kind, m = "none", out
    if mask is not None:
        m = mask.expand(B, Hq, 1, Lk)
        mask_kind = "bool" if m.dtype == torch.bool else "add"
        m = m.view(torch.uint8) if m.dtype == torch.bool else m
    ms = (m.stride(0), m.stride(1), m.stride(3)) if mask is not None else (0, 0, 0)
    bd, bdv = cfg["BLOCK_D"], cfg["BLOCK_DV"]
    final = n_splits == 1
    part, ml = (out, out) if final else scratch(ws, q.device, ((B * Hq * n_splits, bdv), torch.float32),
                                                ((B * Hq * n_splits, 2), torch.float32))
    qk_scale, cap_scale = score_scales(float(scale if scale is not None else 1.0 / math.sqrt(D)), softcap)
    decode_split_kernel[(n_splits, B * Hkv)](
        q, k, v, m, sinks if sinks is not None else out, out, part, ml, Hq, Lk, D, DV, group, qk_scale, cap_scale,
        keys_per_split,
        q.stride(0), q.stride(1), q.stride(3), *k.stride(), *v.stride(), *ms,
        out.stride(0), out.stride(1), out.stride(3),
        BLOCK_G=cfg["BLOCK_G"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=bd, BLOCK_DV=bdv, DV_APART=DV != D, MASK_KIND=mask_kind,
        SOFTCAP=softcap is not None,
        HAS_SINKS=sinks is not None, FINAL=final,
        **kv_constexprs(kv_format, kv_block, D),
        **dot_options(*((q.dtype, k.dtype, v.dtype) if kv_format == "dense" else (q.dtype,))),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if not final:
        decode_combine_kernel[(B * Hq,)](out, part, ml, Hq, DV, n_splits, out.stride(0), out.stride(1), out.stride(3),
                                         BLOCK_S=triton.next_power_of_2(n_splits), BLOCK_D=bdv, num_warps=4)
    return out
