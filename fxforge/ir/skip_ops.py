"""Op entries for per-token FFN skipping as dataflow: a gate picks the token rows that keep their FFN,
the kept rows are compacted, the FFN runs on them alone, and its output is scatter-added back into
the residual stream. No control-flow regions: the number of kept rows is a data-dependent dim.

- `skip_gate(a, b, pos, [w]) {kind, bias, threshold, warmup, count}` -> i64[count]: the indices of the
  rows (flattened leading dims of `a`) that KEEP their FFN. A row is skipped where its score is
  below `threshold` and its position (`pos`, broadcast to the leading dims) is >= `warmup`. Scores:
  `linear`: a = FFN input u, b = the residual stream h, w: f32[D]: u·w + bias - log|h|
            (a least-squares prediction of log(|FFN(u)| / |h|), the FFN's relative size);
  `quadratic`: as linear with w: f32[2D] over the features [u, u*u]: [u, u*u]·w + bias - log|h|
            (the FFN's size is closer to a quadratic than a linear function of its input);
  `carry`:  a, b = the previous FFN block's input and output streams: 1 - cos(a, b) (FFN-SkipLLM's
            rule: a block that left the stream unchanged predicts the next one will too);
  `oracle`: a = the FFN's own output y, b = h: log(|y| / |h|) (measurement only: the FFN has run).
- `gather_rows(x[..., D], idx[k])` -> [k, D]: the rows idx of x viewed as [rows, D].
- `scatter_add_rows(r[..., D], y[k, D], idx[k])` -> r's type: r with y added to the rows idx.
- `skip_count(x[..., D], [idx])` -> i64[2]: (rows the FFN would run without skipping, rows skipped),
  counted from the tensors as they flow: rows from x's shape, kept rows from the gate's idx.
- The decode form (no compaction, nothing data-dependent: a CUDA graph can capture it):
  `skip_keep(a, b, pos, [w]) {kind, bias, threshold, warmup}` -> a's dtype [..., 1]: the same decision as
  `skip_gate` as a per-row flag, 1 = keep, 0 = skip; `row_keep(x[..., F], keep[..., 1])` -> x * keep: the
  rows the gate skips are zero. A GEMM whose input is a `row_keep` may read the flags and skip the K loop
  of a tile whose rows are all off (the zero rows it would compute); `row_keep` of the FFN's output
  before the residual add is the masked add. `skip_count(x, keep)` counts from the flags.
- `skip_counts(c_0, ..., c_{L-1}) {sites}` -> i64[L, 2]: the blocks' counts stacked, named by site;
  the graph returns it as an extra output that the runtime adds into its counters.

Decisions:
- The data-dependent row count is a plain symbol named by the gate's `count` attribute. Ops tagged
  `DATA_DEPENDENT` define the bare-symbol dims of their results; `data_dependent_symbols(graph)` lists
  them, so generated code binds them from the result's shape instead of taking them as arguments.
- Scores are computed in f32 whatever the activations' dtype; the compaction is `torch.nonzero` (a
  host synchronisation on a GPU: the first version's price, see passes/ffn_skip.py).
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
import torch.nn.functional as F

from fxforge.ir.dtypes import DType
from fxforge.ir.errors import ShapeError
from fxforge.ir.ops import REQUIRED, OpDef, register
from fxforge.ir.types import TensorType, dims_equal, sym

DATA_DEPENDENT = "data_dependent_shape"
GATE_KINDS = ("linear", "quadratic", "carry", "oracle")
WEIGHTED = {"linear": 1, "quadratic": 2}  # gate kinds with a weight operand: its length in multiples of D
MODES = ("auto", "compact", "mask")  # how a gated block skips: see passes/ffn_skip.py
EPS = 1e-12
MAX_SHARE = 0.9


def options_problem(target: Any, gate: Any, warmup: Any, protect: Any, overrides: Any, mode: Any = "auto") -> str | None:
    """What is wrong with the ffn_skip options, or None. One check for CompileConfig and the pass (which
    both raise ConfigError with it); it lives with the gate kinds because both layers may import the IR."""
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= MAX_SHARE:
        return f"ffn_skip={target!r}: the share of FFN token-rows to skip must be a number in (0, {MAX_SHARE}]"
    if gate not in GATE_KINDS:
        return f"ffn_skip_gate={gate!r} is not a gate; known: {list(GATE_KINDS)}"
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        return f"ffn_skip_warmup={warmup!r} must be an int >= 0 (tokens that always run their FFNs)"
    if not isinstance(protect, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in protect):
        return f"ffn_skip_protect={protect!r} must be a list of FFN block indices (negative count from the end)"
    if mode not in MODES:
        return f"ffn_skip_mode={mode!r} is not a mode; known: {list(MODES)}"
    if not isinstance(overrides, dict):
        return f"ffn_skip_overrides={overrides!r} must be a dict {{site pattern: share}}"
    for k, v in overrides.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_SHARE:
            return f"ffn_skip_overrides[{k!r}]={v!r}: give {{site pattern: share in [0, {MAX_SHARE}]}}"
    return None


def gate_features(kind: str, u: torch.Tensor) -> torch.Tensor:
    """What a weighted gate's w is dotted with: u (linear) or [u, u*u] (quadratic)."""
    return u if kind == "linear" else torch.cat([u, u * u], -1)


