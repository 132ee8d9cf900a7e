"""The score and online-softmax steps both attention templates run per key tile (`attention.py`,
`decode_attention.py`).

    s = scaled_scores(dot, qk_scale, cap_scale, SOFTCAP)                         # @triton.jit
    m_i, l_i, acc = online_softmax_step(s, m_i, l_i, acc, v, INPUT_PRECISION)   # @triton.jit
    m_i, l_i = softmax_start(sinks_ptr, heads, row_mask, counted, ROWS, HAS_SINKS)  # @triton.jit, before the loop
    qk_scale, cap_scale = score_scales(scale, softcap)                            # host side
    offs_dv, mask_dv = v_channels(offs_d, mask_d, DV, BLOCK_DV, DV_APART)         # @triton.jit: v's channels

`s` [ROWS, BLOCK_N] are scores in log2 units (log2(e) folded into the scale and into an additive mask,
so each score costs one exp2, no extra multiply), -inf where excluded; `m_i`/`l_i` [ROWS] the running
row max and sum of exp2, `acc` [ROWS, D] the unnormalised fp32 accumulator, `v` [BLOCK_N, D] the tile's
values. A row that has seen only -inf keeps m = -inf, l = 0 (m_safe keeps exp2 finite meanwhile).

Logit soft-capping (Gemma2: `s = tanh(scale * q.k / cap) * cap`, before the mask): the tanh must see the
natural-unit score, so log2(e) is folded into the factor after it, not before: qk_scale = scale / cap,
cap_scale = cap * log2(e); without a cap qk_scale = scale * log2(e) and cap_scale is unused.

Attention sinks (GPT-OSS: a learned logit per head that joins the softmax's denominator only): the
running state starts from the sink instead of (-inf, 0): m = sink * log2(e) (log2 units, never capped),
l = exp2(sink - m) = 1, and the accumulator stays 0, so the sink weighs in every rescale of l but adds
no value. Where several programs share a row (flash-decoding's splits) only one may count it
(`counted`); the combine then merges its l like any other.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fxforge.codegen.templates.special_fns import tanh

LOG2E = 1.4426950408889634


def score_scales(scale: float, softcap: float | None) -> tuple[float, float]:
    """(qk_scale, cap_scale) of `scaled_scores` for sdpa's `scale` and an optional soft-cap."""
    if softcap is None:
        return scale * LOG2E, 1.0
    return scale / softcap, softcap * LOG2E


@triton.jit
def scaled_scores(dot, qk_scale, cap_scale, SOFTCAP: tl.constexpr):
    """The scores q.k of a tile in log2 units, soft-capped when SOFTCAP (see the module docstring)."""
    if SOFTCAP:
        return tanh(dot * qk_scale) * cap_scale
    return dot * qk_scale


@triton.jit
def online_softmax_step(s, m_i, l_i, acc, v, INPUT_PRECISION: tl.constexpr):
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def softmax_start(sinks_ptr, heads, row_mask, counted, ROWS: tl.constexpr, HAS_SINKS: tl.constexpr):
    """(m, l) [ROWS] before the first key tile: (-inf, 0), or when `counted` (a scalar) the sink of each
    row's head `heads` and 1 (see the module docstring)."""
    m0 = tl.full((ROWS,), float("-inf"), dtype=tl.float32)
    l0 = tl.zeros((ROWS,), dtype=tl.float32)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + heads, mask=row_mask, other=float("-inf")).to(tl.float32) * 1.4426950408889634
        m0 = tl.where(counted, sink, m0)
        l0 = tl.where(m0 == float("-inf"), 0.0, 1.0)  # exp2(sink - m0); a -inf sink weighs nothing
    return m0, l0


@triton.jit
def v_channels(offs_d, mask_d, DV, BLOCK_DV: tl.constexpr, DV_APART: tl.constexpr):
    """v's channel offsets and mask: its own (DV_APART: a v head dim apart from q/k's, MiMo-V2-Flash's, MLA's) or q/k's
    (the same ones: separate ones cost an fp32 D=64 decode 4 B of spill on sm_80)."""
    if DV_APART:
        offs_dv = tl.arange(0, BLOCK_DV)
        return offs_dv, offs_dv < DV
    else:
        return offs_d, mask_d
