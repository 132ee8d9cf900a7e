"""Pictures of weight compression: per-layer error vs bytes for each scheme and method (the
statistics the quantize and sparsify passes record per linear), and histograms of one layer's weights
and activations at several stages (before/after smoothing and rotation).

Decisions:
- The input is one or several compiles' traces, labelled by the caller ({"w4a16 gptq": trace, ...});
  each layer's point comes from its pass record's `layers` entry: `rel_error` (output error on the
  calibration data, or weight error without it) against `bytes_after`.
- Histograms take tensors from the caller (the model before, the compiled graph's weights after),
  since the trace keeps IR text, not weights.
"""

from __future__ import annotations

from typing import Any

from fxforge.errors import ConfigError
from fxforge.inspect._common import figure, layer_index, trace_of


def layer_errors(source: Any, pass_name: str = "quantize") -> dict[str, dict[str, Any]]:
    """{linear: its statistics} from the last run of `pass_name` (layers with a `rel_error` only)."""
    stats = trace_of(source).record(pass_name, -1).stats
    return {k: v for k, v in (stats.get("layers") or {}).items() if isinstance(v, dict) and "rel_error" in v}


def plot_quant(runs: Any, pass_name: str = "quantize") -> Any:
    """Left: each linear's error vs its bytes, one colour per run (scheme/method); right: error per
    linear in graph order. `runs`: a trace / CompiledModule, or {label: trace or CompiledModule}."""
    runs = runs if isinstance(runs, dict) else {"": runs}
    fig, axes = figure(1, 2, width=12, height=4.5)
    sax, lax = axes[0]
    for i, (label, source) in enumerate(runs.items()):
        layers = layer_errors(source, pass_name)
        if not layers:
            raise ConfigError(f"run {label!r} has no per-layer errors in its {pass_name!r} record")
        methods = sorted({str(v.get("method", "")) for v in layers.values()})
        name = label or f"{pass_name}: {'/'.join(methods)}"
        errs = [v["rel_error"] for v in layers.values()]
        sax.scatter([v.get("bytes_after", 0) for v in layers.values()], errs, color=f"C{i}", label=name, alpha=0.8)
        lax.plot(range(len(errs)), errs, color=f"C{i}", marker="o", label=name)
        lax.set_xticks(range(len(errs)), [_short(k) for k in layers], rotation=70, fontsize=6)
    sax.set_xscale("log")
    sax.set_xlabel("bytes after compression (per linear)")
    sax.set_ylabel("relative output error")
    sax.set_title(f"{pass_name}: error vs bytes per linear")
    sax.legend(fontsize=7)
    lax.set_ylabel("relative output error")
    lax.set_title("error per linear")
    return fig


def _short(site: str) -> str:
    i = layer_index(site)
    return f"{i}.{site.rsplit('.', 1)[-1]}" if i is not None else site.rsplit(".", 1)[-1]


def plot_histograms(weights: dict[str, Any], activations: dict[str, Any] | None = None, name: str = "",
                    bins: int = 80) -> Any:
    """Histograms (log counts) of a layer's weights, and of its input activations when given, one
    curve per stage ({"original": w, "smoothed": w_s, "rotated": w_r}); the title gives each stage's
    max |x| / RMS (the outlier ratio that quantization pays for)."""
    panels = [("weights", weights)] + ([("activations", activations)] if activations else [])
    fig, axes = figure(1, len(panels), width=6 * len(panels), height=4)
    for ax, (kind, stages) in zip(axes[0], panels):
        ratios = []
        for i, (stage, t) in enumerate(stages.items()):
            x = getattr(t, "data", t).detach().float().reshape(-1)  # a tensor, or a graph's dense `Weight`
            ax.hist(x.numpy(), bins=bins, histtype="step", color=f"C{i}", label=stage, log=True)
            ratios.append(f"{stage} {float(x.abs().max() / x.pow(2).mean().sqrt().clamp_min(1e-30)):.1f}")
        ax.set_title(f"{name} {kind}: max/RMS " + ", ".join(ratios), fontsize=9)
        ax.set_xlabel("value")
        ax.set_ylabel("count (log)")
        ax.legend(fontsize=7)
    return fig
