"""The op that writes fxforge's static KV cache in place (issue #13).

- `cache_write(cache[B, H, L, D], pos[T], new[B, H, T, D]) {dim=2}` -> cache's type: writes `new` into
  `cache` at the positions `pos` along `dim`, IN PLACE, and returns `cache` itself (the same storage).
  Later reads of the cache read this result, so the order "write, then attend" is a data dependency.

Decisions:
- In place on purpose: the cache is a preallocated run-time input (one per batch bucket and max
  length, owned by `runtime/generate.py`), written where it lies, never copied (a functional
  `index_copy` copies the whole cache every step). So the op is not `pure` (never dropped or merged)
  and `aliases` (buffer planning keeps the storage: the result is the input).
- The frontend maps `aten.index_copy_` on a graph input to it and rebinds that input to the result
  (`frontend/aten_cache.py`); only capture paths that own the cache (`frontend/kv_capture.py`) let such
  writes through, `compile_aot` still refuses a forward that writes its inputs.
- The hook for compressed cache formats (#12, `ir/kv_ops.py`): a format encodes `new` before this
  write and decodes the cache after it; the op itself knows nothing of formats (`format` attribute
  reserved, "dense" only for now).
"""

from __future__ import annotations

from fxforge.ir.dtypes import DType
from fxforge.ir.errors import ShapeError
from fxforge.ir.ops import OpDef, register
from fxforge.ir.types import dims_equal

CACHE_FORMATS = ("dense",)


def _cache_write(cache, pos, new, dim=2, format="dense"):
    cache.index_copy_(dim, pos, new.to(cache.dtype))
    return cache


def _cache_write_infer(types, attrs):
    cache, pos, new = types
    dim = attrs["dim"] % max(cache.rank, 1)
    if attrs["format"] not in CACHE_FORMATS:
        raise ShapeError(f"cache_write: format {attrs['format']!r} is not one of {CACHE_FORMATS}")
    if pos.rank != 1 or pos.dtype not in (DType.i64, DType.i32):
        raise ShapeError(f"cache_write: pos must be integer [T], got {pos.dtype}{list(pos.shape)}")
    if new.rank != cache.rank or not dims_equal(new.shape[dim], pos.shape[0]) or any(
            not dims_equal(a, b) for i, (a, b) in enumerate(zip(new.shape, cache.shape)) if i != dim):
        raise ShapeError(f"cache_write: new {list(new.shape)} must be cache {list(cache.shape)} with dim {dim} = len(pos)")
    return [cache]


register(OpDef("cache_write", (3, 3), {"dim": 2, "format": "dense"}, _cache_write_infer, _cache_write, "cache",
               doc="cache_write(cache, pos, new) {dim, format}: write new at pos along dim, in place",
               pure=False, deterministic=False, aliases=True))
