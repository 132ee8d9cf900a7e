"""Picture of the kernel build check: registers, spilled bytes and shared memory per kernel for each
target arch (sm_80, sm_90), from the "build_check" record that `codegen.buildcheck` figures become
in a trace.

Decisions:
- One row of panels per figure (registers, spills, shared KiB), one bar group per kernel, one bar
  per arch; a kernel skipped on an arch (fp8 before sm_89) has no bar there, a failed build is hatched.
"""

from __future__ import annotations

from typing import Any

from fxforge.errors import ConfigError
from fxforge.inspect._common import figure

FIGURES = (("registers", "registers / thread", 1), ("spills", "spilled bytes", 1), ("shared", "shared memory (KiB)", 1024))


def build_rows(source: Any) -> dict[str, list[dict[str, Any]]]:
    """{arch: per-kernel rows} of the trace's last "build_check" record (a CompiledModule or trace)."""
    from fxforge.codegen.buildcheck import RECORD_NAME

    trace = getattr(getattr(source, "record", None), "trace", None) or source
    found = [r for r in getattr(trace, "records", []) if r.name == RECORD_NAME]
    if not found:
        raise ConfigError("no build check in this trace: check = fxforge.codegen.buildcheck.check_kernels(compiled, inputs); "
                          "compiled.record.add_check('build_check', check.stats, check.seconds)")
    return found[-1].stats


def plot_build_check(source: Any) -> Any:
    """Registers, spills and shared memory per kernel, one bar per arch."""
    rows = build_rows(source)
    archs = list(rows)
    kernels = list(dict.fromkeys(r["kernel"] for arch in archs for r in rows[arch]))
    fig, axes = figure(len(FIGURES), 1, width=max(8.0, 0.4 * len(kernels)), height=9, sharex=True)
    width = 0.8 / max(1, len(archs))
    for (key, label, unit), ax in zip(FIGURES, axes[:, 0]):
        for j, arch in enumerate(archs):
            by_kernel = {r["kernel"]: r for r in rows[arch] if not r.get("skipped")}
            xs = [i + j * width for i, k in enumerate(kernels) if k in by_kernel]
            vals = [by_kernel[k].get(key, 0) / unit for k in kernels if k in by_kernel]
            bars = ax.bar(xs, vals, width, label=arch, color=f"C{j}")
            for bar, k in zip(bars, [k for k in kernels if k in by_kernel]):
                if not by_kernel[k].get("ok"):
                    bar.set_hatch("//")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)  # an all-zero panel (no spills) reads as zero, not as a band around it
        ax.legend(fontsize=7)
    axes[0, 0].set_title(f"build check: {len(kernels)} kernels on {', '.join(archs)} (hatched: failed build)")
    axes[-1, 0].set_xticks([i + 0.4 - width / 2 for i in range(len(kernels))], kernels, rotation=70, fontsize=6)
    return fig
