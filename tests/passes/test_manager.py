"""The pass manager and the pass table: pipelines by name, the trace, verification naming the guilty pass, JSON,
one naming scheme for pass options."""

import pytest
import torch

from fxforge.config import CompileConfig
from fxforge.errors import ConfigError
from fxforge.ir import DType, Graph, TensorType, sym
from fxforge.passes import PassContext, PassManager, PassVerifyError, Trace
from fxforge.pipeline import PASSES, build_passes, default_pipeline, option_set, pass_options

F32 = DType.f32


def small_graph():
    """neg(neg(x)) + a dead op + a duplicate: every default pass has something to do."""
    g = Graph()
    x = g.add_input("x", TensorType((sym("s0"), 8), F32))
    w = g.add_weight("unused", torch.randn(3))
    g.add_op("const", [], {"weight": w})
    a = g.add_op("exp", [x]).result
    b = g.add_op("exp", [x]).result
    y = g.add_op("reshape", [g.add_op("add", [a, b]).result], {"shape": (sym("s0"), 8)}).result
    g.set_outputs([y])
    return g


class Renamer:
    """A pass that changes nothing but reports a statistic."""

    name = "renamer"

    def run(self, graph, ctx):
        ctx.stats["seen_ops"] = len(graph.ops)
        ctx.stats["option"] = ctx.option("renamer.flag", "default")
        return graph


class BreaksTypes:
    """A buggy pass: retypes a value so it no longer matches its op."""

    name = "breaks_types"

    def run(self, graph, ctx):
        graph.ops[-1].results[0].type = TensorType((3,), F32)
        return graph


def test_default_pipeline_is_registered_and_builds():
    names = default_pipeline()
    assert names[0] == "canonicalize" and names[-1] == "shape_prop"
    assert set(names) == {"canonicalize", "constant_fold", "cse", "dce", "shape_prop"} <= set(PASSES)
    passes = build_passes(names, disabled=["cse"])
    assert [p.name for p in passes] == [n for n in names if n != "cse"]


def test_a_typo_lists_the_known_passes():
    with pytest.raises(ValueError, match=r"unknown pass name\(s\) \['cse2'\].*canonicalize"):
        build_passes(["canonicalize", "cse2"])
    with pytest.raises(ValueError, match="dcee"):
        build_passes(["dce"], disabled=["dcee"])


def test_trace_records_text_time_stats_and_op_counts():
    g = small_graph()
    pm = PassManager(build_passes(default_pipeline()) + [Renamer()], verify=True)
    out = pm.run(g, PassContext(options={"renamer.flag": 7}))
    assert out is g
    trace = pm.trace
    assert trace.names() == default_pipeline() + ["renamer"]
    first, second = trace.records[0], trace.records[1]
    assert first.ir_after == second.ir_before  # one print per pass
    assert "reshape" in first.ir_before and "reshape" not in first.ir_after
    assert first.ops_before["reshape"] == 1 and "reshape" not in first.ops_after
    assert first.stats["rewrites"] == {"fold_noop_reshape": 1}
    assert trace.record("cse").stats["merged"] == 1
    assert trace.record("dce").stats == {"ops_removed": 1, "weights_removed": 1, "weight_bytes_freed": 12}
    assert trace.record("canonicalize", 1).stats["total"] == 0
    assert trace.record("renamer").stats == {"seen_ops": 2, "option": 7}
    assert all(r.seconds >= 0 for r in trace.records)
    assert g.op_counts() == {"add": 1, "exp": 1} and "unused" not in g.weights
    with pytest.raises(KeyError, match="ran"):
        trace.record("canonicalize", 2)
    assert "renamer" in trace.summary()


def test_diff_shows_what_a_pass_changed():
    g = small_graph()
    pm = PassManager(build_passes(["canonicalize", "cse"]))
    pm.run(g)
    diff = pm.trace.diff("cse")
    assert diff.startswith("--- before cse\n+++ after cse\n")
    removed = [line for line in diff.splitlines() if line.startswith("-  ")]
    added = [line for line in diff.splitlines() if line.startswith("+  ")]
    assert len(removed) == 2 and "exp" in removed[0] and "add" in removed[1]
    assert len(added) == 1 and "add" in added[0]
    assert pm.trace.diff("canonicalize") != "" and pm.trace.record("cse").diff() == diff


