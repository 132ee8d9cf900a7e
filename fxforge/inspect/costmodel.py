"""Pictures of the cost model: its predictions against measured kernel figures (scatter, Spearman in the
title, the roofline baseline beside it), and the plan `budget=` chose (one bar per linear site,
coloured by the rewrite chosen there).

Decisions:
- Rows are the cost model's own dataset rows (`costmodel.profile.measure` of kernels just built, or
  `costmodel.dataset.load(path)["rows"]`): features plus measured registers / instructions / shared /
  spills; the prediction is `CostModel.predict(features)` of the shipped model unless one is given, so
  the picture is what selection uses. Rows of kernels the model was trained on make an in-sample
  picture; the notebook profiles its own model's kernels instead.
- Spearman (rank correlation, `costmodel.metrics`) is the figure that matters to selection (which
  candidate is cheaper), so it is the title; the axes are log (registers and instructions span orders).
- The plan panel reads the report's plan (`compiled.record.plan`, i.e. `Plan.stats()`): per site the
  chosen candidate's weight bytes as a bar coloured by its choice, the dense candidate's as an outline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fxforge.errors import ConfigError
from fxforge.inspect._common import figure, layer_index


def predictions(rows: list[dict[str, Any]], model: Any = None, target: str = "registers") -> dict[str, list[float]]:
    """{"measured", "predicted", "roofline", "arch"}: one entry per row that has the target measured."""
    from fxforge.costmodel.models import shipped_model
    from fxforge.costmodel.roofline import baseline

    model = model or shipped_model()
    if model is None:
        raise ConfigError("no cost model: fxforge/costmodel/data/model.json is missing; train one with "
                          "`fxforge costmodel train` or pass model=")
    have = [r for r in rows if target in r and "features" in r]
    if not have:
        raise ConfigError(f"no row has a measured {target!r} (rows of costmodel.profile.measure or a dataset file)")
    if target not in model.predict(have[0]["features"]):
        raise ConfigError(f"the cost model predicts {sorted(model.feature_models)}, not {target!r}")
    return {"measured": [float(r[target]) for r in have],
            "predicted": [model.predict(r["features"])[target] for r in have],
            "roofline": [baseline(r["features"], target, int(r["arch"])) for r in have],
            "arch": [int(r["arch"]) for r in have]}


def plot_costmodel(rows: list[dict[str, Any]] | None = None, plan: Any = None, *, model: Any = None,
                   target: str | Sequence[str] = "registers") -> Any:
    """One panel per `target` (with `rows`): predicted vs measured per kernel and arch, Spearman in the
    title; last (with `plan`: `compiled.record.plan`, or a `Plan`): the choice per linear site."""
    if rows is None and plan is None:
        raise ConfigError("plot_costmodel needs rows (measured kernels) or a plan (compile with budget=...)")
    targets = [target] if isinstance(target, str) else list(target)
    scatters = [predictions(rows, model, t) for t in targets] if rows is not None else []
    panels = len(scatters) + (plan is not None)
    fig, axes = figure(1, panels, width=6.5 * panels, height=4.5)
    for ax, p, t in zip(axes[0], scatters, targets):
        _scatter(ax, p, t)
    if plan is not None:
        _plan_bars(axes[0][-1], plan.stats() if hasattr(plan, "stats") else plan)
    return fig


def _scatter(ax: Any, p: dict[str, list[float]], target: str) -> None:
    from fxforge.costmodel.metrics import spearman

    for i, arch in enumerate(sorted(set(p["arch"]))):
        idx = [j for j, a in enumerate(p["arch"]) if a == arch]
        ax.scatter([p["measured"][j] for j in idx], [p["predicted"][j] for j in idx], color=f"C{i}",
                   label=f"learned, sm_{arch}", alpha=0.8)
    ax.scatter(p["measured"], p["roofline"], facecolors="none", edgecolors="grey", label="roofline baseline")
    lo = max(1e-3, min(p["measured"] + p["predicted"]))
    hi = max(p["measured"] + p["predicted"])
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"measured {target}")
    ax.set_ylabel(f"predicted {target}")
    rho, base = spearman(p["predicted"], p["measured"]), spearman(p["roofline"], p["measured"])
    ax.set_title(f"{target}: Spearman {_fmt(rho)} (roofline {_fmt(base)}), {len(p['measured'])} kernel builds",
                 fontsize=9)
    ax.legend(fontsize=7)


def _fmt(rho: float | None) -> str:
    return "n/a" if rho is None else f"{rho:.2f}"


def _plan_bars(ax: Any, stats: dict[str, Any]) -> None:
    sites = list(stats.get("plan") or {})
    if not sites:
        raise ConfigError("the plan has no linear sites: compile with budget=... and calibration=[...]")
    choices = sorted({stats["plan"][s]["choice"] for s in sites}, key=lambda c: (c != "dense", c))
    colour = {c: f"C{i}" for i, c in enumerate(choices)}
    dense = [next((c["bytes"] for c in stats.get("candidates", {}).get(s, []) if c["choice"] == "dense"), 0)
             for s in sites]
    ax.bar(range(len(sites)), dense, 0.8, facecolor="none", edgecolor="grey", label="dense bytes")
    chosen = [stats["plan"][s]["choice"] for s in sites]
    for c in choices:
        idx = [i for i, ch in enumerate(chosen) if ch == c]
        ax.bar(idx, [stats["plan"][sites[i]]["weight_bytes"] for i in idx], 0.8, color=colour[c], label=c)
    ax.set_xticks(range(len(sites)), [_short(s) for s in sites], rotation=70, fontsize=6)
    ax.set_ylabel("weight bytes of the chosen rewrite")
    met = "met" if stats.get("met") else "not met: dense"
    ax.set_title(f"plan under budget {stats['budget']}: measured error {stats['error']:.3g} ({met}), "
                 f"predicted {stats['predicted_time_us']:.1f} us", fontsize=9)
    ax.legend(fontsize=7)


def _short(site: str) -> str:
    i = layer_index(site)
    return f"{i}.{site.rsplit('.', 1)[-1]}" if i is not None else site.rsplit(".", 1)[-1]
