"""plot_build_check draws the build check record's per-kernel figures for each arch."""

import pytest

from fxforge.errors import ConfigError
from fxforge.inspect import plot_build_check
from fxforge.ir.trace import PassRecord, Trace


def _rows(regs, ok=True):
    return [{"kernel": f"k{i}", "label": "", "ok": ok, "registers": r, "spills": 8 * i, "shared": 1024 * r}
            for i, r in enumerate(regs)]


def test_bars_per_kernel_and_arch():
    stats = {"sm_90": _rows([32, 40, 64]), "sm_80": _rows([30, 48]) + [{"kernel": "k2", "skipped": "fp8 needs sm_89"}]}
    trace = Trace([PassRecord("dce", "", "", 0, {}, {}, {}), PassRecord("build_check", "", "", 1.0, stats, {}, {})])
    fig = plot_build_check(trace)
    regs, spills, shared = fig.axes
    assert [p.get_height() for p in regs.patches] == [32, 40, 64, 30, 48]  # sm_80 has no bar for the skipped k2
    assert [p.get_height() for p in shared.patches][:3] == [32, 40, 64]  # KiB
    assert [t.get_text() for t in shared.get_xticklabels()] == ["k0", "k1", "k2"]
    assert regs.get_title() == "build check: 3 kernels on sm_90, sm_80 (hatched: failed build)"
    failed = plot_build_check(Trace([PassRecord("build_check", "", "", 0, {"sm_90": _rows([8], ok=False)}, {}, {})]))
    assert failed.axes[0].patches[0].get_hatch() == "//"


def test_no_record_says_how_to_make_one():
    with pytest.raises(ConfigError, match="check_kernels"):
        plot_build_check(Trace([]))
