"""The `ksort` pass: per KV head, a permutation of K's channels (and the same on its query heads' channels,
so q·kᵀ is unchanged) chosen on calibration data to minimise the attention-logit error of the quantized
K cache: the outlier problem of block formats (one large channel crushes its block's small ones) is
solved by choosing which channels share a block.

Options (`CompileConfig.k_sort` / `kv_cache` / `kv_block` -> "ksort.mode" / "ksort.format" / "ksort.block"):
    "ksort.mode"    "off" | "on" (apply the searched permutation) | "auto" (apply it per head only where
                    the calibrated error drops; the default)
    "ksort.format"  the KV format whose error is minimised (default bfp4); "ksort.block" its block (16)

Objective, per KV head h on calibration tokens: E(P) = ||Q_h (K_h - deq_P(K_h))ᵀ||² / ||Q_h K_hᵀ||²,
deq_P = quantize-dequantize K with its channels in order P (`kv_ops`), Q_h the rows of every query
head of h's GQA group. Search (`search_perm`): candidates identity, channels sorted by RMS, and the
outliers' block filled with the channels least important to the logits (`outlier_block_order`); from the
best, swaps of two channels in different blocks are tried in order of the largest-RMS channel's block
(a budget of `MOVES` evaluations), kept when E drops. So it is a local search on the error itself,
never sorting alone (sorting puts the largest ordinary channels into the outlier block).

Decisions:
- The permutation is applied AFTER RoPE, as a channel gather on K (before the cache write) and on Q
  (`_permute_heads`: permute -> reshape -> index_select -> reshape -> permute, views plus one gather).
  Folding it into W_k / W_q rows instead would need rotate_half pairs (i, i + d/2) to move together
  and the RoPE cos/sin tables gathered per head; and with a block of head_dim / 2 (e.g. 16 of 32) a
  pair-preserving permutation cannot change which block any channel is in, so it could not help at
  all. After RoPE the permutation is free, exact (a gather moves values, no arithmetic), and needs no
  RoPE: so models without RoPE or without separate q/k projections are handled too (`rope` in the
  report says which).
- Without calibration data the pass is skipped with a note (the objective needs K and Q statistics).
- Report: per layer (attention index) and KV head, `error_off` (identity), `error_on` (the searched
  permutation) and `kept`; auto keeps a head's permutation only when error_on < error_off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fxforge.errors import ConfigError
from fxforge.ir.evaluate import evaluate
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.kv_ops import KSORT_MODES, KV_BLOCKS, KV_FORMATS, kv_quant_ref
from fxforge.passes.attention_sites import AttentionSite, attention_sites, replace_use
from fxforge.passes.manager import PassContext

MODES = KSORT_MODES
MOVES = 160  # swap evaluations per head
OUTLIER = 3.0  # a channel whose RMS exceeds this many times the median is an outlier
MAX_ROWS = 256  # calibration rows of K and of Q per head


def logit_error(q: Tensor, k: Tensor, perm: Tensor, fmt: str, block: int) -> float:
    """Relative attention-logit error of K quantized with its channels in order `perm`."""
    kq = kv_quant_ref(k[:, perm], format=fmt, block=block)[:, torch.argsort(perm)]
    ref = q @ k.T
    return float(((q @ (k - kq).T).norm() / ref.norm().clamp_min(1e-30)) ** 2)


def outlier_block_order(q: Tensor, k: Tensor, block: int) -> Tensor:
    """Channels with RMS > OUTLIER x the median go first, their block filled with the channels that
    matter least to the logits (smallest E[(q_c k_c)^2]); the rest by decreasing RMS."""
    rms = k.pow(2).mean(0).sqrt()
    order = torch.argsort(rms, descending=True)
    n_out = int((rms > OUTLIER * rms.median()).sum())
    if n_out == 0:
        return order
    outliers = order[:n_out]
    fill = block - n_out % block if n_out % block else 0
    rest = order[n_out:]
    importance = (q[:, rest].pow(2).mean(0) * k[:, rest].pow(2).mean(0))
    least = rest[torch.argsort(importance)[:fill]]
    others = rest[~torch.isin(rest, least)]
    return torch.cat([outliers, least, others])


def search_perm(q: Tensor, k: Tensor, fmt: str, block: int, start_identity: bool = True) -> tuple[Tensor, float]:
    """(best permutation found, its error) by the local search of the module docstring."""
    d = k.shape[1]
    rms = k.pow(2).mean(0).sqrt()
    cands = [torch.argsort(rms, descending=True), outlier_block_order(q, k, block)]
    cands += [torch.arange(d)] if start_identity else []
    scored = [(logit_error(q, k, p, fmt, block), p) for p in cands]
    err, perm = min(scored, key=lambda t: t[0])
    gen = torch.Generator().manual_seed(0)
    for _ in range(MOVES):
        a, b = torch.randint(0, d, (2,), generator=gen).tolist()
        if a // block == b // block:
            continue
        trial = perm.clone()
        trial[a], trial[b] = perm[b], perm[a]
        e = logit_error(q, k, trial, fmt, block)
        if e < err:
            err, perm = e, trial
    return perm, err


def _collect(graph: Graph, sites: list[AttentionSite], calibration: list) -> dict[int, tuple[Tensor, Tensor]]:
    """Per site: (Q rows [heads, n, D], K rows [kv_heads, n, D]) from the calibration inputs, float32."""
    want = {id(s.q): ("q", s.index) for s in sites} | {id(s.k): ("k", s.index) for s in sites}
    got: dict[tuple[str, int], list[Tensor]] = {}

    def observe(op: Op, outs: list[Tensor]) -> None:
        for r, t in zip(op.results, outs):
            if id(r) in want:
                got.setdefault(want[id(r)], []).append(t.detach().float().transpose(0, 1).reshape(t.shape[1], -1, t.shape[3]))

    for args in calibration:
        evaluate(graph, list(args), observe)
    out = {}
    for s in sites:
        q = torch.cat(got[("q", s.index)], 1)[:, :MAX_ROWS]
        k = torch.cat(got[("k", s.index)], 1)[:, :MAX_ROWS]
        out[s.index] = (q, k)
    return out


def _permute_heads(graph: Graph, value: Value, reader: Op, perms: Tensor, name: str) -> None:
    """Insert value[:, h, :, perms[h]] before `reader` (which then reads it); perms: [heads, D]."""
    b, h, s, d = value.type.shape
    idx = (perms + torch.arange(h).unsqueeze(1) * d).reshape(-1).to(torch.int64)
    wname = graph.add_weight(graph.fresh_name(f"{name}_ksort_idx"), idx)
    ops = [("permute", {"dims": [0, 2, 1, 3]}), ("reshape", {"shape": [b, s, h * d]})]
    cur = value
    for opcode, attrs in ops:
        cur = graph.insert_before(reader, opcode, [cur], attrs).result
    const = graph.insert_before(reader, "const", [], {"weight": wname}).result
    cur = graph.insert_before(reader, "index_select", [cur, const], {"dim": 2}).result
    cur = graph.insert_before(reader, "reshape", [cur], {"shape": [b, s, h, d]}).result
    cur = graph.insert_before(reader, "permute", [cur], {"dims": [0, 2, 1, 3]}, name=f"{name}_ksorted").result
    replace_use(graph, reader, value, cur)


def ksort_graph(graph: Graph, mode: str, fmt: str, block: int, calibration: list | None) -> dict[str, Any]:
    """Choose and apply the permutations in place; returns the report."""
    sites = attention_sites(graph)
    if mode == "off" or not sites:
        return {"mode": mode, "note": "off" if mode == "off" else "no attention sites"}
    if not calibration:
        return {"mode": mode, "note": "skipped: k_sort needs calibration data (calibration=[...])"}
    stats = _collect(graph, sites, calibration)
    layers: dict[str, Any] = {}
    for site in sites:
        if site.head_dim % block or site.head_dim == block:
            layers[str(site.index)] = {"note": f"block {block} vs head_dim {site.head_dim}: one block per head, nothing to sort"}
            continue
        q_all, k_all = stats[site.index]
        group = site.heads // site.kv_heads
        perms, heads = [], {}
        for h in range(site.kv_heads):
            q, k = q_all[h * group:(h + 1) * group].reshape(-1, site.head_dim), k_all[h]
            off = logit_error(q, k, torch.arange(site.head_dim), fmt, block)
            perm, on = search_perm(q, k, fmt, block, start_identity=mode == "auto")
            kept = mode == "on" or on < off
            perms.append(perm if kept else torch.arange(site.head_dim))
            heads[str(h)] = {"error_off": off, "error_on": on, "kept": kept}
        layers[str(site.index)] = {"rope": site.rope, "heads": heads}
        if any(v["kept"] for v in heads.values()):
            pk = torch.stack(perms)
            _permute_heads(graph, site.k, site.k_reader, pk, f"k{site.index}")
            _permute_heads(graph, site.q, site.op, pk.repeat_interleave(group, 0), f"q{site.index}")
    return {"mode": mode, "format": fmt, "block": block, "layers": layers}


class KSort:
    """Off unless "ksort.mode" is "on" or "auto"; stats: see `ksort_graph`."""

    name = "ksort"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        mode = ctx.option("ksort.mode", "off")
        fmt, block = ctx.option("ksort.format") or "bfp4", ctx.option("ksort.block") or 16
        if mode not in MODES or fmt not in KV_FORMATS or block not in KV_BLOCKS:
            raise ConfigError(f"k_sort={mode!r} (one of {MODES}) with format {fmt!r} ({KV_FORMATS}) and block "
                              f"{block!r} ({KV_BLOCKS})")
        ctx.stats.update(ksort_graph(graph, mode, fmt, block, ctx.calibration))
        return graph
