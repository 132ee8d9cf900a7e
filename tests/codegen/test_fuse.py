"""The `fuse` partition: kernel groups by the rule table, on hand-built and captured graphs."""

from __future__ import annotations

import torch

import fxforge
from fxforge import zoo
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph
from fxforge.ir.optable import OperandRef
from fxforge.ir.types import TensorType
from fxforge.ir.verify import verify
from fxforge.passes.fuse import partition
from fxforge.passes.manager import PASSES, PassManager, default_pipeline


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
    y = op(g, "linear", x, w, b)  # bias inside the linear: a later scale cannot move before it
    z = op(g, "mul", y, op(g, "full", shape=(), value=2.0, dtype=DType.f32))
    g.set_outputs([z])
    assert kinds(partition(g)) == [("gemm", ["linear"]), ("pointwise", ["mul"])]


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


def test_multi_use_values_are_not_fused_inward():
    g = Graph()
    (x,) = inputs(g, (4, 8))
    a = op(g, "exp", x)
    g.set_outputs([op(g, "add", op(g, "sin", a), op(g, "cos", a))])
    assert kinds(partition(g)) == [("pointwise", ["exp"]), ("pointwise", ["sin", "cos", "add"])]


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
    import fxforge.passes.fuse  # noqa: F401  (registers the pass)

    assert "fuse" in PASSES and "fuse" not in default_pipeline()
    model = zoo.build("mlp")
    compiled = fxforge.compile_aot(model, (zoo.example_input("mlp", batch=2, seq=8),))
    graph = compiled.graph
    before = str(graph)
    pm = PassManager(["fuse"], verify=True)
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


def test_single_use_cat_fuses_into_its_pointwise_consumer_only():
    g = Graph()
    x, y = inputs(g, (4, 8), (4, 16))
    c = op(g, "cat", op(g, "neg", x), x, dim=1)
    shared = op(g, "cat", x, x, dim=1)  # two uses: a host cat, read by both consumers
    g.set_outputs([op(g, "mul", c, y), op(g, "add", shared, y), op(g, "sub", shared, y)])
    part = partition(g)
    assert kinds(part) == [("pointwise", ["neg", "cat", "mul"]), ("pointwise", ["add"]), ("pointwise", ["sub"])]
    assert "cat" in [o.opcode for o in g.ops if id(o) in part.host]


def test_codegen_uses_the_partition_the_fuse_pass_left():
    from fxforge.codegen import generate_source

    g = Graph()
    x, y = inputs(g, (8, 33), (8, 1))
    g.set_outputs([op(g, "mul", op(g, "softmax", x), y)])
    PassManager(["fuse"]).run(g)
    part = g.kernel_groups
    assert generate_source(g)[2] is part
    g.add_op("exp", [x])  # the graph changed: the stale partition is not used
    assert generate_source(g)[2] is not part
