"""The `ffn_skip` pass's numerics: calibration activations per FFN block, the gate fits, the per-layer
thresholds that hit a target share at the least cost, and the gate-quality curves of the report.

- `collect(graph, blocks, positions, inputs)` runs the unskipped graph (`ir.evaluate`) on the
  calibration inputs and keeps, per block and token row: the FFN input u, |stream|, |y|, the position,
  and 1 - cos(stream, stream + y) (the carry gate's signal for the NEXT block).
- The quadratic gate: the same least squares on [u, u*u] (two dot products per token). Measured on
  held-out halves of 16 calibration windows (fixture, gated layers 1-2, error at 16% skipped):
  linear 0.0643/0.0777, quadratic 0.0574/0.0744, oracle 0.0540/0.0686. End to end (benchmarks/accuracy
  README): fixture at 0.16, +2.55% bpb / 0.910 agreement vs linear's +3.02% / 0.899; the 8-layer model
  a wash (both at the oracle). Not a win on both, so it is opt-in and linear stays the default.
- The linear gate: least squares (ridge 1e-3 of the mean diagonal) of log|y| from [u, 1]; y is a
  function of u alone, so this is the part to learn, and the score log|y|^ - log|h| predicts the
  FFN's size relative to the stream exactly as the oracle measures it.
- Cost of skipping row t of a block: |y_t|^2 / |stream_t|^2 (the squared relative change of the
  stream that the row loses). `allocate` spends a row budget across layers on the lower convex
  hull of each layer's (rows skipped, cost) curve when its rows are taken in gate-score order: the
  rows that cost least per row go first, whichever layer they are in (a Lagrangian choice).
- Thresholds are midpoints between consecutive calibration scores; a layer given no rows gets
  NEVER (a finite threshold below any score, so the IR text stays plain numbers).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fxforge.ir.evaluate import evaluate
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.skip_ops import WEIGHTED, gate_features, gate_scores
from fxforge.passes.ffn_skip_find import FfnBlock

NEVER = -1.0e30
CHUNKS = 128  # points per layer curve for the allocation
CURVE_SHARES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


@dataclass
class BlockData:
    """Calibration rows of one FFN block (flattened over batch and sequence)."""

    u: Tensor  # [n, D] f32, FFN input
    log_stream: Tensor  # [n] log |stream|
    log_y: Tensor  # [n] log |y|
    cost: Tensor  # [n] |y|^2 / |stream|^2
    pos: Tensor  # [n] positions
    carry_out: Tensor  # [n] 1 - cos(stream, stream + y): the next block's carry score


def _flat(t: Tensor) -> Tensor:
    return t.detach().reshape(-1, t.shape[-1]).float()


def collect(graph: Graph, blocks: Sequence[FfnBlock], positions: Value | None,
            inputs: Sequence[Sequence[Tensor]]) -> tuple[list[BlockData], list[list[Tensor]]]:
    """Run the graph on every calibration input; returns per-block data and the graph's outputs."""
    watch = {id(v) for b in blocks for v in (b.u, b.stream, b.y)} | ({id(positions)} if positions is not None else set())
    parts: list[dict[str, list[Tensor]]] = [{k: [] for k in ("u", "s", "y", "pos")} for _ in blocks]
    outputs = []
    for args in inputs:
        seen: dict[int, Tensor] = {id(v): t for v, t in zip(graph.inputs, args) if id(v) in watch}

        def observe(op: Op, outs: list[Tensor]) -> None:
            for r, t in zip(op.results, outs):
                if id(r) in watch:
                    seen[id(r)] = t

        outputs.append(evaluate(graph, list(args), observe=observe))
        for b, part in zip(blocks, parts):
            lead = b.u.type.rank - 1
            u = seen[id(b.u)]
            part["u"].append(_flat(u))
            part["s"].append(_flat(seen[id(b.stream)]))
            part["y"].append(_flat(seen[id(b.y)]))
            rows = u.shape[:lead]
            pos = seen[id(positions)].expand(rows) if positions is not None else \
                torch.arange(rows[-1]).expand(rows)
            part["pos"].append(pos.reshape(-1))
    data = []
    for part in parts:
        u, s, y = (torch.cat(part[k]) for k in ("u", "s", "y"))
        ns, ny = s.norm(dim=-1).clamp_min(1e-12), y.norm(dim=-1).clamp_min(1e-12)
        carry = gate_scores("carry", s, s + y)
        data.append(BlockData(u, ns.log(), ny.log(), (ny / ns) ** 2, torch.cat(part["pos"]), carry))
    return data, outputs