def _row_norm(x: torch.Tensor) -> torch.Tensor:
    return x.float().norm(dim=-1).clamp_min(EPS)


def gate_scores(kind: str, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None = None, bias: float = 0.0) -> torch.Tensor:
    """Per-row scores (leading dims of a) of a gate kind; a row is skipped where its score is low."""
    if kind in WEIGHTED:
        return gate_features(kind, a.float()) @ w.float() + bias - torch.log(_row_norm(b))
    if kind == "carry":
        return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1, eps=EPS)
    if kind == "oracle":
        return torch.log(_row_norm(a)) - torch.log(_row_norm(b))
    raise ShapeError(f"skip_gate: unknown kind {kind!r}; known: {GATE_KINDS}")


def _skip_gate(a, b, pos, w=None, *, kind, bias, threshold, warmup, count):
    score = gate_scores(kind, a, b, w, bias)
    warm = pos.expand(score.shape) < warmup
    keep = (score >= threshold) | warm
    return torch.nonzero(keep.reshape(-1)).reshape(-1)


def _skip_gate_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    a, b, pos = types[:3]
    if attrs["kind"] not in GATE_KINDS:
        raise ShapeError(f"skip_gate: unknown kind {attrs['kind']!r}; known: {GATE_KINDS}")
    if a.rank < 2 or b.rank != a.rank or not all(dims_equal(x, y) for x, y in zip(a.shape[:-1], b.shape[:-1])):
        raise ShapeError(f"skip_gate: a {list(a.shape)} and b {list(b.shape)} must have the same row dims (rank >= 2)")
    if pos.dtype not in (DType.i64, DType.i32) or pos.rank > a.rank - 1:
        raise ShapeError(f"skip_gate: pos must be integer positions broadcasting to {list(a.shape[:-1])}")
    k = WEIGHTED.get(attrs["kind"])
    if (k is not None) != (len(types) == 4):
        raise ShapeError(f"skip_gate: the kinds {list(WEIGHTED)} take a weight operand w; the others take none")
    if k is not None and (types[3].rank != 1 or not dims_equal(types[3].shape[0], k * a.shape[-1])):
        raise ShapeError(f"skip_gate: w {list(types[3].shape)} must be [{k} x {a.shape[-1]}] for kind {attrs['kind']!r}")
    return [TensorType((sym(attrs["count"]),), DType.i64)]


def _skip_keep(a, b, pos, w=None, *, kind, bias, threshold, warmup):
    score = gate_scores(kind, a, b, w, bias)
    keep = (score >= threshold) | (pos.expand(score.shape) < warmup)
    return keep.to(a.dtype).unsqueeze(-1)


def _skip_keep_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    _skip_gate_infer(types, {**attrs, "count": "k"})  # the same operand checks
    return [TensorType(types[0].shape[:-1] + (1,), types[0].dtype)]


def _row_keep(x, keep):
    return x * keep.to(x.dtype)


def _row_keep_infer(types, attrs):
    x, keep = types
    if keep.rank != x.rank or keep.shape[-1] != 1 or not all(dims_equal(a, b) for a, b in zip(x.shape[:-1], keep.shape[:-1])):
        raise ShapeError(f"row_keep: keep {list(keep.shape)} must be x's row dims + [1], x is {list(x.shape)}")
    return [x]


def _gather_rows(x, idx):
    return x.reshape(-1, x.shape[-1]).index_select(0, idx)


