"""Op table entries with several results: `topk`, `sort`, `var_mean`, `max_dim`, `min_dim`.

In the text form such an op names one value per result and one type per result:

    %vals, %idx = topk(%x) {k=4} : f32[s0, 4], i64[s0, 4]

Decisions: the result dtypes are those torch gives (found on meta tensors, as the single-result
entries do), and the references return plain tuples (not torch's named structseqs), so every
executor and the evaluator see one tensor per declared result. These ops run on the host (torch);
no fused kernel reads them.
"""

from __future__ import annotations

from typing import Any

import torch

from fxforge.ir.dtypes import DType
from fxforge.ir.errors import ShapeError
from fxforge.ir.ops import REQUIRED, OpDef, norm_axis, reduce_shape, register
from fxforge.ir.types import Dim, TensorType


def _replace_dim(shape: tuple[Dim, ...], dim: int, size: Dim) -> tuple[Dim, ...]:
    out = list(shape)
    out[norm_axis(dim, len(shape))] = size
    return tuple(out)


def _with_indices(shape: tuple[Dim, ...], x: TensorType) -> list[TensorType]:
    return [TensorType(shape, x.dtype), TensorType(shape, DType.i64)]


def _topk_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x, k = types[0], attrs["k"]
    if not isinstance(k, int) or k < 0:
        raise ShapeError(f"topk: k must be a non-negative int, got {k!r}")
    size = x.shape[norm_axis(attrs["dim"], x.rank)] if x.rank else 1
    if isinstance(size, int) and k > size:
        raise ShapeError(f"topk: k={k} is larger than dim {attrs['dim']} of {list(x.shape)}")
    return _with_indices(_replace_dim(x.shape, attrs["dim"], k) if x.rank else (), x)


def _topk(x: torch.Tensor, *, k: int, dim: int, largest: bool, sorted: bool) -> tuple:
    return tuple(torch.topk(x, k, dim, largest, sorted))


def _sort_infer(types, attrs):
    x = types[0]
    norm_axis(attrs["dim"], x.rank)
    return _with_indices(x.shape, x)


def _sort(x, *, dim, descending, stable):
    return tuple(torch.sort(x, dim=dim, descending=descending, stable=stable))


def _var_mean_infer(types, attrs):
    x = types[0]
    if not x.dtype.is_float:
        raise ShapeError(f"var_mean: needs a floating-point operand, got {x.dtype.ir_name}")
    shape = reduce_shape(x.shape, attrs["dims"], attrs["keepdim"])
    return [TensorType(shape, x.dtype), TensorType(shape, x.dtype)]


def _var_mean(x, *, dims, correction, keepdim):
    return tuple(torch.var_mean(x, None if dims is None else list(dims), correction=correction, keepdim=keepdim))


def _extreme_infer(types, attrs):
    x = types[0]
    return _with_indices(reduce_shape(x.shape, (attrs["dim"],), attrs["keepdim"]), x)


def _max_dim(x, *, dim, keepdim):
    return tuple(torch.max(x, dim, keepdim))


def _min_dim(x, *, dim, keepdim):
    return tuple(torch.min(x, dim, keepdim))


register(OpDef("topk", (1, 1), {"k": REQUIRED, "dim": -1, "largest": True, "sorted": True}, _topk_infer, _topk,
               "multi", "(values, indices) of the k largest (or smallest) along dim", num_results=2))
register(OpDef("sort", (1, 1), {"dim": -1, "descending": False, "stable": False}, _sort_infer, _sort,
               "multi", "(values, indices) sorted along dim", num_results=2))
register(OpDef("var_mean", (1, 1), {"dims": None, "correction": 1, "keepdim": False}, _var_mean_infer, _var_mean,
               "multi", "(variance, mean) over dims (all dims when none)", num_results=2))
register(OpDef("max_dim", (1, 1), {"dim": REQUIRED, "keepdim": False}, _extreme_infer, _max_dim,
               "multi", "(max values, their indices) along dim", num_results=2))
register(OpDef("min_dim", (1, 1), {"dim": REQUIRED, "keepdim": False}, _extreme_infer, _min_dim,
               "multi", "(min values, their indices) along dim", num_results=2))
