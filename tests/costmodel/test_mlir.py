"""torch-mlir op tokens of a real kernel group (optional dependency: skipped without it)."""

import pytest

import fxforge
from fxforge import testing
from fxforge.costmodel.mlir import group_tokens, tokens_of
from fxforge.ir.partition import check_partition


def test_tokens_of_text_counts_ops_and_loops():
    text = 'linalg.generic {iterator_types = ["parallel", "reduction"]} ... arith.addf %a arith.addf %b math.exp'
    assert tokens_of(text) == {"linalg.generic": 1, "arith.addf": 2, "math.exp": 1, "loops": 2}


def test_gemm_gelu_group_lowers_to_matmul_and_erf():
    pytest.importorskip("torch_mlir")
    m = testing.build("mlp")
    x = testing.example_input("mlp", batch=1, seq=4)
    graph = fxforge.compile_aot(m, (x,), executor="interpret", dynamic=False).program.graph
    up = next(g for g in check_partition(graph).groups if g.kind == "gemm")
    tokens = group_tokens(graph, up)
    assert tokens.get("linalg.matmul") == 1 and tokens.get("math.erf") == 1 and tokens["loops"] >= 2
