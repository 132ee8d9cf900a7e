"""The ops of fxforge's static KV cache (issues #13, #12): the in-place write and the read of a packed cache.

- `cache_write(cache, pos[T], new[B, H, T, D]) {dim=2, format="dense", block=32}` -> cache's type:
  writes `new` into `cache` at the positions `pos` along `dim`, IN PLACE, and returns `cache` itself
  (the same storage). Later reads of the cache read this result, so "write, then attend" is a data
  dependency. Dense: cache [B, H, L, D] of any float dtype. A KV format (`kv_ops.KV_FORMATS`): cache
  is uint8 [B, H, L, row_bytes] and each token's row is `pack_kv_rows(new, format, block)`.
- `kv_load(cache) {format, block, head_dim, dtype}` -> dtype[B, H, L, head_dim]: the values a packed
  cache holds (`unpack_kv_rows`), what attention reads in a decode step compiled with a kv_cache format.

Decisions:
- In place on purpose: the cache is a preallocated run-time input (one per batch bucket and max
  length, owned by `runtime/generate.py`), written where it lies, never copied (a functional
  `index_copy` copies the whole cache every step). So the op is not `pure` (never dropped or merged)
  and `aliases` (buffer planning keeps the storage: the result is the input).
- The frontend maps `aten.index_copy_` on a graph input to it and rebinds that input to the result
  (`frontend/aten_cache.py`); only capture paths that own the cache (`frontend/kv_capture.py`) let such
  writes through, `compile_aot` still refuses a forward that writes its inputs.
- Compressed formats are the storage itself, not a quantize-dequantize of a full-precision cache: the
  `kv_cache` pass retypes a decode step's cache inputs to the packed rows, gives the writes their
  format and reads them through `kv_load` (`passes/kv_cache.py`). The kernels encode rows where they
  write (`templates/rope_cache.py`) and decode them where attention reads (`templates/kv_attention.py`);
  these two ops are their reference semantics, bit for bit.
- `kv_load` is pure (it reads the cache result, so it runs after the write): a graph that never
  fuses it (the reference executor) decodes the whole cache, which is what the semantics say.
"""

from __future__ import annotations

from fxforge.ir.dtypes import DType
from fxforge.ir.errors import ShapeError
from fxforge.ir.kv_ops import KV_BLOCKS, KV_FORMATS, kv_row_layout, pack_kv_rows, unpack_kv_rows
from fxforge.ir.ops import REQUIRED, OpDef, register
from fxforge.ir.types import TensorType, dims_equal

CACHE_FORMATS = ("dense", *KV_FORMATS)


def _cache_write(cache, pos, new, dim=2, format="dense", block=32):
    rows = new.to(cache.dtype) if format == "dense" else pack_kv_rows(new, format, block)
    cache.index_copy_(dim, pos, rows)
    return cache


def _row_problem(fmt: str, block: int, d: object) -> str | None:
    """Why (format, block, head_dim d) is no packed row layout, or None."""
    if block not in KV_BLOCKS or (isinstance(d, int) and d % block):
        return f"block {block} must be one of {KV_BLOCKS} and divide head_dim {d}"
    return None


def _cache_write_infer(types, attrs):
    cache, pos, new = types
    fmt, block = attrs["format"], attrs["block"]
    dim = attrs["dim"] % max(cache.rank, 1)
    if fmt not in CACHE_FORMATS:
        raise ShapeError(f"cache_write: format {fmt!r} is not one of {CACHE_FORMATS}")
    if pos.rank != 1 or pos.dtype not in (DType.i64, DType.i32):
        raise ShapeError(f"cache_write: pos must be integer [T], got {pos.dtype}{list(pos.shape)}")
    last = cache.rank - 1
    if new.rank != cache.rank or not dims_equal(new.shape[dim], pos.shape[0]) or any(
            not dims_equal(a, b) for i, (a, b) in enumerate(zip(new.shape, cache.shape))
            if i != dim and (fmt == "dense" or i != last)):
        raise ShapeError(f"cache_write: new {list(new.shape)} must be cache {list(cache.shape)} with dim {dim} = len(pos)")
    if fmt != "dense":
        d = new.shape[-1]
        problem = _row_problem(fmt, block, d) or (None if new.dtype.is_float else f"new must be float, got {new.dtype}")
        if problem is None and isinstance(d, int):
            want = kv_row_layout(fmt, block, d)[1]
            if cache.dtype != DType.u8 or not dims_equal(cache.shape[-1], want) or dim == last:
                problem = f"a {fmt} cache of head_dim {d} is u8[..., {want}] (one packed row per token), got {cache.dtype}{list(cache.shape)}"
        if problem:
            raise ShapeError(f"cache_write: {problem}")
    return [cache]


def _kv_load(cache, format, block, head_dim, dtype):
    return unpack_kv_rows(cache, format, block, head_dim, dtype.torch)


def _kv_load_infer(types, attrs):
    (cache,) = types
    fmt, block, d = attrs["format"], attrs["block"], attrs["head_dim"]
    if fmt not in KV_FORMATS:
        raise ShapeError(f"kv_load: format {fmt!r} is not one of {KV_FORMATS}")
    problem = _row_problem(fmt, block, d)
    if problem is None and (cache.dtype != DType.u8 or cache.rank < 1
                            or not dims_equal(cache.shape[-1], kv_row_layout(fmt, block, d)[1])):
        problem = f"the cache must be u8[..., {kv_row_layout(fmt, block, d)[1]}], got {cache.dtype}{list(cache.shape)}"
    if problem is None and not attrs["dtype"].is_float:
        problem = f"dtype must be a float type, got {attrs['dtype']}"
    if problem:
        raise ShapeError(f"kv_load: {problem}")
    return [TensorType((*cache.shape[:-1], d), attrs["dtype"])]


register(OpDef("cache_write", (3, 3), {"dim": 2, "format": "dense", "block": 32}, _cache_write_infer, _cache_write,
               "cache", doc="cache_write(cache, pos, new) {dim, format, block}: write new (packed rows for a KV "
               "format) at pos along dim, in place", pure=False, deterministic=False, aliases=True))
register(OpDef("kv_load", (1, 1), {"format": REQUIRED, "block": REQUIRED, "head_dim": REQUIRED, "dtype": REQUIRED},
               _kv_load_infer, _kv_load, "cache",
               doc="kv_load(cache) {format, block, head_dim, dtype}: the values of a packed KV cache [.., L, head_dim]"))