def _gather_rows_infer(types, attrs):
    x, idx = types
    if idx.rank != 1 or idx.dtype not in (DType.i64, DType.i32):
        raise ShapeError(f"gather_rows: idx must be integer [k], got {idx.dtype}{list(idx.shape)}")
    return [TensorType((idx.shape[0], x.shape[-1]), x.dtype)]


def _scatter_add_rows(r, y, idx):
    out = r.reshape(-1, r.shape[-1]).clone()
    out.index_add_(0, idx, y.to(r.dtype))
    return out.reshape(r.shape)


def _scatter_add_rows_infer(types, attrs):
    r, y, idx = types
    if y.rank != 2 or not dims_equal(y.shape[-1], r.shape[-1]) or not dims_equal(y.shape[0], idx.shape[0]):
        raise ShapeError(f"scatter_add_rows: y {list(y.shape)} must be [k, {r.shape[-1]}] with k = len(idx) {list(idx.shape)}")
    return [r]


def _skip_count(x, idx=None):
    rows = x.numel() // max(x.shape[-1], 1)
    if idx is not None and idx.is_floating_point():  # the decode form's flags: counted on the device, no sync
        return torch.stack([torch.full((), rows, dtype=torch.int64, device=x.device),
                            rows - (idx != 0).sum().to(torch.int64)])
    skipped = 0 if idx is None else rows - idx.shape[0]
    return torch.tensor([rows, skipped], dtype=torch.int64, device=x.device)


def _skip_counts(*counts, sites):
    return torch.stack(counts)


def _skip_counts_infer(types, attrs):
    if len(types) != len(attrs["sites"]) or any(t.rank != 1 or t.shape[0] != 2 for t in types):
        raise ShapeError(f"skip_counts: takes one i64[2] count per site ({len(attrs['sites'])} sites), got {len(types)}")
    return [TensorType((len(types), 2), DType.i64)]


_TAGS = frozenset({DATA_DEPENDENT})
register(OpDef("skip_gate", (3, 4), {"kind": REQUIRED, "bias": 0.0, "threshold": REQUIRED, "warmup": 0, "count": REQUIRED},
               _skip_gate_infer, _skip_gate, "skip", "skip_gate(a, b, pos, [w]): indices of the rows that keep their FFN",
               tags=_TAGS))
register(OpDef("skip_keep", (3, 4), {"kind": REQUIRED, "bias": 0.0, "threshold": REQUIRED, "warmup": 0},
               _skip_keep_infer, _skip_keep, "skip", "skip_keep(a, b, pos, [w]) -> [..., 1]: 1 where the row keeps its FFN"))
register(OpDef("row_keep", (2, 2), {}, _row_keep_infer, _row_keep, "pointwise",
               "row_keep(x[..., F], keep[..., 1]) -> x * keep: the rows the gate skips are zero", kernel="pointwise"))
register(OpDef("gather_rows", (2, 2), {}, _gather_rows_infer, _gather_rows, "skip",
               "gather_rows(x[..., D], idx[k]) -> [k, D]"))
register(OpDef("scatter_add_rows", (3, 3), {}, _scatter_add_rows_infer, _scatter_add_rows, "skip",
               "scatter_add_rows(r[..., D], y[k, D], idx[k]): r with y added at rows idx"))
register(OpDef("skip_count", (1, 2), {}, lambda types, attrs: [TensorType((2,), DType.i64)], _skip_count, "skip",
               "skip_count(x[..., D], [idx | keep]) -> i64[2]: (rows of x, rows not in idx / with keep 0)"))
register(OpDef("skip_counts", (1, None), {"sites": REQUIRED}, _skip_counts_infer, _skip_counts, "skip",
               "skip_counts(count_0, ..., count_{L-1}) {sites} -> i64[L, 2]: (rows, skipped) per FFN block"))


def data_dependent_symbols(graph: Any) -> dict[str, tuple[Any, int]]:
    """Symbol name -> (value, axis) for every dim defined by a DATA_DEPENDENT op's result."""
    out: dict[str, tuple[Any, int]] = {}
    for op in graph.ops:
        if DATA_DEPENDENT not in op.opdef.tags:
            continue
        for r in op.results:
            for axis, d in enumerate(r.type.shape):
                if isinstance(d, sympy.Symbol):
                    out.setdefault(str(d), (r, axis))
    return out
