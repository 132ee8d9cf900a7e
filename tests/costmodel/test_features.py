"""Features of real kernel groups (the zoo MLP, captured and partitioned), launch features, the bag of ops."""

import math

import pytest

import fxforge
from fxforge import testing
from fxforge.costmodel.features import gemm_launch, group_features, kernel_features, launch_features, op_bag
from fxforge.ir.partition import check_partition


@pytest.fixture(scope="module")
def graphs():
    m = testing.build("mlp")
    x = testing.example_input("mlp", batch=1, seq=8)
    out = {}
    for scheme in (None, "w4a16-int4"):
        c = fxforge.compile_aot(m, (x,), executor="interpret", dynamic=False, quantize=scheme, quantize_method="rtn")
        out[scheme] = c.program.graph
    return out


def _gemms(graph):
    return [g for g in check_partition(graph).groups if g.kind == "gemm"]


def test_gemm_group_flops_bytes_and_shape(graphs):
    up = _gemms(graphs[None])[0]  # linear 64 -> 256 over 8 tokens, GELU epilogue
    f = group_features(graphs[None], up)
    assert f["log_M"] == pytest.approx(math.log2(9)) and f["log_N"] == pytest.approx(math.log2(257))
    assert f["log_K"] == pytest.approx(math.log2(65))
    flops = 2 * 8 * 256 * 64 + 8 * 256  # the GEMM and one GELU per output element
    assert 2 ** f["log_flops"] - 1 == pytest.approx(flops)
    moved = 4 * (8 * 64 + 256 * 64 + 256 + 8 * 256)  # x, W, bias, out in fp32
    assert 2 ** f["log_bytes"] - 1 == pytest.approx(moved)
    assert f["intensity"] == pytest.approx(flops / moved)
    assert f["kind=gemm"] == 1 and f["op:linear"] == 1 and f["op:gelu"] == 1 and f["n_ops"] == 2


def test_quantized_group_reads_fewer_bytes_and_names_its_scheme(graphs):
    dense, quant = group_features(graphs[None], _gemms(graphs[None])[0]), None
    q = _gemms(graphs["w4a16-int4"])[0]
    quant = group_features(graphs["w4a16-int4"], q)
    assert quant["log_in_bytes"] < dense["log_in_bytes"]
    assert quant["n_encoded"] >= 1 and quant["min_bits"] == 4
    bag = op_bag(graphs["w4a16-int4"], q)
    assert bag["op:qlinear"] == 1 and bag["scheme:w4a16-int4"] == 1 and bag["enc:quantized"] == 1


def test_launch_features_from_spec_and_from_blocks():
    spec = {"signature": {"a": "*fp16", "b": "*fp16", "M": "i32"}, "constexprs": {"BLOCK_M": 64, "BLOCK_N": 32},
            "num_warps": 8, "num_stages": 2}
    f = launch_features(spec)
    assert f["n_ptr_args"] == 2 and f["n_scalar_args"] == 1 and f["ptr_min_bits"] == 16
    assert f["log_BLOCK_M"] == pytest.approx(math.log2(65)) and f["num_warps"] == 8
    g = gemm_launch(1, 4096, 4096, "float16")  # decode: a 16-row tile
    assert g["log_BLOCK_M"] == pytest.approx(math.log2(17))


def test_symbolic_dims_bound_for_selection():
    m = testing.build("mlp")
    x = testing.example_input("mlp", batch=1, seq=8)
    c = fxforge.compile_aot(m, (x,), executor="interpret", quantize_method="rtn")  # dynamic seq
    graph = c.program.graph
    up = _gemms(graph)[0]
    sym = next(d for d in graph.inputs[0].type.shape if not isinstance(d, int))
    at_32 = kernel_features(graph, up, None, 90, bindings={sym: 32})
    at_1 = kernel_features(graph, up, None, 90, bindings={sym: 1})
    assert at_32["log_M"] == pytest.approx(math.log2(33)) and at_1["log_M"] == pytest.approx(1.0)
    assert at_32["log_flops"] > at_1["log_flops"]
