"""The per-channel steps of `rope_cache_kernel` (`templates/rope_cache.py`, whose docstring says what each computes
and why): the q/k RMSNorm's row scale and weights, a channel as loaded (normed), RoPE of channels, the norm after RoPE,
v's weightless norm, q's per-token scale. Split from the kernel's module to keep both short."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rows_rstd(row, stride_xn, eps, nh, NH: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """1 / sqrt(mean(x^2) + eps) over the nh <= NH head rows from `row` on (fp32): the q/k RMSNorm's scale (nh = 1: the
    head's own)."""
    d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(NH):
        live = (d * 0 + i) < nh  # a vector mask (the interpreter refuses a scalar one in `&`)
        x = tl.load(row + (i * D + d) * stride_xn, mask=(d < D) & live, other=0.0).to(tl.float32)
        acc += x * x
    return tl.rsqrt(tl.sum(acc, axis=0) / (nh * D) + eps)


@triton.jit
def _norm_weight(d, md, qn_ptr, kn_ptr, w_off, vq, vk, NORM_W: tl.constexpr):
    """The q/k norm's weights at channels `d` from `w_off` (fp32; q's where vq, k's where vk), or 1 (NORM_W false)."""
    if NORM_W:
        g = tl.load(qn_ptr + w_off + d, mask=md & vq, other=0.0).to(tl.float32) + tl.load(
            kn_ptr + w_off + d, mask=md & vk, other=0.0).to(tl.float32)
    else:
        g = tl.full(d.shape, 1.0, tl.float32)
    return g


@triton.jit
def _channel(row, d, md, stride_xn, qn_ptr, kn_ptr, w_off, rstd, is_q, is_k, QK_NORM: tl.constexpr,
             NORM_F32: tl.constexpr, NORM_W: tl.constexpr):
    """Channels `d` of the head row (fp32); QK_NORM: the RMSNorm (weights qn / kn from `w_off`, the row's `rstd`)
    applied where is_q or is_k with `gemm_prologue.rms_scale`'s steps and roundings, NORM_F32: weighted in fp32 and rounded
    once (v heads as loaded); NORM_W false: weightless (a weight of 1: one rounding either way)."""
    x = tl.load(row + d * stride_xn, mask=md, other=0.0)
    if QK_NORM:
        vq, vk = (d * 0 + is_q.to(tl.int32)) != 0, (d * 0 + is_k.to(tl.int32)) != 0  # vector masks (the interpreter)
        g = _norm_weight(d, md, qn_ptr, kn_ptr, w_off, vq, vk, NORM_W)
        if NORM_F32:  # the norm's IR: cast(rms_norm(cast(x, f32), w), x.dtype)
            xn = (x.to(tl.float32) * rstd * g).to(x.dtype)
        else:
            xn = ((x.to(tl.float32) * rstd).to(x.dtype).to(tl.float32) * g).to(x.dtype)
        x = tl.where(vq | vk, xn, x)
    return x.to(tl.float32)


@triton.jit
def rope_at(row, c_ptr, s_ptr, d, md, stride_xn, stride_cd, rotate, D: tl.constexpr, qn_ptr, kn_ptr, w_off, rstd,
             is_q, is_k, QK_NORM: tl.constexpr, ROT: tl.constexpr, INTERLEAVED: tl.constexpr,
             PAIR_TABLES: tl.constexpr, NORM_F32: tl.constexpr, NORM_W: tl.constexpr, NEGATED: tl.constexpr):
    """fp32 RoPE (where `rotate`, else the input) of channels `d` of the head row at `row` (QK_NORM: normed first);
    channels past ROT (partial RoPE) pass through, all of them at ROT 0 (no RoPE). NEGATED: the rotated half's sign
    flipped (a rotation by -theta)."""
    x = _channel(row, d, md, stride_xn, qn_ptr, kn_ptr, w_off, rstd, is_q, is_k, QK_NORM, NORM_F32, NORM_W)
    if ROT == 0:  # no RoPE (Flint's full-attention layers): the norms and the cache writes only
        y = x
    else:
        in_rot = d < ROT
        if INTERLEAVED:  # pairs (2i, 2i + 1): rotate(x)[2i] = -x[2i + 1], rotate(x)[2i + 1] = x[2i]
            pd = d ^ 1
            negated = (d % 2) == 0
            if NEGATED:  # -rotate: the odd channel's partner negated instead
                negated = (d % 2) == 1
        else:  # rotate_half: d with (d + R/2) mod R, negated in the first half (NEGATED, NanoChat's: second)
            pd = (d + ROT // 2) % ROT
            negated = d < ROT // 2
            if NEGATED:
                negated = d >= ROT // 2
        partner = _channel(row, tl.where(in_rot, pd, d), md, stride_xn, qn_ptr, kn_ptr, w_off, rstd, is_q, is_k,
                           QK_NORM, NORM_F32, NORM_W)
        rot = tl.where(negated, partner * -1.0, partner)  # not `-partner`: Triton 3.6 computes it as 0 - x (+0, not -0)
        if PAIR_TABLES:  # one table entry per pair: 2i and 2i + 1 read i (interleaved), i and i + R/2 read i (halves)
            if INTERLEAVED:
                cd = d // 2
            else:
                cd = d % (ROT // 2)
        else:
            cd = d
        c = tl.load(c_ptr + cd * stride_cd, mask=md & in_rot, other=0.0).to(tl.float32)
        sn = tl.load(s_ptr + cd * stride_cd, mask=md & in_rot, other=0.0).to(tl.float32)
        y = tl.where(rotate, tl.where(in_rot, x * c + rot * sn, x), x)
    return y


@triton.jit
def norm_after_rope(y, d, md, qn_ptr, kn_ptr, eps, is_q, is_k, out_ptr, D: tl.constexpr, NORM_F32: tl.constexpr,
                NORM_W: tl.constexpr):
    """RMSNorm over D of a RoPE'd q / k head row y (fp32; HunYuan's q/k norm after RoPE): of y rounded to the model's
    dtype (the graph's RoPE result), with `_channel`'s steps and roundings; v rows as they are."""
    dt = out_ptr.dtype.element_ty
    x = tl.where(md, y.to(dt).to(tl.float32), 0.0)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    vq, vk = (d * 0 + is_q.to(tl.int32)) != 0, (d * 0 + is_k.to(tl.int32)) != 0  # vector masks (the interpreter)
    g = _norm_weight(d, md, qn_ptr, kn_ptr, 0, vq, vk, NORM_W)
    if NORM_F32:
        xn = x * rstd * g
    else:
        xn = (x * rstd).to(dt).to(tl.float32) * g
    return tl.where(vq | vk, xn.to(dt).to(tl.float32), y)


@triton.jit
def v_normed(y, md, eps, is_v, D: tl.constexpr):
    """Weightless RMSNorm over D of v rows as loaded (Gemma 4's v_norm; rounded once at the store), q / k as they are."""
    x = tl.where(md, y, 0.0)
    return tl.where(is_v, x * tl.rsqrt(tl.sum(x * x, axis=0) / D + eps), y)


@triton.jit
def q_scaled(y, d, scale_at, is_q, out_ptr):
    """q rows times their token's scale (Ministral3's position-dependent q scaling after RoPE), rounded as the graph's
    mul of two model-dtype tensors; k / v rows as they are."""
    dt = out_ptr.dtype.element_ty
    vq = (d * 0 + is_q.to(tl.int32)) != 0
    return tl.where(vq, (y.to(dt).to(tl.float32) * tl.load(scale_at).to(tl.float32)).to(dt).to(tl.float32), y)
