"""Pictures of block formats in the KV cache: K's per-channel magnitudes before and after the `ksort`
permutation with the blocks they fall in, the calibrated logit error with and without it (the pass's
report), and the bytes per token each KV-cache format stores (`ir.kv_ops`).

Decisions:
- K is read from the compiled graph itself: `k_channels` runs it (`ir.evaluate`) on the caller's
  calibration inputs and keeps the input of the channel gather `ksort` inserted before the cache write
  (the `index_select` reading the weight `k<layer>_ksort_idx`); the permutation is that weight. So the
  picture shows the permutation the kernels apply, not a recomputed one. Layers without a gather (k_sort
  off, or no head kept) are a ConfigError saying so.
- Bytes per format are measured like the `kv_cache` pass does (`pack_kv` of one token, K and V, per
  attention layer, from the heads and head_dim its record names), so every format can be compared from
  one compile; the format compiled is checked against the recorded figure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from fxforge.errors import ConfigError
from fxforge.inspect._common import figure, trace_of


def _record(source: Any, name: str, hint: str) -> dict[str, Any]:
    trace = trace_of(source)
    records = [r for r in getattr(trace, "records", []) if r.name == name]
    stats = records[-1].stats if records else {}
    if not stats.get("layers"):
        raise ConfigError(f"no {name} statistics in this compile ({stats.get('note', 'the pass did not run')}): {hint}")
    return stats


def _gather(graph: Any, layer: int) -> tuple[Any, torch.Tensor]:
    """(the value K is gathered from [b, s, heads * d], the permutation weight [heads * d])."""
    pattern = re.compile(rf"k{layer}_ksort_idx(_\d+)?")
    for op in graph.find("index_select"):
        const = op.operands[1].producer
        if const is not None and const.opcode == "const" and pattern.fullmatch(const.attrs["weight"]):
            return op.operands[0], graph.weights[const.attrs["weight"]].data
    raise ConfigError(f"attention layer {layer} has no K permutation in this graph: compile with kv_cache=..., "
                      "k_sort='on' (or 'auto', which keeps it only where it lowers the error) and calibration=[...]")


def k_channels(source: Any, calibration: Sequence[Any], layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """K of attention `layer` before its K-sort permutation, [kv_heads, tokens, head_dim] (float32, over
    the calibration inputs), and the permutation per KV head [kv_heads, head_dim] (position -> channel)."""
    from fxforge.ir.evaluate import evaluate

    graph = getattr(source, "graph", source)
    value, idx = _gather(graph, layer)
    heads_d = value.type.shape[-1]
    seen: list[torch.Tensor] = []

    def observe(op: Any, outs: list[torch.Tensor]) -> None:
        seen.extend(t for r, t in zip(op.results, outs) if r is value)

    for args in calibration:
        evaluate(graph, list(args) if isinstance(args, (list, tuple)) else [args], observe)
    heads = _heads(graph, layer, heads_d)
    d = heads_d // heads
    k = torch.cat([t.detach().float().reshape(-1, heads, d) for t in seen]).transpose(0, 1)
    perms = idx.reshape(heads, d) - torch.arange(heads).unsqueeze(1) * d
    return k, perms.to(torch.int64)


def _heads(graph: Any, layer: int, heads_d: int) -> int:
    """KV heads of the gather: its last reshape to [b, s, heads, d] says."""
    pattern = re.compile(rf"k{layer}_ksorted(_\d+)?")
    for op in graph.ops:
        if op.opcode == "permute" and op.results and pattern.fullmatch(op.result.name):
            return int(op.result.type.shape[1])
    raise ConfigError(f"attention layer {layer}: the K-sort gather has no k{layer}_ksorted result ({heads_d} channels)")


def _channel_bars(ax: Any, rms: torch.Tensor, blocks: torch.Tensor, block: int, title: str) -> None:
    """Bars of channel RMS, coloured by the (sorted) block each channel is stored in; lines at block edges."""
    ax.bar(range(len(rms)), rms.tolist(), width=0.9, color=[f"C{int(b) % 10}" for b in blocks])
    for edge in range(block, len(rms), block):
        ax.axvline(edge - 0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("K channel RMS")


def plot_ksort(source: Any, calibration: Sequence[Any], layer: int = 0, head: int = 0) -> Any:
    """Left: RMS of each K channel of one attention layer and KV head in the order the model computes them;
    middle: the same in the K-sorted order the cache stores. A bar's colour is the block it is stored in
    after sorting (dashed lines: block edges), so the left panel shows where each block's channels come
    from. Right: the calibrated attention-logit error per layer and KV head without / with the
    permutation (the `ksort` record; a hatched 'with' bar: not kept)."""
    stats = _record(source, "ksort", "compile with kv_cache=..., k_sort='auto' and calibration=[...]")
    block = int(stats["block"])
    k, perms = k_channels(source, calibration, layer)
    if not 0 <= head < k.shape[0]:
        raise ConfigError(f"head={head}: attention layer {layer} has {k.shape[0]} KV heads")
    rms = k[head].pow(2).mean(0).sqrt()
    perm = perms[head]
    stored_at = torch.argsort(perm)  # channel -> position in the cache
    err = stats["layers"][str(layer)]["heads"][str(head)]
    fig, axes = figure(1, 3, width=16, height=4.2)
    before, after, errors = axes[0]
    _channel_bars(before, rms, stored_at // block, block,
                  f"layer {layer} head {head}, computed order: {stats['format']} logit error {err['error_off']:.3g}")
    before.set_xlabel("channel (colour: its block after K-sort)")
    _channel_bars(after, rms[perm], torch.arange(len(perm)) // block, block,
                  f"K-sorted order (as cached): logit error {err['error_on']:.3g}")
    after.set_xlabel(f"position in the cache (blocks of {block})")
    _error_bars(errors, stats)
    return fig


def _error_bars(ax: Any, stats: dict[str, Any]) -> None:
    labels, off, on, kept = [], [], [], []
    for layer, rec in stats["layers"].items():
        for h, e in (rec.get("heads") or {}).items():
            labels.append(f"L{layer} h{h}")
            off.append(e["error_off"])
            on.append(e["error_on"])
            kept.append(e["kept"])
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], off, 0.4, label="computed order", color="C7")
    bars = ax.bar([x + 0.2 for x in xs], on, 0.4, label="K-sorted", color="C2")
    for bar, k in zip(bars, kept):
        if not k:
            bar.set_hatch("//")
    ax.set_xticks(list(xs), labels, rotation=45, fontsize=7)
    ax.set_ylabel("relative attention-logit error (calibration)")
    ax.set_title(f"{stats['format']} K cache, block {stats['block']}: error per layer and KV head", fontsize=9)
    ax.legend(fontsize=7)


def kv_bytes(source: Any, formats: Sequence[str] | None = None, block: int | None = None) -> dict[str, int]:
    """Bytes per token of the whole K+V cache (all attention layers) in each format, measured from the
    packed form of one token (`ir.kv_ops.pack_kv`), plus "fp16"; from the compile's `kv_cache` record."""
    from fxforge.ir.kv_ops import KV_FORMATS, pack_kv

    stats = _record(source, "kv_cache", "compile with kv_cache='bfp4' (or bfp8, fp8, int8)")
    block = block or int(stats["block"])
    out = {"fp16": int(stats["bytes_per_token_fp16"])}
    for fmt in formats or KV_FORMATS:
        out[fmt] = sum(2 * pack_kv(torch.zeros(1, v["heads_kv"], 1, v["head_dim"]), fmt, block).nbytes
                       for v in stats["layers"].values())
    if block == stats["block"] and stats["format"] in out and out[stats["format"]] != stats["bytes_per_token"]:
        raise ConfigError(f"kv_bytes: {out[stats['format']]} bytes for {stats['format']}, the pass recorded "
                          f"{stats['bytes_per_token']}")  # the measure disagrees with the pass: a bug, say it
    return out


