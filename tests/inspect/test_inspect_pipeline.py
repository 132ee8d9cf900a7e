"""plot_pipeline / show_diff draw what the trace holds."""

import pytest

from fxforge.inspect import HTML, plot_pipeline, show_diff
from fxforge.ir.trace import PassRecord, Trace


def test_pipeline_bars_are_the_op_counts(dense):
    trace = dense.record.trace
    fig = plot_pipeline(trace, top=3)
    ops_ax, time_ax = fig.axes
    labels = [t.get_text() for t in ops_ax.get_xticklabels()]
    assert labels[0] == "input" and labels[1:] == [r.name if i == trace.names().index(r.name) else labels[i + 1]
                                                 for i, r in enumerate(trace.records)]
    assert "canonicalize#2" in labels  # the second run of a pass gets its own bar
    # 3 kinds + "other", one bar per stage each; stacked heights add up to the op count
    n = len(trace.records) + 1
    assert len(ops_ax.patches) == 4 * n
    heights = [sum(p.get_height() for p in ops_ax.patches[i::n]) for i in range(n)]
    assert heights[-1] == sum(trace.records[-1].ops_after.values())
    assert heights[0] == sum(trace.records[0].ops_before.values())
    assert [p.get_height() for p in time_ax.patches] == pytest.approx([r.seconds * 1e3 for r in trace.records])
    assert ops_ax.get_title() == "ops per kind after each pass" and time_ax.get_title() == "time per pass"


def test_diff_is_side_by_side_html_of_the_changed_lines():
    rec = PassRecord("cse", "%a = add(%x, %x)\n%b = add(%x, %x)\n", "%a = add(%x, %x)\n", 0.1, {}, {"add": 2}, {"add": 1})
    html = show_diff(Trace([rec]), "cse")
    assert isinstance(html, HTML) and html._repr_html_() == html.data
    assert "before cse" in html.data and "after cse" in html.data and "diff_sub" in html.data
    assert "changed nothing" in show_diff(Trace([PassRecord("dce", "x\n", "x\n", 0.0, {}, {}, {})]), "dce").data


def test_diff_of_a_pass_that_did_not_run_names_the_ones_that_did(dense):
    with pytest.raises(KeyError, match="it ran"):
        show_diff(dense.record.trace, "no_such_pass")


def test_plotting_libraries_are_imported_only_when_drawing():
    import subprocess
    import sys

    code = "import sys, fxforge.inspect; print(sorted({'matplotlib', 'pygments'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_missing_extra_names_what_to_install():
    from fxforge.errors import ConfigError
    from fxforge.inspect._common import optional

    with pytest.raises(ConfigError, match=r"fxforge\[notebook\]"):
        optional("matplotlib_that_is_not_installed")
