"""The `fuse` partition: kernel groups by the rule table, on hand-built and captured graphs."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph
from fxforge.ir.optable import OperandRef
from fxforge.ir.types import TensorType
from fxforge.ir.verify import verify
from fxforge.passes.fuse import FusePass, fuse, partition
from fxforge.passes.manager import PassManager
from fxforge.pipeline import PASSES, default_pipeline


def op(g, code, *xs, **attrs):
    return g.add_op(code, list(xs), attrs).result


def inputs(g, *shapes):
    return [g.add_input(f"x{i}", TensorType(s, DType.f32)) for i, s in enumerate(shapes)]


def kinds(part):
    return [(grp.kind, [o.opcode for o in grp.ops]) for grp in part.groups]


def test_linear_bias_gelu_is_one_group():
    g = Graph()
    x, w, b = inputs(g, (4, 16), (32, 16), (32,))
    y = op(g, "gelu", op(g, "add", op(g, "linear", x, w), b))
    g.set_outputs([y])
    part = partition(g)
    assert kinds(part) == [("gemm", ["linear", "add", "gelu"])]
    assert part.groups[0].params["bias"] is b and part.groups[0].params["activation"] == "gelu"


def test_epilogue_order_follows_the_template():
    g = Graph()
    x, w, b = inputs(g, (4, 16), (32, 16), (32,))
    y = op(g, "linear", x, w, b)  # bias inside the linear: a later scale cannot move before it, it is the post-scale
    z = op(g, "mul", y, op(g, "full", shape=(), value=2.0, dtype=DType.f32))
    z = op(g, "mul", z, op(g, "full", shape=(), value=3.0, dtype=DType.f32))  # one post-scale per epilogue
    g.set_outputs([z])
    part = partition(g)
    assert kinds(part) == [("gemm", ["linear", "mul"]), ("pointwise", ["mul"])]
    assert part.groups[0].params["scale"] == 1.0 and part.groups[0].params["post_scale"] == 2.0


def test_softmax_then_mul_is_one_row_group():
    g = Graph()
    x, y = inputs(g, (8, 33), (8, 1))
    g.set_outputs([op(g, "mul", op(g, "softmax", x), y)])
    part = partition(g)
    assert kinds(part) == [("row", ["softmax", "mul"])]


def test_extern_breaks_a_group_and_says_why():
    g = Graph()
    (x,) = inputs(g, (4, 8))
    a = op(g, "sin", x)
    e = g.add_op("extern", [a], {"target": "aten.cumsum.default", "args": (OperandRef(0), -1)},
                 result_types=[TensorType((4, 8), DType.f32)]).result
    g.set_outputs([op(g, "cos", e)])
    part = partition(g)
    assert kinds(part) == [("pointwise", ["sin"]), ("pointwise", ["cos"])]
    assert part.stats()["unfused"] == {"extern aten.cumsum.default: calls torch on the host": 1}


def test_multi_use_values_join_the_group_that_reads_them_all():
    g = Graph()
    (x,) = inputs(g, (4, 8))
    a = op(g, "exp", x)
    g.set_outputs([op(g, "add", op(g, "sin", a), op(g, "cos", a))])
    part = partition(g)  # exp is read only by the sin/cos/add kernel: absorbed (computed once in it)
    assert kinds(part) == [("pointwise", ["exp", "sin", "cos", "add"])]
    assert "absorbed" in part.groups[0].reason
    g.set_outputs([g.outputs[0], a])  # also read outside: its own kernel, not fused inward
    assert kinds(partition(g)) == [("pointwise", ["exp"]), ("pointwise", ["sin", "cos", "add"])]


def test_rope_tables_cat_of_one_value_and_cos_sin_are_one_kernel():
    g = Graph()
    (pos, inv) = inputs(g, (1, 6, 1), (4,))
    f = op(g, "mul", pos, inv)
    emb = g.add_op("cat", [f, f], {"dim": 2}).result
    g.set_outputs([op(g, "cos", emb), op(g, "sin", emb)])
    part = partition(g)
    assert kinds(part) == [("pointwise", ["mul", "cat", "cos", "sin"])]
    assert part.host == {}


def test_broadcast_chain_takes_the_largest_shape():
    g = Graph()
    x, y = inputs(g, (5, 1), (5, 7))
    g.set_outputs([op(g, "mul", op(g, "exp", x), y)])
    part = partition(g)
    assert kinds(part) == [("pointwise", ["exp", "mul"])]
    assert part.groups[0].outputs[0].type.shape == (5, 7)


def test_views_stay_on_the_host_with_a_reason():
    g = Graph()
    (x,) = inputs(g, (4, 8))
    g.set_outputs([op(g, "exp", op(g, "permute", op(g, "neg", x), dims=(1, 0)))])
    part = partition(g)
    assert kinds(part) == [("pointwise", ["neg"]), ("pointwise", ["exp"])]
    assert any(r.startswith("view:") for r in part.host.values())


def test_fuse_pass_on_a_real_graph_keeps_valid_ir_and_records_stats():
    assert "fuse" in PASSES and "fuse" not in default_pipeline()
    model = zoo.build("mlp")
    compiled = fxforge.compile_aot(model, (zoo.example_input("mlp", batch=2, seq=8),))
    graph = compiled.graph
    before = str(graph)
    pm = PassManager([FusePass()], verify=True)
    pm.run(graph)
    verify(graph)
    assert str(graph) == before  # the partition is data beside the graph, the IR is unchanged
    stats = pm.trace.record("fuse").stats
    assert stats["kernels"] == 3 and stats["groups"] == ["gemm[linear, gelu]", "gemm[linear, add]", "row[layer_norm]"]
    assert stats["unfused"] == {"source: a weight of the graph": 6}


def test_llama_groups():
    model = zoo.build("llama")
    compiled = fxforge.compile_aot(model, (zoo.example_input("llama", batch=1, seq=8),))
    part = partition(compiled.graph)
    described = [grp.describe() for grp in part.groups]
    assert "gemm[linear, silu]" in described and "gemm[linear, add]" in described  # SwiGLU gate, residual
    assert described.count("attention[attention]") == 2 and "row[rms_norm]" in described
    assert len(part.groups) < len(compiled.graph.ops) // 2
    with torch.no_grad():
        reasons = set(part.host.values())
    assert any(r.startswith("extern aten.index.Tensor") for r in reasons)


def test_swiglu_mul_joins_the_up_projection():
    g = Graph()
    x, wg, wu, wd = inputs(g, (2, 5, 16), (24, 16), (24, 16), (16, 24))
    gate = op(g, "silu", op(g, "linear", x, wg))
    up = op(g, "linear", x, wu)
    h = op(g, "mul", gate, up)
    g.set_outputs([op(g, "add", op(g, "linear", h, wd), x)])
    part = partition(g)
    assert kinds(part) == [("gemm", ["linear", "silu"]), ("gemm", ["linear", "mul"]), ("gemm", ["linear", "add"])]
    up_group = part.groups[1]
    assert up_group.ops[0].result is up and up_group.params["mul"] is gate
    assert part.groups[0].outputs == [gate] and up_group.outputs == [h]


def test_gemm_mul_epilogue_order_and_limits():
    g = Graph()
    x, w, t, r, s = inputs(g, (4, 16), (32, 16), (4, 32), (4, 32), (32,))
    y = op(g, "add", op(g, "mul", op(g, "relu", op(g, "linear", x, w)), t), r)  # act -> mul -> residual
    z = op(g, "mul", op(g, "linear", x, w), s)  # a broadcast [N] operand: not the output's shape
    m = op(g, "mul", op(g, "mul", op(g, "linear", x, w), t), t)  # one tensor mul per epilogue
    g.set_outputs([y, z, m])
    part = partition(g)
    assert kinds(part) == [("gemm", ["linear", "relu", "mul", "add"]), ("gemm", ["linear"]), ("pointwise", ["mul"]),
                           ("gemm", ["linear", "mul"]), ("pointwise", ["mul"])]
    assert part.groups[0].params["mul"] is t and part.groups[0].params["residual"] is r


def test_swiglu_codegen_passes_mul_to_the_gemm():
    from fxforge.codegen import generate_source

    g = Graph()
    x, wg, wu = inputs(g, (2, 5, 16), (24, 16), (24, 16))
    g.set_outputs([op(g, "mul", op(g, "silu", op(g, "linear", x, wg)), op(g, "linear", x, wu))])
    source, infos, _, _ = generate_source(fuse(g))
    assert [i.kind for i in infos] == ["gemm", "gemm"]
    assert "mul=" in source.split("def run(")[1]


def test_horizontal_fusion_of_independent_trees_with_a_common_input():
    g = Graph()
    x, y, z = inputs(g, (4, 8), (4, 8), (8,))
    c, s = op(g, "cos", x), op(g, "sin", x)  # same shape, common input x: one kernel, two outputs
    e = op(g, "exp", y)  # no common input: its own kernel
    g.set_outputs([c, op(g, "mul", s, z), e])
    part = partition(g)
    assert kinds(part) == [("pointwise", ["exp"]), ("pointwise", ["cos", "sin", "mul"])]
    merged = part.groups[1]
    assert merged.outputs == [c, merged.ops[-1].result] and merged.params["trees"] == 2
    assert [v.name for v in merged.inputs] == ["x0", "x2"]
    assert part.stats()["kernels"] == 2


def test_horizontal_fusion_respects_dependencies_order_and_shapes():
    g = Graph()
    x, w = inputs(g, (4, 8), (8, 8))
    a = op(g, "exp", x)
    b = op(g, "add", op(g, "sin", x), a)  # reads a: depends on it
    d = op(g, "linear", a, w)  # a read before the last tree (c): merging a into c would be too late
    c = op(g, "cos", x)
    col = op(g, "neg", op(g, "slice", x, dim=1, start=0, end=1))  # another shape
    g.set_outputs([b, d, c, col, op(g, "add", d, c)])
    part = partition(g)
    groups = kinds(part)
    assert ("pointwise", ["exp"]) in groups and ("pointwise", ["neg"]) in groups
    assert all(len(grp.outputs) == 1 for grp in part.groups if grp.kind == "pointwise" and "neg" in grp.describe())
    exp_group = next(grp for grp in part.groups if grp.describe() == "pointwise[exp]")
    assert len(exp_group.outputs) == 1
    # sin+add (reads a) and cos share x and are independent: they may merge, but never with exp
    assert ("pointwise", ["sin", "add", "cos"]) in groups


def test_llama_cos_and_sin_share_one_kernel():
    model = zoo.build("llama")
    compiled = fxforge.compile_aot(model, (zoo.example_input("llama", batch=1, seq=8),))
    described = [grp.describe() for grp in partition(compiled.graph).groups]
    # cos and sin of cat(f, f), f = position * inv_freq: the cat and f absorbed, one kernel for the tables
    assert "pointwise[cast, mul, cat, cos, sin]" in described and "gemm[linear, mul]" in described


def test_single_use_cat_fuses_into_its_pointwise_consumer_only():
    g = Graph()
    x, y = inputs(g, (4, 8), (4, 16))
    c = op(g, "cat", op(g, "neg", x), x, dim=1)
    shared = op(g, "cat", x, x, dim=1)  # two uses: not in either tree, read by both consumers
    g.set_outputs([op(g, "mul", c, y), op(g, "add", shared, y), op(g, "sub", shared, y)])
    part = partition(g)
    # three trees (the cat in the first), horizontally fused (all read y); the shared cat, read only
    # by that kernel, absorbed into it
    assert kinds(part) == [("pointwise", ["neg", "cat", "cat", "mul", "add", "sub"])]
    assert part.groups[0].params["trees"] == 3 and len(part.groups[0].outputs) == 3
    g.set_outputs([*g.outputs, shared])  # also a graph output: a host cat
    assert "cat: host torch.cat" in partition(g).host[id(shared.producer)]


def test_codegen_uses_the_partition_the_fuse_pass_left():
    from fxforge.codegen import generate_source
    from fxforge.ir.partition import PartitionError

    g = Graph()
    x, y = inputs(g, (8, 33), (8, 1))
    g.set_outputs([op(g, "mul", op(g, "softmax", x), y)])
    with pytest.raises(PartitionError, match="run the `fuse` pass"):
        generate_source(g)  # codegen never partitions by itself
    PassManager([FusePass()]).run(g)
    part = g.partition
    assert part is not None and generate_source(g)[2] is part
    g.add_op("exp", [x])  # the graph changed: the partition is stale, and codegen says so
    with pytest.raises(PartitionError, match="stale"):
        generate_source(g)
    assert generate_source(fuse(g))[2] is not part


def test_rms_norm_prologue_and_swiglu_epilogue_join_the_gemm():
    from fxforge.codegen import generate_source

    g = Graph()
    x, nw, w, wd = inputs(g, (2, 5, 16), (16,), (48, 16), (16, 24))
    y = op(g, "linear", op(g, "rms_norm", x, nw, eps=1e-5), w)  # [gate; up] of a normalised input
    gate, up = (g.add_op("slice", [y], {"dim": 2, "start": a, "end": b}).result for a, b in ((0, 24), (24, 48)))
    h = op(g, "mul", op(g, "silu", gate), up)
    g.set_outputs([op(g, "add", op(g, "linear", h, wd), x)])
    part = partition(g)
    assert kinds(part) == [("gemm", ["rms_norm", "linear", "slice", "slice", "silu", "mul"]), ("gemm", ["linear", "add"])]
    first = part.groups[0]
    assert first.anchor.opcode == "linear" and first.params["swiglu"] and first.params["norm"].opcode == "rms_norm"
    assert first.inputs[:2] == [x, nw] and first.outputs == [h]
    run = generate_source(fuse(g))[0].split("def run(")[1]
    assert "norm=(" in run and "1e-05)" in run and "swiglu=True" in run
    g.set_outputs([g.outputs[0], gate])  # the gate half read elsewhere: no SwiGLU epilogue, the norm stays fused
    part = partition(g)
    assert part.groups[0].params["norm"] is not None and not part.groups[0].params["swiglu"]


def test_a_multi_result_user_ends_the_gemm_epilogue():
    """A router GEMM feeding topk (two results; GPT-OSS, GraniteMoE) stays a GEMM alone: the epilogue walk used to
    ask topk for its single result and crash."""
    g = Graph()
    x, w = inputs(g, (4, 16), (8, 16))
    vals, idx = g.add_op("topk", [op(g, "linear", x, w)], {"k": 2}).results
    g.set_outputs([vals, idx])
    assert kinds(partition(g)) == [("gemm", ["linear"])]


def test_a_step_reading_an_earlier_member_of_a_later_rooted_group_runs_after_it():
    """A group launches at its root's place; an op between its members that reads one of their results (Ministral3's
    position-scaled q reads the roped q of rope_cache, rooted at its cache write) must wait for the group: it ran
    first, on a value not computed yet."""
    from fxforge.codegen.buffers import launch_steps
    from fxforge.ir.partition import KernelGroup, Partition

    g = Graph()
    (x,) = inputs(g, (4, 16))
    a = op(g, "neg", x)
    b = op(g, "exp", a)  # on the host, between the group's members, reading the group's first result
    c = op(g, "add", a, x)
    g.set_outputs([b, c])
    group = KernelGroup("pointwise", [a.producer, c.producer], [x], [a, c], "test")
    steps = launch_steps(g, Partition([group], {id(b.producer): "test"}))
    assert steps == [group, b.producer]
