"""The dense GEMM's prologue (`gemm.gemm_kernel`): what its load computes from the input rows before the dot, so
the norms between a decoder block's GEMMs need no launch of their own (issue #13).

- HAS_NORM: A = rms_norm(X, w, eps), computed in the load: a first pass over K gives each row's 1/rms, the main
  loop scales, rounds to X's dtype as Llama does, multiplies by the norm weight and rounds again (the rms_norm row
  kernel's steps). LAYER_NORM: LayerNorm instead (mean and variance in two passes, (x - mean) * rstd [* w] [+ b] in
  fp32, one rounding: the layer_norm row kernel's steps); HAS_NW / HAS_NB: whether it has a weight / a bias
  (OLMo's LayerNorm has neither; NanoChat's RMSNorm no weight: scaled and rounded once).
- POST_NORM (Gemma2/3, OLMo2, EXAONE 4: the norm of a GEMM output before the residual add): a_ptr is h, the
  previous GEMM's output, and the GEMM's input is z = res + rms_norm(h, pw) (the rms_norm's roundings, then the
  add's; pw or res may be None: z = rms_norm(h), NanoChat's weightless norm after the embedding, a norm of a
  norm with the HAS_NORM step), optionally followed by the HAS_NORM / LAYER_NORM norm of z (Gemma's pre-feedforward norm, the final
  norm before the lm_head). A first pass gives h's 1/rms; z's statistics are taken over z recomputed tile by
  tile. WRITE_Z: the programs of the first output-column tile (pid_n == 0; with split-K every split, each over its
  own K range) store z as well: the next residual add reads it.
Each program normalises its own rows (a decode step has few); the extra passes over K read the input rows, which
the main loop reads anyway.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def row_rstd(a_ptr, offs_m, mask_m, stride_am, stride_ak, K, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """1 / sqrt(mean(x^2) + eps) of the BLOCK_M rows of A (fp32): the RMSNorm prologue's first pass."""
    offs_k = tl.arange(0, BLOCK_K)
    ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        ks = k0 * BLOCK_K + offs_k
        x = tl.load(a_ptr + offs_m[:, None] * stride_am + ks[None, :] * stride_ak, mask=mask_m[:, None] & (ks[None, :] < K), other=0.0).to(tl.float32)
        ss += tl.sum(x * x, axis=1)
    return tl.rsqrt(ss / K + eps)


@triton.jit
def rms_scale(x, rstd, g, ONE_ROUNDING: tl.constexpr = False):
    """x [rows, cols] normalised by its rows' `row_rstd` and weighted by g [cols] (fp32) with the rms_norm row
    kernel's steps and roundings: scale, round to x's dtype, weight, round. ONE_ROUNDING (an fp32 norm weight on
    16-bit x: Gemma's (1 + w) in fp32, `norm_prologues.cast_norm_prologue`): scale, weight, round."""
    if ONE_ROUNDING:
        return (x.to(tl.float32) * rstd[:, None] * g[None, :]).to(x.dtype)
    xn = (x.to(tl.float32) * rstd[:, None]).to(x.dtype).to(tl.float32)
    return (xn * g[None, :]).to(x.dtype)


@triton.jit
def post_z(h, res_ptr, pw_ptr, offs_m, ks, m, stride_pm, stride_pk, K, h_rstd):
    """z = res + rms_norm(h, pw) for the tile h [rows, ks] (mask m): the norm's roundings (`rms_scale`), then the
    add's. pw_ptr None: weightless (scale, one rounding); res_ptr None: z is the norm itself (NanoChat's norm after
    the embedding, which the residual reads and the layer's first GEMM normalises again)."""
    if pw_ptr is None:
        z = (h.to(tl.float32) * h_rstd[:, None]).to(h.dtype)
    else:
        z = rms_scale(h, h_rstd, tl.load(pw_ptr + ks, mask=ks < K, other=0.0).to(tl.float32),
                      pw_ptr.dtype.element_ty == tl.float32)  # fp32 weight: one rounding
    if res_ptr is not None:
        r = tl.load(res_ptr + offs_m[:, None] * stride_pm + ks[None, :] * stride_pk, mask=m, other=0.0)
        z = (r.to(tl.float32) + z.to(tl.float32)).to(h.dtype)
    return z


@triton.jit
def prologue_input(a_ptr, res_ptr, pw_ptr, offs_m, rows, ks, stride_am, stride_ak, stride_pm, stride_pk, K, h_rstd, POST_NORM: tl.constexpr):
    """The rows x columns `ks` of the prologue's input: X as stored, or z (POST_NORM; a_ptr is h); 0 outside."""
    m = rows[:, None] & (ks[None, :] < K)
    x = tl.load(a_ptr + offs_m[:, None] * stride_am + ks[None, :] * stride_ak, mask=m, other=0.0)
    if POST_NORM:
        x = post_z(x, res_ptr, pw_ptr, offs_m, ks, m, stride_pm, stride_pk, K, h_rstd)
    return x


