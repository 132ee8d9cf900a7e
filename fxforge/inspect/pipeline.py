"""Pictures of a pass pipeline run (an `ir.Trace`): op counts per op kind after each pass, seconds per
pass, and the side-by-side IR diff of one pass.

Decisions:
- Op kinds are the opcodes; the `top` most frequent over the whole run get their own colour and the
  rest are summed as "other", so a bar stays readable on a real model.
- The x axis is "input" (the IR before the first pass) and then one bar per pass record: a pass that
  runs twice has two bars ("canonicalize#2").
"""

from __future__ import annotations

import difflib
from collections import Counter
from typing import Any

from fxforge.inspect._common import HTML, figure


def _labels(trace: Any) -> list[str]:
    seen: Counter[str] = Counter()
    out = []
    for r in trace.records:
        seen[r.name] += 1
        out.append(r.name if seen[r.name] == 1 else f"{r.name}#{seen[r.name]}")
    return out


def plot_pipeline(trace: Any, top: int = 8) -> Any:
    """Stacked bars of op counts per op kind (input, then after each pass) and a bar of seconds per pass."""
    records = list(trace.records)
    if not records:
        raise ValueError("the trace has no pass records: compile the model first (compiled.record.trace)")
    counts = [dict(records[0].ops_before)] + [dict(r.ops_after) for r in records]
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    kinds = [k for k, _ in total.most_common(top)]
    labels = ["input", *_labels(trace)]
    fig, axes = figure(1, 2, width=12, height=4.5, width_ratios=[3, 2])
    ax, tax = axes[0]
    bottom = [0] * len(counts)
    for kind in [*kinds, "other"]:
        vals = [c.get(kind, 0) if kind != "other" else sum(v for k, v in c.items() if k not in kinds) for c in counts]
        ax.bar(labels, vals, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title("ops per kind after each pass")
    ax.set_ylabel("ops")
    ax.tick_params(axis="x", labelrotation=60)
    ax.legend(fontsize=7, ncols=2)
    tax.bar(labels[1:], [r.seconds * 1e3 for r in records], color="tab:gray")
    tax.set_title("time per pass")
    tax.set_ylabel("ms")
    tax.tick_params(axis="x", labelrotation=60)
    return fig


def show_diff(trace: Any, pass_name: str, occurrence: int = 0, context: int = 2) -> HTML:
    """The IR before and after one run of `pass_name`, side by side, changed lines highlighted."""
    record = trace.record(pass_name, occurrence)
    before, after = record.ir_before.splitlines(), record.ir_after.splitlines()
    if before == after:
        return HTML(f"<p><b>{pass_name}</b> changed nothing in the IR.</p>")
    table = difflib.HtmlDiff(wrapcolumn=90).make_table(before, after, f"before {pass_name}", f"after {pass_name}",
                                                        context=True, numlines=context)
    style = ("<style>table.diff{font-family:monospace;font-size:11px;border:1px solid #ccc}"
             ".diff_add{background:#cfc}.diff_chg{background:#ffa}.diff_sub{background:#fcc}</style>")
    return HTML(style + table)
