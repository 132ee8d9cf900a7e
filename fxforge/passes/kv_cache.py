"""The `kv_cache` pass: K (after RoPE) and V are quantize-dequantized exactly as a compressed KV cache
stores them (`kv_quant` ops of `fxforge.ir.kv_ops`), so teacher-forced evaluation of the compiled
graph measures what the compressed cache costs in accuracy.

Options (`CompileConfig.kv_cache` / `kv_block` -> "kv_cache.format" / "kv_cache.block"):
    "kv_cache.format"  bfp4 | bfp8 | fp8 | int8 (None: off)
    "kv_cache.block"   16 | 32 | 64 elements per shared scale along head_dim (default 32)

Statistics: per attention site (layer index) heads_kv, head_dim, bytes per token (K + V, measured
from `pack_kv` of one token's K and V, i.e. the stored codes and scales), and the totals
`bytes_per_token` (all layers) beside `bytes_per_token_fp16`.

Decisions:
- The ops go where the cache would write: before the GQA head repeat (`attention_sites`).
- A block that does not divide head_dim is a ConfigError naming both sizes (no padding: a padded
  head would change the cache's layout for every other reader).
- The storage itself (a preallocated cache written in place) is the decode runtime's (issue #13):
  it stores `pack_kv`'s layout and reads it back with `codegen.templates.kv_cache.kv_dequant`.
"""

from __future__ import annotations

from typing import Any

import torch

from fxforge.errors import ConfigError
from fxforge.ir.graph import Graph
from fxforge.ir.kv_ops import KV_BLOCKS, kv_options_problem, pack_kv
from fxforge.passes.attention_sites import AttentionSite, attention_sites, replace_use
from fxforge.passes.manager import PassContext

DEFAULT_BLOCK = 32


def token_bytes(site: AttentionSite, fmt: str, block: int) -> int:
    """Bytes one token's K and V take in the cache of this attention, measured from the packed form."""
    one = torch.zeros(1, site.kv_heads, 1, site.head_dim)
    return 2 * pack_kv(one, fmt, block).nbytes


def apply_kv_cache(graph: Graph, fmt: str, block: int) -> dict[str, Any]:
    """Insert the kv_quant ops in place; returns the statistics."""
    sites = attention_sites(graph)
    for site in sites:
        if site.head_dim % block:
            raise ConfigError(f"kv_block={block} does not divide head_dim {site.head_dim} (attention {site.index}); "
                              f"use a kv_block that divides it ({[b for b in KV_BLOCKS if site.head_dim % b == 0]})")
    layers = {}
    for site in sites:
        for value, reader in ((site.k, site.k_reader), (site.v, site.v_reader)):
            q = graph.insert_before(reader, "kv_quant", [value], {"format": fmt, "block": block},
                                    name=f"{value.name}_cached")
            replace_use(graph, reader, value, q.result)
        fp16 = 2 * 2 * site.kv_heads * site.head_dim
        layers[str(site.index)] = {"heads_kv": site.kv_heads, "head_dim": site.head_dim,
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