def fit_linear(d: BlockData, ridge: float = 1e-3, kind: str = "linear") -> tuple[Tensor, float, float]:
    """Least squares of log|y| on [features(u), 1] (`gate_features`: u, or [u, u*u] for the quadratic
    gate): (w [D or 2D] f32, bias, R^2 on the calibration rows)."""
    f = gate_features(kind, d.u.double())
    x = torch.cat([f, torch.ones(d.u.shape[0], 1, dtype=torch.float64)], 1)
    z = d.log_y.double()
    gram = x.T @ x
    lam = ridge * gram.diagonal().mean()
    beta = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=torch.float64), x.T @ z)
    pred = x @ beta
    r2 = 1.0 - ((pred - z) ** 2).sum() / ((z - z.mean()) ** 2).sum().clamp_min(1e-30)
    return beta[:-1].float(), float(beta[-1]), float(r2)


def scores(kind: str, d: BlockData, prev: BlockData | None, w: Tensor | None = None, bias: float = 0.0) -> Tensor:
    """The gate's score of each calibration row (low = skip), as the `skip_gate` op computes it."""
    if kind in WEIGHTED:
        return gate_features(kind, d.u) @ w + bias - d.log_stream
    if kind == "carry":
        return prev.carry_out
    return d.log_y - d.log_stream  # oracle


def _threshold(sorted_scores: Tensor, m: int) -> float:
    if m <= 0:
        return NEVER
    if m >= len(sorted_scores):
        return float(sorted_scores[-1]) + 1.0
    return 0.5 * (float(sorted_scores[m - 1]) + float(sorted_scores[m]))


@dataclass
class Curve:
    """A layer's rows in gate order: eligible scores sorted, cumulative cost, hull points (rows, cost)."""

    sorted_scores: Tensor
    cum_cost: Tensor  # cum_cost[m] = cost of skipping the m lowest-score rows
    hull: list[tuple[int, float]]


def make_curve(score: Tensor, cost: Tensor, eligible: Tensor) -> Curve:
    s, c = score[eligible], cost[eligible]
    order = torch.argsort(s)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(c[order].double(), 0)])
    n = len(s)
    pts = sorted({round(i * n / CHUNKS) for i in range(CHUNKS + 1)})
    hull: list[tuple[int, float]] = []
    for m in pts:  # lower convex hull (Andrew's monotone chain)
        p = (m, float(cum[m]))
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    return Curve(s[order], cum, hull)


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def allocate(curves: dict[str, Curve], budget: int) -> dict[str, int]:
    """Rows to skip per layer: hull segments in order of cost per row until `budget` rows are taken."""
    taken = {k: 0 for k in curves}
    heap = []
    for k, c in curves.items():
        if len(c.hull) > 1:
            (m0, c0), (m1, c1) = c.hull[0], c.hull[1]
            heapq.heappush(heap, ((c1 - c0) / (m1 - m0), k, 1))
    left = budget
    while heap and left > 0:
        _, k, i = heapq.heappop(heap)
        hull = curves[k].hull
        step = hull[i][0] - hull[i - 1][0]
        take = min(step, left)
        taken[k] += take
        left -= take
        if take == step and i + 1 < len(hull):
            (m0, c0), (m1, c1) = hull[i], hull[i + 1]
            heapq.heappush(heap, ((c1 - c0) / (m1 - m0), k, i + 1))
    return taken


def thresholds(curves: dict[str, Curve], rows: dict[str, int]) -> dict[str, float]:
    return {k: _threshold(curves[k].sorted_scores, rows.get(k, 0)) for k in curves}


def threshold_at(curve: Curve, rows: int) -> float:
    """The threshold that skips the `rows` lowest-score calibration rows of a layer."""
    return _threshold(curve.sorted_scores, rows)


def scaled(curve: Curve, weight: float) -> Curve:
    """The same curve with its costs multiplied by a layer's measured sensitivity."""
    return Curve(curve.sorted_scores, curve.cum_cost * weight, [(m, c * weight) for m, c in curve.hull])


def quality_curve(score: Tensor, d: BlockData, eligible: Tensor) -> dict[str, list[float]]:
    """Share of the layer's rows skipped vs the layer's output error (|dropped y| / |stream|, RMS over
    all rows), in the gate's order and in the oracle's (true |y|/|stream|) order."""
    total = float((d.log_stream * 2).exp().sum())
    y2 = (d.log_y * 2).exp()
    idx = torch.nonzero(eligible).reshape(-1)
    n_all = len(d.cost)

    def err(order: Tensor, share: float) -> float:
        m = min(len(order), round(share * n_all))
        return math.sqrt(float(y2[idx[order[:m]]].sum()) / max(total, 1e-30))

    g_order = torch.argsort(score[eligible])
    o_order = torch.argsort(d.cost[eligible])
    return {"share": list(CURVE_SHARES), "gate_error": [err(g_order, s) for s in CURVE_SHARES],
            "oracle_error": [err(o_order, s) for s in CURVE_SHARES]}
