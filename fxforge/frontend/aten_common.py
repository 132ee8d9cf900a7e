"""What every ATen lowering module shares: the lowering signature, the decorator that files a
lowering into a module's table, overload lookup and torch's conventions (INT64_MAX ends, casts).

Decisions: each lowering module fills its own `TABLE` through `registrar(TABLE)`, and
`aten_table.py` merges the tables explicitly; so no lowering module imports another and no table
is filled as a side effect of importing some other module (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fxforge.frontend.builder import Builder, Unsupported
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Value

aten = torch.ops.aten
Lowering = Callable[..., Any]
Table = dict[Any, Lowering]
INT64_MAX = 2**63 - 1  # aten's "to the end" for slice bounds


def registrar(table: Table) -> Callable[..., Callable[[Lowering], Lowering]]:
    """A `@lowers(*targets)` decorator that files the decorated lowering into `table`."""

    def lowers(*targets: Any) -> Callable[[Lowering], Lowering]:
        def register(fn: Lowering) -> Lowering:
            for t in targets:
                table[t] = fn
            return fn

        return register

    return lowers


def overloads(name: str, *names: str) -> list:
    """The overloads of `aten.<name>` among `names` that this torch has."""
    packet = getattr(aten, name, None)
    return [getattr(packet, o) for o in names if packet is not None and hasattr(packet, o)]


def cast_to(b: Builder, x: Value, dtype: torch.dtype | None) -> Value:
    """x cast to dtype (x itself when it has that dtype already, or dtype is None)."""
    if dtype is None or DType.from_torch(dtype) == x.type.dtype:
        return x
    return b.op("cast", x, dtype=DType.from_torch(dtype))


def slice_value(b: Builder, x: Value, dim: int, start, end, step: int) -> Value:
    """x[start:end:step] along dim by torch's bounds conventions (None, negative, INT64_MAX ends); x if that is all."""
    dim %= x.type.rank
    size = x.type.shape[dim]
    start = 0 if start is None else start
    end = size if end is None or (isinstance(end, int) and end >= INT64_MAX // 2) else end
    if isinstance(start, int) and start < 0:
        start = start + size
    if isinstance(end, int) and end < 0:
        end = end + size
    if isinstance(size, int):  # Python's clamping: x[-4095:] of 5 rows is all 5 (a sliding-window cache's slice)
        start = min(max(start, 0), size) if isinstance(start, int) else start
        end = min(max(end, 0), size) if isinstance(end, int) else end
    if start == 0 and end == size and step == 1:
        return x
    return b.op("slice", x, dim=dim, start=start, end=end, step=step)


def slice_lowering(b: Builder, x: Value, dim: int = 0, start=None, end=None, step: int = 1) -> Value:
    """aten.slice.Tensor (the complex pairs' lowering calls it with the dim counted on the complex shape)."""
    if step == 1 and tuple(b.meta_shape()) == tuple(x.type.shape):
        return x  # torch's shapes (under dynamo's guards) say it takes the whole dim: x[-4095:] of s + 1 rows, s < 4095
    out = slice_value(b, x, dim, start, end, step)
    if out is not x and out.type.shape != b.meta_shape():
        raise Unsupported("slice bounds beyond the tensor")
    return out


__all__ = ["INT64_MAX", "Lowering", "Table", "Unsupported", "aten", "cast_to", "overloads", "registrar", "slice_lowering",
           "slice_value"]
