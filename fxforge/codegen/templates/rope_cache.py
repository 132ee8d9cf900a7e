"""RoPE + KV-cache write after the concatenated QKV GEMM, in one launch (issue #13, fewer launches).

    q, k_cache, v_cache = rope_cache(qkv, cos, sin, pos, k_cache, v_cache, q_heads=Hq, kv_heads=Hkv, head_dim=D)

qkv [B, S, (Hq + 2 Hkv) * D] is the `[q; k; v]` GEMM's output (any strides); cos/sin broadcast to
[B, 1, S, D] (HF's `unsqueeze(1)` of the rotary tables); pos [S] the cache positions. Returns q with RoPE
applied, [B, Hq, S, D] contiguous, and the caches, after writing RoPE(k) and v into k_cache / v_cache
[B, Hkv, L, D] at `pos` along L, in place (the `cache_write` ops of `ir/cache_ops.py`, whose results are
the caches themselves). The rotation is HF's
`x * cos + rotate_half(x) * sin` with rotate_half(x) = cat(-x[D/2:], x[:D/2]).

Decisions:
- One program per (token, head) over all Hq + 2 Hkv heads: a decode step has one token, so this is
  Hq + 2 Hkv tiny programs that each read one head row and write it where it goes, instead of two
  pointwise RoPE kernels and two host `index_copy_` launches.
- The partner half for rotate_half is loaded again from memory at (d + D/2) mod D (L1-resident)
  rather than permuted in registers: no reshape/split tricks, the same code on Triton 3.6 and 3.9.
- fp32 math, one rounding at the store (the generated pointwise kernel's convention).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.pool import out_tensor
from fxforge.errors import ShapeError


@triton.jit
def rope_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr,
                      S, stride_xb, stride_xs, stride_xn, stride_cb, stride_cs, stride_cd,
                      stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
                      HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Head program_id(1) of token program_id(0) = b * S + s: RoPE on q/k heads, then store q / write the cache."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    b = t // S
    s = t % S
    d = tl.arange(0, BLOCK_D)
    md = d < D
    hd = d * 0 + h  # the head index as a vector: masks of one dtype with md
    row = qkv_ptr + b * stride_xb + s * stride_xs + h * D * stride_xn
    x = tl.load(row + d * stride_xn, mask=md, other=0.0).to(tl.float32)
    partner = tl.load(row + ((d + D // 2) % D) * stride_xn, mask=md, other=0.0).to(tl.float32)
    rot = tl.where(d < D // 2, -partner, partner)
    c_off = b * stride_cb + s * stride_cs + d * stride_cd
    c = tl.load(cos_ptr + c_off, mask=md, other=0.0).to(tl.float32)
    sn = tl.load(sin_ptr + c_off, mask=md, other=0.0).to(tl.float32)
    y = tl.where(hd < HQ + HKV, x * c + rot * sn, x)  # v heads pass through
    p = tl.load(pos_ptr + s)
    q_dst = q_ptr + ((b * HQ + tl.minimum(h, HQ - 1)) * S + s) * D + d
    tl.store(q_dst, y.to(q_ptr.dtype.element_ty), mask=md & (hd < HQ))
    hk = tl.minimum(tl.maximum(h - HQ, 0), HKV - 1)
    k_dst = k_ptr + b * stride_kb + hk * stride_kh + p * stride_kl + d
    tl.store(k_dst, y.to(k_ptr.dtype.element_ty), mask=md & (hd >= HQ) & (hd < HQ + HKV))
    hv = tl.minimum(tl.maximum(h - HQ - HKV, 0), HKV - 1)
    v_dst = v_ptr + b * stride_vb + hv * stride_vh + p * stride_vl + d
    tl.store(v_dst, y.to(v_ptr.dtype.element_ty), mask=md & (hd >= HQ + HKV))


def _check(qkv, cos, k_cache, v_cache, q_heads, kv_heads, head_dim) -> None:
    B, S, N = qkv.shape
    want = (B, kv_heads, k_cache.shape[2], head_dim)
    if N != (q_heads + 2 * kv_heads) * head_dim or head_dim % 2:
        raise ShapeError(f"rope_cache: qkv {tuple(qkv.shape)} is not [B, S, (Hq + 2 Hkv) * D] for Hq={q_heads}, "
                         f"Hkv={kv_heads}, D={head_dim} (D even)")
    if tuple(k_cache.shape) != want or tuple(v_cache.shape) != want:
        raise ShapeError(f"rope_cache: caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)} must be {want}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ShapeError("rope_cache: the caches must be contiguous along head_dim (StaticKVCache allocates them so)")


def rope_cache(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, *, q_heads: int, kv_heads: int,
               head_dim: int, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(RoPE'd q [B, Hq, S, D], k_cache, v_cache) with RoPE'd k and v written into the caches at `pos`;
    `out`: q's storage (contiguous; a planned buffer of the generated `run()`), else allocated."""
    _check(qkv, cos, k_cache, v_cache, q_heads, kv_heads, head_dim)
    B, S, _ = qkv.shape
    try:
        cs = [t.expand(B, 1, S, head_dim).select(1, 0) for t in (cos, sin)]
    except RuntimeError as e:
        raise ShapeError(f"rope_cache: cos/sin {tuple(cos.shape)} do not broadcast to {(B, 1, S, head_dim)}") from e
    if cs[0].stride() != cs[1].stride():  # the kernel reads both through one set of strides
        cs = [t.contiguous() for t in cs]
    q = out_tensor(out, (B, q_heads, S, head_dim), qkv.dtype, qkv.device, "rope_cache")
    if q.numel() == 0:
        return q, k_cache, v_cache
    rope_cache_kernel[(B * S, q_heads + 2 * kv_heads)](
        qkv, cs[0], cs[1], pos, q, k_cache, v_cache,
        S, *qkv.stride(), *cs[0].stride(),
        *k_cache.stride()[:3], *v_cache.stride()[:3],
        HQ=q_heads, HKV=kv_heads, D=head_dim, BLOCK_D=triton.next_power_of_2(head_dim))
    return q, k_cache, v_cache


def rope_cache_spec(dtype: str, q_heads: int, kv_heads: int, head_dim: int) -> dict:
    """Build spec (`fxforge.codegen.build.build_spec`) of `rope_cache_kernel` for a contiguous qkv and caches."""
    t = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[dtype]
    ptrs = {name: f"*{t}" for name in ("qkv_ptr", "cos_ptr", "sin_ptr", "q_ptr", "k_ptr", "v_ptr")}
    strides = ("S", "stride_xb", "stride_xs", "stride_cb", "stride_cs", "stride_kb", "stride_kh", "stride_kl",
               "stride_vb", "stride_vh", "stride_vl")
    sig = {**ptrs, "pos_ptr": "*i64", **dict.fromkeys(strides, "i32")}
    const = {"stride_xn": 1, "stride_cd": 1, "HQ": q_heads, "HKV": kv_heads, "D": head_dim,
             "BLOCK_D": triton.next_power_of_2(head_dim)}
    return {"module": __name__, "kernel": "rope_cache_kernel", "signature": sig, "constexprs": const,
            "divisible": [s for s in strides if s != "S"], "num_warps": 4, "num_stages": 3,
            "label": f"rope_cache {dtype} Hq={q_heads} Hkv={kv_heads} D={head_dim}"}
