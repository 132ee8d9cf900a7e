"""Rank and error metrics of predictions against measurements (eval's figures).

Decisions:
- Spearman is computed with average ranks for ties (scipy's definition) without importing scipy, so the
  figures do not depend on an optional package; MAPE skips zero measurements (spill bytes are mostly 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(pred: Sequence[float], true: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None with fewer than 3 points or a constant side."""
    if len(pred) < 3:
        return None
    rp, rt = ranks(pred), ranks(true)
    mp, mt = sum(rp) / len(rp), sum(rt) / len(rt)
    cov = sum((a - mp) * (b - mt) for a, b in zip(rp, rt))
    vp = math.sqrt(sum((a - mp) ** 2 for a in rp))
    vt = math.sqrt(sum((b - mt) ** 2 for b in rt))
    return None if vp == 0 or vt == 0 else cov / (vp * vt)


def mape(pred: Sequence[float], true: Sequence[float]) -> float | None:
    """Mean absolute percentage error over the nonzero measurements."""
    pairs = [(p, t) for p, t in zip(pred, true) if t]
    return sum(abs(p - t) / abs(t) for p, t in pairs) / len(pairs) if pairs else None