def test_json_round_trip():
    pm = PassManager(build_passes(default_pipeline()))
    pm.run(small_graph())
    text = pm.trace.to_json()
    again = Trace.from_json(text)
    assert again == pm.trace
    assert again.to_json() == text


def test_verify_names_the_pass_that_broke_the_graph():
    pm = PassManager([Renamer(), BreaksTypes(), Renamer()], verify=True)
    with pytest.raises(PassVerifyError, match=r"pass 'breaks_types' broke the graph: .*declared f32\[3\]"):
        pm.run(small_graph())
    assert pm.trace.names() == ["renamer", "breaks_types"]  # the broken pass's record is kept
    # without verification (and without debug) the broken graph goes through unnoticed
    PassManager([BreaksTypes()]).run(small_graph())
    # the context can turn checking on too
    with pytest.raises(PassVerifyError, match="breaks_types"):
        PassManager([BreaksTypes()]).run(small_graph(), PassContext(debug=True))


def test_a_broken_input_is_not_blamed_on_the_first_pass():
    g = small_graph()
    g.ops[-1].results[0].type = TensorType((3,), F32)
    with pytest.raises(PassVerifyError, match="input graph"):
        PassManager(build_passes(["cse"]), verify=True).run(g)


def test_each_run_gets_fresh_stats():
    ctx = PassContext()
    pm = PassManager([Renamer(), *build_passes(["dce"])])
    pm.run(small_graph(), ctx)
    assert pm.trace.record("renamer").stats == {"seen_ops": 5, "option": "default"}
    assert "seen_ops" not in pm.trace.record("dce").stats


def test_default_pipeline_follows_the_config_and_executor():
    core = ["canonicalize", "constant_fold", "cse", "canonicalize", "dce", "shape_prop"]
    assert default_pipeline() == core
    assert default_pipeline(CompileConfig(), "interpret") == core[:4] + ["concat_linears", "gqa_attention", "norm_copies"] + core[4:] + ["fuse"]
    assert default_pipeline(CompileConfig(quantize="w8a8-int8"))[4:7] == ["rotate", "smooth", "quantize"]
    # an override that names a scheme switches the pass on too, and so does the option set directly
    assert "quantize" in default_pipeline(CompileConfig(quantize_overrides={"*.mlp.*": "w4a8-fp"}))
    assert "quantize" in default_pipeline(CompileConfig(pass_options={"quantize.scheme": "w8a8-int8"}))
    when = option_set("quantize.lorc_rank")
    assert when({"quantize.lorc_rank": 0}, "reference") and not when({"quantize.lorc_rank": None}, "triton")


def test_config_fields_become_dotted_pass_options():
    options = pass_options(CompileConfig(quantize="w4a16-int4", quantize_group=32, lorc_rank=4,
                                         pass_options={"constant_fold.max_elements": 0}))
    assert options["quantize.scheme"] == "w4a16-int4" and options["quantize.group"] == 32
    assert options["quantize.lorc_rank"] == 4 and options["constant_fold.max_elements"] == 0
    assert all("." in key for key in options)
    with pytest.raises(ConfigError, match="known passes"):
        pass_options(CompileConfig(pass_options={"canonicalise.max_iterations": 3}))
    with pytest.raises(ConfigError, match="known passes"):
        pass_options(CompileConfig(pass_options={"quantize": "w8a8-int8"}))  # not dotted
    with pytest.raises(ConfigError, match="contradicts quantize_group"):
        pass_options(CompileConfig(quantize_group=32, pass_options={"quantize.group": 64}))


def test_calibration_no_pass_reads_is_an_error():
    from fxforge.pipeline import check_calibration

    check_calibration(default_pipeline(CompileConfig(quantize="w8a8-int8")), [[torch.ones(2)]])
    check_calibration(default_pipeline(), None)
    with pytest.raises(ConfigError, match=r"no pass of the pipeline .* reads them .*'quantize'"):
        check_calibration(default_pipeline(), [[torch.ones(2)]])


def test_an_undotted_option_read_is_refused():
    # a pass reading an old undotted key would otherwise get None and do nothing, silently
    with pytest.raises(ValueError, match="'<pass>.<option>'"):
        PassContext(options={"quantize": "w8a8-int8"}).option("quantize")


