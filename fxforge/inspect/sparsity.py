"""Pictures of sparsity and FFN skipping: a 2:4 mask tile of an N:M weight (read from its `#nm`
encoding, `ir/nm.py`), the share of FFN rows skipped per layer and input (heat map), and the gate's
skip-vs-error curve against the oracle (the `ffn_skip` pass's `quality` statistics).

Decisions:
- The mask is decoded from the stored index bits, not recomputed from the values: it shows what the
  kernel reads, zeros kept by the mask included.
- The heat map's cells are counted skips (`runtime.counters`), one column per input the caller ran
  (`skip_shares`) or per token of one text (`skip_by_token`). The runtime counts per FFN block and call,
  so a token's cell is the count on its prefix minus the count on the prefix one shorter: exact for a
  causal model, whose earlier rows (and their gates) do not depend on later tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from fxforge.errors import ConfigError
from fxforge.inspect._common import figure, layer_index


def nm_mask(weight: Any) -> torch.Tensor:
    """The bool [out, in] mask an `#nm` weight keeps (tail columns past the last block: all kept)."""
    from fxforge.ir.nm import expand, index_bits, unpack_bits
    from fxforge.ir.types import NM

    enc = getattr(weight, "encoding", None)
    if not isinstance(enc, NM):
        raise ConfigError(f"plot_nm_mask needs an N:M weight (encoding #nm), got {enc!r}: compile with sparsity='2:4'")
    out_f, in_f = weight.data.shape
    k = (in_f // enc.m) * enc.n
    pos = unpack_bits(weight.payload["index"], index_bits(enc.m), k)
    ones = torch.ones(out_f, k + in_f % enc.m)
    return expand(ones, pos, enc.n, enc.m, in_f).bool()


def plot_nm_mask(weight_or_graph: Any, name: str | None = None, tile: tuple[int, int] = (16, 32)) -> Any:
    """The kept (dark) / pruned (light) entries of one `tile` (rows, cols) of an N:M weight, blocks marked."""
    weight = weight_or_graph
    if hasattr(weight_or_graph, "weights"):
        if name not in weight_or_graph.weights:
            nm = [k for k, w in weight_or_graph.weights.items() if type(getattr(w, "encoding", None)).__name__ == "NM"]
            raise ConfigError(f"no weight {name!r} in the graph; its N:M weights: {nm}")
        weight = weight_or_graph.weights[name]
    mask = nm_mask(weight)
    rows, cols = min(tile[0], mask.shape[0]), min(tile[1], mask.shape[1])
    fig, axes = figure(width=8, height=4.5)
    ax = axes[0][0]
    ax.imshow(mask[:rows, :cols].float().numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    m = weight.encoding.m
    for c in range(m, cols, m):
        ax.axvline(c - 0.5, color="tab:red", linewidth=0.8)
    ax.set_title(f"{name or 'weight'}: {weight.encoding.n}:{m} mask, rows 0-{rows - 1}, cols 0-{cols - 1} "
                 f"(dark = kept; {float(mask.float().mean()):.0%} kept overall)")
    ax.set_xlabel("input column (red lines: block boundaries)")
    ax.set_ylabel("output row")
    return fig


def _skip_stats(source: Any) -> dict[str, Any]:
    trace = getattr(getattr(source, "record", None), "trace", None) or source
    if hasattr(trace, "record"):
        return trace.record("ffn_skip", -1).stats
    return source


def plot_ffn_skip(source: Any, per_input: dict[str, dict[str, float]] | None = None, columns: str = "input") -> Any:
    """Left: share of FFN rows skipped per layer (rows) and input (columns) as a heat map, from counted
    skips (`per_input`: {input label: {site: share}}, see `skip_shares`) or else the calibration shares
    of the pass's statistics (`columns` names what a column is); right: the gate's skip-vs-error curve of each gated layer, dashed: oracle."""
    stats = _skip_stats(source)
    layers = stats.get("layers") or {}
    if not layers:
        raise ConfigError("no ffn_skip statistics: compile with ffn_skip=<share> and calibration data")
    sites = sorted(layers, key=lambda s: (layer_index(s) is None, layer_index(s) or 0, s))
    if per_input is None:
        per_input = {"calibration": {s: layers[s].get("calib_share", 0.0) for s in sites}}
    cols = list(per_input)
    grid = [[per_input[c].get(s, 0.0) for c in cols] for s in sites]
    fig, axes = figure(1, 2, width=12, height=4.5)
    hax, cax = axes[0]
    img = hax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    hax.set_yticks(range(len(sites)), sites, fontsize=7)
    hax.set_xticks(range(len(cols)), cols, rotation=45, fontsize=7)
    hax.set_title(f"share of FFN rows skipped (layer x {columns})")
    fig.colorbar(img, ax=hax)
    for i, site in enumerate(s for s in sites if "quality" in layers[s]):
        q = layers[site]["quality"]
        colour = f"C{i}"
        cax.plot(q["share"], q["gate_error"], color=colour, marker="o", label=f"{site} gate")
        cax.plot(q["share"], q["oracle_error"], color=colour, linestyle="--", label=f"{site} oracle")
    cax.set_xlabel("share of the layer's rows skipped")
    cax.set_ylabel("layer output error (RMS, relative)")
    cax.set_title("gate vs oracle: skip vs error")
    if cax.lines:
        cax.legend(fontsize=7)
    return fig


def skip_shares(compiled: Any, inputs: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Run `compiled` on each input and read the counted skips of that call: {label: {site: share}}."""
    out: dict[str, dict[str, float]] = {}
    before = compiled.fxforge_report.ffn_skip.get("per_layer", {})
    for label, x in inputs.items():
        compiled(x)
        now = compiled.fxforge_report.ffn_skip.get("per_layer", {})
        out[label] = {}
        for site, v in now.items():
            rows = v["rows"] - before.get(site, {}).get("rows", 0)
            skipped = v["skipped"] - before.get(site, {}).get("skipped", 0)
            out[label][site] = skipped / rows if rows else 0.0
        before = {k: dict(v) for k, v in now.items()}
    return out


def skip_by_token(compiled: Any, ids: torch.Tensor, labels: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Per token of one sequence `ids` [1, T] (a causal LM): {label: {site: 1.0 if its FFN row was skipped
    else 0.0}}, from the counted skips of each prefix (see the module's Decisions)."""
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ConfigError(f"skip_by_token takes one sequence of token ids [1, T], got shape {tuple(ids.shape)}")
    labels = labels or [str(int(t)) for t in ids[0]]
    prefixes = {f"{i}": ids[:, : i + 1] for i in range(ids.shape[1])}
    per_prefix = skip_shares(compiled, prefixes)
    out: dict[str, dict[str, float]] = {}
    previous: dict[str, float] = {}
    for i, (key, shares) in enumerate(per_prefix.items()):
        n = int(key) + 1  # rows of this prefix: skipped rows = share * n
        skipped = {site: round(share * n) for site, share in shares.items()}
        out[f"{i}:{labels[i]}"] = {site: float(skipped[site] - previous.get(site, 0)) for site in skipped}
        previous = skipped
    return out
