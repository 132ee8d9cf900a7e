"""The `hadamard` op: orthonormal matrices for every supported size, the reference against an explicit
matrix product, shape errors naming valid sizes, and the text form round trip."""

import pytest
import torch

from fxforge.ir import Graph, ShapeError, TensorType, evaluate
from fxforge.ir.dtypes import DType
from fxforge.ir.hadamard import factor, hadamard_matrix, hadamard_ref, largest_block
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_graph


@pytest.mark.parametrize("n", [1, 2, 8, 12, 20, 28, 24, 40, 56, 64, 96, 112, 768])
def test_matrices_are_orthonormal_with_pm1_entries(n):
    m = hadamard_matrix(n)
    assert torch.allclose(m @ m.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(m.abs() * n ** 0.5, torch.ones(n, n, dtype=torch.float64))


def test_block_diagonal_reference_matches_explicit_product():
    x = torch.randn(3, 5, 96)
    y = hadamard_ref(x, block=24)
    mat = torch.block_diag(*[hadamard_matrix(24)] * 4)
    assert torch.allclose(y.double(), x.double() @ mat, atol=1e-5)
    assert torch.allclose(hadamard_ref(y, block=24).double(), x.double() @ mat @ mat, atol=1e-5)
    # orthogonal: a linear layer is unchanged when x and W's input dim are rotated alike
    w = torch.randn(7, 96)
    assert torch.allclose(y @ hadamard_ref(w, block=24).T, x @ w.T, atol=1e-4)


def test_sizes_and_errors():
    assert factor(688) is None and largest_block(688) == 16 and largest_block(768) == 768
    assert largest_block(768, 128) == 128
    g = Graph()
    x = g.add_input("x", TensorType((4, 688), DType.f32))
    with pytest.raises(ShapeError, match="688 is not 2\\^k"):
        g.add_op("hadamard", [x])
    with pytest.raises(ShapeError, match="does not divide"):
        g.add_op("hadamard", [x], {"block": 96})
    h = g.add_op("hadamard", [x], {"block": 16})
    g.set_outputs([h.result])
    g2 = parse_graph(print_graph(g))
    assert print_graph(g2) == print_graph(g)
    t = torch.randn(4, 688)
    assert torch.equal(evaluate(g2, [t])[0], hadamard_ref(t, block=16))