def test_manager_takes_pass_objects_only():
    with pytest.raises(TypeError, match="build_passes"):
        PassManager(["cse"])


def test_every_pass_in_the_table_builds_and_is_named_as_listed():
    assert {p.name for p in build_passes(sorted(PASSES))} == set(PASSES)


class Probe:
    """Records the IR text as the pass sees it (what the trace must say before it), then edits the graph in
    place (a value renamed, a type changed), as later passes do."""

    name = "probe"

    def __init__(self):
        self.seen = []

    def run(self, graph, ctx):
        from fxforge.ir.printer import print_graph

        self.seen.append(print_graph(graph))
        graph.rename_value(graph.ops[-1].results[0], f"probed{len(self.seen)}")
        return graph


def test_the_trace_prints_when_read_and_reads_the_ir_of_its_time(monkeypatch):
    from fxforge.ir import printer

    printed = []
    real = printer._graph_text
    monkeypatch.setattr(printer, "_graph_text", lambda *a: printed.append(1) or real(*a))
    probe = Probe()
    pm = PassManager([*build_passes(["canonicalize", "cse"]), probe, *build_passes(["dce"]), probe, Renamer()])
    g = pm.run(small_graph())
    assert len(printed) == len(probe.seen) == 2  # the probe's: a trace nobody reads costs no printing (it was N+1 prints)
    first, second = pm.trace.record("probe", 0), pm.trace.record("probe", 1)
    assert first.ir_before == probe.seen[0] and second.ir_before == probe.seen[1]  # not the graph as it is now
    assert "%probed1 = " in first.ir_after and "%probed1 = " not in first.ir_before and "probed2" not in first.ir_after
    assert pm.trace.record("dce").ir_before == first.ir_after and len(printed) == 2 + 3  # after i is before i+1: printed once
    assert pm.trace.records[-1].ir_after == printer.print_graph(g)
    assert Trace.from_json(pm.trace.to_json()) == pm.trace


class SeesFreeze:
    """Records whether the objects that existed before the compile are out of the collector's reach."""

    name = "sees_freeze"

    def __init__(self):
        self.frozen = []

    def run(self, graph, ctx):
        import gc

        self.frozen.append(gc.get_freeze_count())
        return graph


def test_compile_freezes_the_heap_it_found_and_gives_it_back(monkeypatch):
    import gc

    import fxforge
    from fxforge import pipeline, testing

    probe = SeesFreeze()
    monkeypatch.setitem(pipeline.PASSES, "sees_freeze", lambda: probe)
    model = testing.mlp(dim=8, hidden=16)
    assert gc.get_freeze_count() == 0
    fxforge.compile_aot(model, (torch.randn(2, 3, 8),), passes=["sees_freeze"])
    assert probe.frozen[0] > 0 and gc.get_freeze_count() == 0  # full collections skipped the model and torch's heap
    gc.freeze()  # a program that froze its own heap (a pre-fork server) keeps it frozen, as it was
    try:
        frozen = gc.get_freeze_count()
        fxforge.compile_aot(model, (torch.randn(2, 3, 8),), passes=["sees_freeze"])
        assert 0 < probe.frozen[1] <= frozen and 0 < gc.get_freeze_count() <= frozen  # not refrozen, not unfrozen
    finally:
        gc.unfreeze()


def test_snapshots_sharing_op_copies_still_see_every_edit():
    """The trace's snapshots share the copy of an op that did not change (GraphText's memo): an attribute set in
    place (kv_cache does), a retyped result (shape_prop) and a renamed value each show in the next snapshot."""
    from fxforge.ir.printer import GraphText, print_graph

    g = small_graph()
    memo, texts, snaps = {}, [], []

    def snap():
        texts.append(print_graph(g))
        snaps.append(GraphText(g, memo=memo))

    snap()
    reshape = g.ops[-1]
    reshape.attrs.update(shape=(sym("s0"), 2, 4))
    reshape.results[0].type = TensorType((sym("s0"), 2, 4), F32)
    snap()
    g.rename_value(g.ops[1].results[0], "renamed")
    snap()
    snap()  # nothing changed: every op's copy is shared
    assert [str(s) for s in snaps] == texts and texts[0] != texts[1] != texts[2] == texts[3]
    assert "[s0, 2, 4]" in texts[1] and "%renamed = exp" in texts[2]
