"""Canonicalization rules for heads taken out of a fused projection after its head split (Falcon-7B's attention):

    v = reshape(qkv [B, S, (Hq + 2) * D], [B, S, Hq + 2, D])
    q = v[:, :, :Hq];  k = v[:, :, [Hq]];  v = v[:, :, [Hq + 1]]   (the frontend lowers one constant index to a slice)

- `slice_before_split`: `slice(reshape(x [*lead, H * D], [*lead, H, D]), dim -2, a, b)` ->
  `reshape(slice(x, -1, a * D, b * D), [*lead, b - a, D])`: heads a..b of the split are that column range of x. The
  rope_cache site (`rope_sites.py`) then sees its three column slices of the QKV GEMM.
- `slice_before_unsqueeze`: the same for a slice along the last dim of a reshape that only adds unit dims.

Decisions: the reshape must only split x's last dim into (H, D) (leading dims unchanged, both static), the slice
step 1; otherwise the heads are not one column range and nothing changes. x must be a projection's output (a GEMM's):
other slices of views keep their form (the RoPE tables' halves, which `rope_forms` reads as they are).
"""

from __future__ import annotations

from fxforge.ir.graph import Graph, Op, Value
from fxforge.passes.rewriter import P, Rule, dims_match, rule


def _columns(g: Graph, op: Op, x: Value, start: int, end: int) -> Value:
    """reshape(x[..., start:end], op's shape): the replacement of a slice of a reshape of x."""
    cols = g.insert_before(op, "slice", [x], {"dim": x.type.rank - 1, "start": start, "end": end, "step": 1}).result
    return g.insert_before(op, "reshape", [cols], {"shape": tuple(op.result.type.shape)}).result


def _projection(v: Value) -> bool:
    return v.producer is not None and v.producer.opcode in ("linear", "qlinear", "matmul")


def _int(*dims) -> bool:
    return all(isinstance(n, int) for n in dims)


@rule(P.op("slice", P.op("reshape", P.any("x", check=_projection), name="split")))
def slice_before_split(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    x, split = b["x"], b["split"].producer
    shape, rank = split.result.type.shape, split.result.type.rank
    h, d = shape[-2:] if rank >= 2 else (None, None)
    if (op.attrs["dim"] % rank != rank - 2 or op.attrs["step"] != 1 or rank != x.type.rank + 1
            or not _int(h, d, op.attrs["start"], op.attrs["end"], x.type.shape[-1])
            or h * d != x.type.shape[-1] or not all(dims_match(a, c) for a, c in zip(shape[:-2], x.type.shape[:-1]))):
        return None
    return _columns(g, op, x, op.attrs["start"] * d, min(op.attrs["end"], h) * d)


def _without_ones(shape) -> list:
    return [n for n in shape if n != 1]


@rule(P.op("slice", P.op("reshape", P.any("x", check=_projection), name="unsqueezed")))
def slice_before_unsqueeze(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """`slice(reshape(x, x's shape with unit dims added), last dim)` -> reshape(slice(x, last dim)): GPTBigCode's
    q, k and v split off `c_attn(x).unsqueeze(1)`."""
    x, shape = b["x"], b["unsqueezed"].type.shape
    mine, theirs = _without_ones(shape), _without_ones(x.type.shape)
    if (op.attrs["dim"] % len(shape) != len(shape) - 1 or op.attrs["step"] != 1 or x.type.shape[-1] == 1
            or not dims_match(shape[-1], x.type.shape[-1]) or len(mine) != len(theirs)
            or not all(dims_match(a, c) for a, c in zip(mine, theirs))):
        return None
    return _columns(g, op, x, op.attrs["start"], op.attrs["end"])


HEAD_SPLIT_RULES: list[Rule] = [slice_before_split, slice_before_unsqueeze]
