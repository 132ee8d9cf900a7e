"""The online-softmax step both attention templates run per key tile (`attention.py`, `decode_attention.py`).

    m_i, l_i, acc = online_softmax_step(s, m_i, l_i, acc, v, INPUT_PRECISION)   # @triton.jit

`s` [ROWS, BLOCK_N] are scores in log2 units (log2(e) folded into the scale and into an additive mask,
so each score costs one exp2, no extra multiply), -inf where excluded; `m_i`/`l_i` [ROWS] the running
row max and sum of exp2, `acc` [ROWS, D] the unnormalised fp32 accumulator, `v` [BLOCK_N, D] the tile's
values. A row that has seen only -inf keeps m = -inf, l = 0 (m_safe keeps exp2 finite meanwhile).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def online_softmax_step(s, m_i, l_i, acc, v, INPUT_PRECISION: tl.constexpr):
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
    return m_new, l_i, acc