@triton.jit
def prologue_stats(
    a_ptr,
    res_ptr,
    pw_ptr,
    offs_m,
    mask_m,
    stride_am,
    stride_ak,
    stride_pm,
    stride_pk,
    K,
    eps,
    post_eps,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_NORM: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    POST_NORM: tl.constexpr,
):
    """(h's 1/rms, the input's mean, its 1/rms or 1/std) per row, fp32; zeros where a step is off. The norm's
    statistics are taken the row kernels' way: the mean first (LayerNorm), then the (centred) squares."""
    offs_k = tl.arange(0, BLOCK_K)
    h_rstd = tl.zeros((BLOCK_M,), dtype=tl.float32)
    mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
    rstd = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if POST_NORM:
        h_rstd = row_rstd(a_ptr, offs_m, mask_m, stride_am, stride_ak, K, post_eps, BLOCK_M, BLOCK_K)
    if HAS_NORM:
        if LAYER_NORM:
            s = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for k0 in range(0, tl.cdiv(K, BLOCK_K)):
                x = prologue_input(
                    a_ptr, res_ptr, pw_ptr, offs_m, mask_m, k0 * BLOCK_K + offs_k, stride_am, stride_ak, stride_pm, stride_pk, K, h_rstd, POST_NORM
                )
                s += tl.sum(x.to(tl.float32), axis=1)
            mean = s / K
        ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, tl.cdiv(K, BLOCK_K)):
            ks = k0 * BLOCK_K + offs_k
            x = prologue_input(a_ptr, res_ptr, pw_ptr, offs_m, mask_m, ks, stride_am, stride_ak, stride_pm, stride_pk, K, h_rstd, POST_NORM)
            d = tl.where(mask_m[:, None] & (ks[None, :] < K), x.to(tl.float32) - mean[:, None], 0.0)
            ss += tl.sum(d * d, axis=1)
        rstd = tl.rsqrt(ss / K + eps)
    return h_rstd, mean, rstd


@triton.jit
def prologue_tile(
    a,
    ks,
    offs_m,
    rows,
    K,
    res_ptr,
    stride_pm,
    stride_pk,
    pw_ptr,
    h_rstd,
    z_ptr,
    stride_zm,
    z_rows,
    norm_ptr,
    nb_ptr,
    mean,
    rstd,
    HAS_NORM: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    HAS_NW: tl.constexpr,
    HAS_NB: tl.constexpr,
    POST_NORM: tl.constexpr,
    WRITE_Z: tl.constexpr,
):
    """The main loop's A tile [rows, ks] from the loaded input tile `a`: z (POST_NORM; stored where `z_rows` with
    WRITE_Z), then its norm (HAS_NORM), in the input's dtype."""
    k_ok = ks < K
    if POST_NORM:
        a = post_z(a, res_ptr, pw_ptr, offs_m, ks, rows[:, None] & k_ok[None, :], stride_pm, stride_pk, K, h_rstd)
        if WRITE_Z:
            tl.store(z_ptr + offs_m[:, None] * stride_zm + ks[None, :], a.to(z_ptr.dtype.element_ty), mask=z_rows[:, None] & k_ok[None, :])
    if HAS_NORM:
        g = tl.full(ks.shape, 1.0, tl.float32)
        if HAS_NW:
            g = tl.load(norm_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        if LAYER_NORM:
            y = ((a.to(tl.float32) - mean[:, None]) * rstd[:, None]) * g[None, :]
            if HAS_NB:
                y += tl.load(nb_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)[None, :]
            a = y.to(a.dtype)
        elif HAS_NW:
            a = rms_scale(a, rstd, g, norm_ptr.dtype.element_ty == tl.float32)  # fp32 g: one rounding
        else:  # a weightless RMSNorm (NanoChat): scale, one rounding
            a = (a.to(tl.float32) * rstd[:, None]).to(a.dtype)
    return a


@triton.jit
def post_norm_rows(
    h_ptr, res_ptr, pw_ptr, z_ptr, M, K, stride_hm, stride_hk, stride_pm, stride_pk, stride_zm, eps,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """z = res + rms_norm(h, pw) for BLOCK_M rows per program: the post-norm step on its own, where the GEMM has more
    rows than a decode step (`gemm.linear`: each column tile would recompute every row's statistics)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    h_rstd = row_rstd(h_ptr, offs_m, mask_m, stride_hm, stride_hk, K, eps, BLOCK_M, BLOCK_K)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        ks = k0 * BLOCK_K + tl.arange(0, BLOCK_K)
        z = prologue_input(h_ptr, res_ptr, pw_ptr, offs_m, mask_m, ks, stride_hm, stride_hk, stride_pm, stride_pk, K, h_rstd, True)
        tl.store(z_ptr + offs_m[:, None] * stride_zm + ks[None, :], z, mask=mask_m[:, None] & (ks[None, :] < K))


POST_NORM_ROWS = dict(BLOCK_M=16, BLOCK_K=128, num_warps=4)  # `post_norm_rows`' tile


def post_norm_rows_spec(dtype: str, bare: bool = False) -> dict:
    """Build spec (`codegen.build`) of `post_norm_rows` for contiguous rows of `dtype` (`bare`: no residual, no
    weight: z = rms_norm(h), NanoChat's)."""
    t = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]
    sig = {"h_ptr": f"*{t}", "res_ptr": f"*{t}", "pw_ptr": f"*{t}", "z_ptr": f"*{t}", "M": "i32", "K": "i32",
           "stride_hm": "i32", "stride_pm": "i32", "stride_zm": "i32", "eps": "fp32"}  # fmt: skip
    const = {"stride_hk": 1, "stride_pk": 1, "BLOCK_M": POST_NORM_ROWS["BLOCK_M"], "BLOCK_K": POST_NORM_ROWS["BLOCK_K"]}
    if bare:
        del sig["res_ptr"], sig["pw_ptr"], sig["stride_pm"]
        const.update(res_ptr=None, pw_ptr=None, stride_pm=0)
    return {"module": __name__, "kernel": "post_norm_rows", "signature": sig, "constexprs": const, "num_warps": 4,
            "num_stages": 1, "divisible": [d for d in ("K", "stride_hm", "stride_pm", "stride_zm") if d in sig],
            "label": f"post_norm_rows {dtype}{' bare' * bare}"}  # fmt: skip