def plot_kv_cache(source: Any, samples: dict[str, torch.Tensor] | None = None, formats: Sequence[str] | None = None,
                  block: int | None = None) -> Any:
    """Left: bytes per token of the K+V cache per format (all layers; the ratio to fp16 above each bar).
    Right, with `samples` ({label: tensor [..., head_dim]}, e.g. K from `k_channels`): each format's
    relative error ||x - deq(q(x))|| / ||x|| on them, as the cache would store them."""
    from fxforge.ir.kv_ops import kv_quant_ref

    block = block or int(_record(source, "kv_cache", "compile with kv_cache='bfp4' (or bfp8, fp8, int8)")["block"])
    sizes = kv_bytes(source, formats, block)
    fig, axes = figure(1, 2 if samples else 1, width=12 if samples else 6.5, height=4.2)
    ax = axes[0][0]
    bars = ax.bar(list(sizes), list(sizes.values()), color=[f"C{i}" for i in range(len(sizes))])
    for bar, n in zip(bars, sizes.values()):
        ax.annotate(f"{sizes['fp16'] / n:.1f}x", (bar.get_x() + bar.get_width() / 2, n), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylabel("bytes per token (K + V, all layers)")
    ax.set_title(f"KV-cache bytes per format (block {block}; x: smaller than fp16)", fontsize=9)
    if samples:
        eax = axes[0][1]
        fmts = [f for f in sizes if f != "fp16"]
        width = 0.8 / len(samples)
        for j, (label, x) in enumerate(samples.items()):
            x = x.detach().float()
            errs = [float((x - kv_quant_ref(x, format=f, block=block)).norm() / x.norm().clamp_min(1e-30)) for f in fmts]
            eax.bar([i + j * width for i in range(len(fmts))], errs, width, label=label, color=f"C{j}")
        eax.set_xticks([i + 0.4 - width / 2 for i in range(len(fmts))], fmts)
        eax.set_yscale("log")
        eax.set_ylabel("relative error of the stored values")
        eax.set_title("error per format", fontsize=9)
        eax.legend(fontsize=7)
    return fig
