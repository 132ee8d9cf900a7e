"""The `moe` templates' shared parts: device functions (token normalisation, the router's scores (softmax or
sigmoid, an optional choice bias), the top-k pick of one slot, the shared experts' gate, the experts' gated
activation, an expert weight tile dense or int4) and `ExpertWeight`, what the kernels read of one stacked expert
weight (`moe.py`'s decode kernels and `moe_grouped.py`'s prefill ones)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fxforge.codegen.templates.gemm import apply_activation
from fxforge.ir.graph import Weight


@dataclass(frozen=True)
class ExpertWeight:
    """What the kernels read of one stacked expert weight: a dense [E, N, K] tensor (or [E, K, N] transposed) by its
    strides, or int4 codes [E * N, K / 2] with scale and zero [E * N, groups] (a `#quantized` `Weight`)."""

    ptr: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    strides: tuple[int, int, int]  # (expert, output row, reduction): for codes, bytes
    quant: bool
    group: int
    shape: tuple[int, int, int]  # [E, N, K]
    dtype: torch.dtype  # of the values the kernel computes with

    @classmethod
    def of(cls, w: torch.Tensor | Weight, transposed: bool, dtype: torch.dtype) -> ExpertWeight:
        if isinstance(w, Weight):
            e, n, k = w.data.shape
            p = w.payload
            return cls(p["codes"], p["scale"], p["zero"], (n * (k // 2), k // 2, 1), True, w.encoding.group or k,
                       (e, n, k), dtype)
        strides = (w.stride(0), w.stride(2), w.stride(1)) if transposed else tuple(w.stride())
        shape = (w.shape[0], w.shape[2], w.shape[1]) if transposed else tuple(w.shape)
        return cls(w, w, w, strides, False, 1, shape, w.dtype)

    def args(self) -> tuple:
        """(pointer, scale, zero, *strides) in the kernels' order."""
        return (self.ptr, self.scale, self.zero, *self.strides)


