"""The `kv_cache` pass: K (after RoPE) and V are stored in a compressed KV-cache format.

- A decode step (`fxforge.compile_decoder`: the caches are graph inputs written by `cache_write`):
  the cache itself becomes the packed storage. Its input is retyped to uint8 rows [B, H_kv, L,
  row_bytes] (`kv_ops.kv_row_layout`), the writes get the format (they encode `new`), and attention
  reads the cache through `kv_load` (decode) instead of the full-precision values.
- Any other graph (teacher-forced evaluation, `compile_aot`): K and V are quantize-dequantized where a
  cache would store them (`kv_quant`), so evaluating the graph measures what the format costs.

Options (`CompileConfig.kv_cache` / `kv_block` -> "kv_cache.format" / "kv_cache.block"):
    "kv_cache.format"  bfp4 | bfp8 | fp8 | int8 (None: off)
    "kv_cache.block"   16 | 32 | 64 elements per shared scale along head_dim (default 32)

Statistics: per attention site (layer index) storage ("packed" cache or "kv_quant"), heads_kv, head_dim, bytes per token (K + V, measured
from `pack_kv` of one token's K and V, i.e. the stored codes and scales), and the totals
`bytes_per_token` (all layers) beside `bytes_per_token_fp16`.

Decisions:
- The ops go where the cache would write: before the GQA head repeat (`attention_sites`).
- A block that does not divide head_dim is a ConfigError naming both sizes (no padding: a padded
  head would change the cache's layout for every other reader).
- The storage itself (a preallocated cache written in place) is the decode runtime's
  (`runtime/generate.py` allocates it from the retyped inputs); the kernels encode a row where they
  write it and decode it inside attention (`codegen/templates/rope_cache.py`, `kv_attention.py`).
- A decode-step cache is packed only when both of its attention's K and V are `cache_write` results of
  graph inputs read by nothing else; a partly matching graph keeps `kv_quant` (same numbers, dense storage).
"""

from __future__ import annotations

from typing import Any

import torch

from fxforge.errors import ConfigError
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Value
from fxforge.ir.kv_ops import KV_BLOCKS, kv_options_problem, kv_row_layout, pack_kv
from fxforge.ir.types import TensorType
from fxforge.passes.attention_sites import AttentionSite, attention_sites, replace_use
from fxforge.passes.manager import PassContext

DEFAULT_BLOCK = 32


def token_bytes(site: AttentionSite, fmt: str, block: int) -> int:
    """Bytes one token's K and V take in the cache of this attention, measured from the packed form."""
    dims = (site.head_dim, site.v_head_dim)
    return sum(pack_kv(torch.zeros(1, site.kv_heads, 1, d), fmt, block).nbytes for d in dims)


def _cache_writes(graph: Graph, site: AttentionSite) -> list | None:
    """The two dense `cache_write`s of graph-input caches that K and V of this site are, else None."""
    inputs = {id(v) for v in graph.inputs}
    cws = [v.producer for v in (site.k, site.v)]
    if any(cw is None or cw.opcode != "cache_write" or cw.attrs["format"] != "dense" or cw.attrs["dim"] % 4 != 2
           or id(cw.operands[0]) not in inputs or len(cw.operands[0].uses) != 1 for cw in cws):
        return None
    return cws


def _pack(graph: Graph, cw: Any, fmt: str, block: int) -> Value:
    """Make this cache_write's cache the packed storage; returns the kv_load that attention reads."""
    cache = cw.operands[0]
    b, h, length, d = cache.type.shape
    dtype = cache.type.dtype
    cache.type = TensorType((b, h, length, kv_row_layout(fmt, block, d)[1]), DType.u8)
    cw.attrs.update(format=fmt, block=block)
    cw.result.type = cache.type
    readers = list(cw.result.uses)
    first = min(readers, key=graph.ops.index)
    load = graph.insert_before(first, "kv_load", [cw.result],
                               {"format": fmt, "block": block, "head_dim": d, "dtype": dtype},
                               name=f"{cw.result.name}_load")
    for reader in readers:
        replace_use(graph, reader, cw.result, load.result)
    return load.result


def apply_kv_cache(graph: Graph, fmt: str, block: int) -> dict[str, Any]:
    """Pack the decode step's caches, or insert the kv_quant ops, in place; returns the statistics."""
    sites = attention_sites(graph)
    for site, d in ((s, d) for s in sites for d in {s.head_dim, s.v_head_dim}):
        if d % block:
            raise ConfigError(f"kv_block={block} does not divide head_dim {d} (attention {site.index}); "
                              f"use a kv_block that divides it ({[b for b in KV_BLOCKS if d % b == 0]})")
    layers = {}
    for site in sites:
        cws = _cache_writes(graph, site)
        if cws is not None:
            for cw in cws:
                _pack(graph, cw, fmt, block)
        else:
            for value, reader in ((site.k, site.k_reader), (site.v, site.v_reader)):
                q = graph.insert_before(reader, "kv_quant", [value], {"format": fmt, "block": block},
                                        name=f"{value.name}_cached")
                replace_use(graph, reader, value, q.result)
        fp16 = 2 * site.kv_heads * (site.head_dim + site.v_head_dim)
        layers[str(site.index)] = {"storage": "packed" if cws is not None else "kv_quant",
                                   "heads_kv": site.kv_heads, "head_dim": site.head_dim,
                                   "bytes_per_token": token_bytes(site, fmt, block), "bytes_per_token_fp16": fp16}
    return {"format": fmt, "block": block, "attention_sites": len(sites), "layers": layers,
            "bytes_per_token": sum(v["bytes_per_token"] for v in layers.values()),
            "bytes_per_token_fp16": sum(v["bytes_per_token_fp16"] for v in layers.values())}


class KVCache:
    """Off unless "kv_cache.format" is set; stats: see `apply_kv_cache`."""

    name = "kv_cache"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        fmt, block = ctx.option("kv_cache.format"), ctx.option("kv_cache.block", DEFAULT_BLOCK)
        problem = kv_options_problem(fmt, block)
        if problem:
            raise ConfigError(problem)
        if fmt is None:
            ctx.stats["enabled"] = False
            return graph
        ctx.stats.update(apply_kv_cache(graph, fmt, block))
        if not ctx.stats["attention_sites"]:
            ctx.stats["note"] = "no attention op with [b, heads, s, head_dim] operands: nothing to compress"
        return graph