@triton.jit
def normed_x(x_ptr, nw_ptr, cols, cmask, stats, NORM: tl.constexpr):
    """Token x's columns (fp32), normalised with the norm op's roundings (`optable._rms_norm`: the normalised row
    rounded to x's dtype before the weight, or with an fp32 weight one rounding after it; `_layer_norm`: in fp32,
    rounded once); `stats`: `token_stats`."""
    xk = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    if NORM != "none":
        dt = x_ptr.dtype.element_ty
        w = tl.load(nw_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        if NORM == "layer" or nw_ptr.dtype.element_ty == tl.float32:
            xk = (w * ((xk - stats[0]) * stats[1])).to(dt).to(tl.float32)
        else:
            xk = (w * (xk * stats[1]).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    return xk


@triton.jit
def token_stats(x_ptr, H, eps, NORM: tl.constexpr, BLOCK_K: tl.constexpr):
    """(mean, 1 / std) of token x's H values for its norm: LayerNorm's (two passes, as torch's is exact to fp32),
    RMSNorm's (0, 1 / rms), (0, 1) without one."""
    mean = 0.0
    rstd = 1.0
    if NORM != "none":
        offs_k = tl.arange(0, BLOCK_K)
        if NORM == "layer":
            acc = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                acc += tl.load(x_ptr + k0 + offs_k, mask=k0 + offs_k < H, other=0.0).to(tl.float32)
            mean = tl.sum(acc, 0) / H
        sq = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            xk = tl.load(x_ptr + k0 + offs_k, mask=k0 + offs_k < H, other=0.0).to(tl.float32)
            if NORM == "layer":
                xk = tl.where(k0 + offs_k < H, xk - mean, 0.0)
            sq += xk * xk
        rstd = tl.rsqrt(tl.sum(sq, 0) / H + eps)
    return mean, rstd


@triton.jit
def router_probs(x_ptr, nw_ptr, wr_ptr, br_ptr, H, E, stats, stride_re, stride_rk,
                 NORM: tl.constexpr, ROUTER_BIAS: tl.constexpr, SCORE: tl.constexpr, BLOCK_E: tl.constexpr,
                 BLOCK_R: tl.constexpr):
    """Token x's scores over the E experts: the softmax of its router logits, or (SCORE "sigmoid") each logit's
    sigmoid (padding: -2, below any score)."""
    offs_e = tl.arange(0, BLOCK_E)
    offs_r = tl.arange(0, BLOCK_R)
    emask = offs_e < E
    logits = tl.zeros([BLOCK_E], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_R):
        cols = k0 + offs_r
        cmask = cols < H
        xk = normed_x(x_ptr, nw_ptr, cols, cmask, stats, NORM)
        wr = tl.load(wr_ptr + offs_e[:, None] * stride_re + cols[None, :] * stride_rk,
                     mask=emask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        logits += tl.sum(wr * xk[None, :], 1)
    if ROUTER_BIAS:
        logits += tl.load(br_ptr + offs_e, mask=emask, other=0.0).to(tl.float32)
    if SCORE == "sigmoid":
        return tl.where(emask, tl.sigmoid(logits), -2.0)
    logits = tl.where(emask, logits, float("-inf"))
    p = tl.exp(logits - tl.max(logits, 0))
    return tl.where(emask, p / tl.sum(p, 0), -2.0)


@triton.jit
def choice_scores(p, cb_ptr, E, group_fill, CHOICE_BIAS: tl.constexpr, GROUPS: tl.constexpr,
                  TOP_GROUPS: tl.constexpr, BLOCK_E: tl.constexpr):
    """What the top-k ranks: the scores p, plus a per-expert correction bias (DeepSeek-V3-style routers) that moves
    the choice but not the weights (padding: -inf), limited to the best groups (`limit_groups`)."""
    c = p
    if CHOICE_BIAS:
        offs_e = tl.arange(0, BLOCK_E)
        c = tl.where(offs_e < E, p + tl.load(cb_ptr + offs_e, mask=offs_e < E, other=0.0).to(tl.float32),
                     float("-inf"))
    return limit_groups(c, E, group_fill, GROUPS, TOP_GROUPS, BLOCK_E)


@triton.jit
def limit_groups(c, E, group_fill, GROUPS: tl.constexpr, TOP_GROUPS: tl.constexpr, BLOCK_E: tl.constexpr):
    """The choice scores c kept for the experts of the TOP_GROUPS groups (E / GROUPS experts each, in order) whose
    two largest scores sum highest, `group_fill` for the others (DeepSeek-V3's group-limited routing; ties: the
    lowest group first); unchanged with one group."""
    if GROUPS > 1:
        offs_e = tl.arange(0, BLOCK_E)
        grp = offs_e // (E // GROUPS)  # padding: past the last group
        gscore = tl.full([BLOCK_E], float("-inf"), tl.float32)  # each expert's group's score
        for g in tl.static_range(GROUPS):
            v = tl.where(grp == g, c, float("-inf"))
            m1 = tl.max(v, 0)
            i1 = tl.min(tl.where(v == m1, offs_e, BLOCK_E), 0)
            gscore = tl.where(grp == g, m1 + tl.max(tl.where(offs_e == i1, float("-inf"), v), 0), gscore)
        keep = offs_e < 0
        for _ in tl.static_range(TOP_GROUPS):
            top = tl.max(gscore, 0)
            chosen = tl.min(tl.where(gscore == top, grp, GROUPS), 0)
            keep = keep | (grp == chosen)
            gscore = tl.where(grp == chosen, float("-inf"), gscore)
        c = tl.where(offs_e < E, tl.where(keep, c, group_fill), float("-inf"))
    return c


@triton.jit
def pick_slot(p, c, j, renorm_eps, renorm_min, scale, K: tl.constexpr, RENORM: tl.constexpr,
              BLOCK_E: tl.constexpr):
    """(expert, weight) of slot j: the experts of the k largest choice scores c in order (lowest index first on
    ties), weighted by their scores p, divided by max(their sum + renorm_eps, renorm_min) when RENORM, times
    scale."""
    offs_e = tl.arange(0, BLOCK_E)
    total = 0.0
    weight = 0.0
    expert = 0
    for i in tl.static_range(K):
        top = tl.max(c, 0)
        e = tl.min(tl.where(c == top, offs_e, BLOCK_E), 0)
        pe = tl.sum(tl.where(offs_e == e, p, 0.0), 0)
        total += pe
        weight = tl.where(j == i, pe, weight)
        expert = tl.where(j == i, e, expert)
        c = tl.where(offs_e == e, float("-inf"), c)
    if RENORM:
        weight = weight / tl.maximum(total + renorm_eps, renorm_min)
    return expert, weight * scale


@triton.jit
def shared_gate(x_ptr, nw_ptr, wsg_ptr, H, stats, NORM: tl.constexpr, GATED: tl.constexpr, BLOCK_R: tl.constexpr):
    """The shared experts' weight for token x: sigmoid(xn . w_gate) (Qwen2-MoE's shared expert gate), or 1."""
    if GATED:
        offs_r = tl.arange(0, BLOCK_R)
        acc = tl.zeros([BLOCK_R], dtype=tl.float32)
        for k0 in range(0, H, BLOCK_R):
            cols = k0 + offs_r
            cmask = cols < H
            acc += normed_x(x_ptr, nw_ptr, cols, cmask, stats, NORM) * tl.load(wsg_ptr + cols, mask=cmask,
                                                                                other=0.0).to(tl.float32)
        return tl.sigmoid(tl.sum(acc, 0))
    return tl.full([], 1.0, tl.float32)


@triton.jit
def route_slot(x_ptr, nw_ptr, wr_ptr, br_ptr, cb_ptr, wsg_ptr, j, H, E, stats, renorm_eps, renorm_min, scale,
               group_fill, stride_re, stride_rk, K: tl.constexpr, NORM: tl.constexpr, ROUTER_BIAS: tl.constexpr,
               SCORE: tl.constexpr, CHOICE_BIAS: tl.constexpr, RENORM: tl.constexpr, SHARED_GATE: tl.constexpr,
               GROUPS: tl.constexpr, TOP_GROUPS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr):
    """(expert, weight) of token x's slot j: a routed slot (j < K) by the router, or shared expert E + j - K with
    the shared gate (the shared experts are stacked after the routed ones and chosen by every token)."""
    if j < K:
        p = router_probs(x_ptr, nw_ptr, wr_ptr, br_ptr, H, E, stats, stride_re, stride_rk, NORM, ROUTER_BIAS, SCORE,
                         BLOCK_E, BLOCK_R)
        c = choice_scores(p, cb_ptr, E, group_fill, CHOICE_BIAS, GROUPS, TOP_GROUPS, BLOCK_E)
        expert, weight = pick_slot(p, c, j, renorm_eps, renorm_min, scale, K, RENORM, BLOCK_E)
    else:
        expert = E + j - K
        weight = shared_gate(x_ptr, nw_ptr, wsg_ptr, H, stats, NORM, SHARED_GATE, BLOCK_R)
    return expert, weight


@triton.jit
def gated_act(g, u, limit, alpha, ACT: tl.constexpr):
    """The experts' gated activation of fp32 gate and up tiles: act(g) * u, or GPT-OSS's clamped SwiGLU."""
    if ACT == "gpt_oss":  # g * sigmoid(alpha g) * (u + 1), g <= limit, |u| <= limit
        g = tl.minimum(g, limit)
        u = tl.minimum(tl.maximum(u, -limit), limit)
        return g * tl.sigmoid(alpha * g) * (u + 1.0)
    return apply_activation(g, ACT) * u


@triton.jit
def expert_tile(w_ptr, s_ptr, z_ptr, rows, cols, mask, stride_n, stride_k, groups,
                GROUP: tl.constexpr, QUANT: tl.constexpr):
    """fp32 tile of one expert's weight at (rows, cols) (broadcast index tiles; cols along the reduction K): dense by
    its strides, or (QUANT) int4 codes two per byte along K (element 2i the low nibble; `stride_n`: bytes a row)
    with a scale and zero point per GROUP of K (`groups` a row): (code - zero) * scale, as `decode_weight` does."""
    if QUANT:
        b = tl.load(w_ptr + rows * stride_n + cols // 2, mask=mask, other=0)
        q = ((b >> ((cols % 2) * 4).to(tl.uint8)) & 0xF).to(tl.float32)
        at = rows * groups + cols // GROUP
        zero = tl.load(z_ptr + at, mask=mask, other=0).to(tl.float32)
        return (q - zero) * tl.load(s_ptr + at, mask=mask, other=0.0).to(tl.float32)
    return tl.load(w_ptr + rows * stride_n + cols * stride_k, mask=mask, other=0.0).to(tl.float32)


def bias_strides(b: torch.Tensor | None) -> tuple[int, int]:
    """(expert, row) strides of an expert bias [E, N], zeros when absent."""
    return tuple(b.stride()) if b is not None else (0, 0)
