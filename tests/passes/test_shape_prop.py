"""Shape propagation: types re-inferred and put in normal form; a wrong declared type is an error."""

import pytest
import torch

from fxforge.ir import DType, Graph, OperandRef, TensorType, evaluate, sym, verify
from fxforge.passes import PassContext
from fxforge.passes.shape_prop import ShapePropagation, ShapePropError

F32 = DType.f32
S0, S1 = sym("s0"), sym("s1")


def test_expression_forms_are_normalised_and_numerics_unchanged():
    g = Graph()
    x = g.add_input("x", TensorType((S0, S1), F32))
    ones = g.add_op("full", [], {"shape": (S0, 1), "value": 1.0, "dtype": F32}).result
    wide = g.add_op("cat", [x, ones], {"dim": 1}).result
    flat = g.add_op("reshape", [wide], {"shape": (S0 * (S1 + 1),)}).result
    assert flat.type.shape == (S0 * (S1 + 1),)
    y = g.add_op("exp", [flat]).result
    ext = g.add_op("extern", [y], {"target": "aten.relu.default", "args": (OperandRef(0),)},
                   [TensorType((S0 * (S1 + 1),), F32)])
    g.set_outputs([ext.result])
    inp = torch.randn(2, 3)
    want = evaluate(g, [inp])
    ctx = PassContext()
    ShapePropagation().run(g, ctx)
    verify(g)
    assert flat.type.shape == (S0 * S1 + S0,) and y.type.shape == (S0 * S1 + S0,)
    assert ext.result.type.shape == (S0 * (S1 + 1),)  # externs keep their declared types
    assert ctx.stats == {"ops_checked": 5, "types_updated": 2}
    torch.testing.assert_close(evaluate(g, [inp]), want, atol=0, rtol=0)
    ShapePropagation().run(g, ctx)
    assert ctx.stats["types_updated"] == 0


def test_a_declared_type_that_disagrees_names_the_op():
    g = Graph()
    x = g.add_input("x", TensorType((S0, 8), F32))
    g.add_op("exp", [x], result_types=[TensorType((S0, 9), F32)], name="bad")
    with pytest.raises(ShapePropError, match=r"%bad = exp\(%x\).*declared f32\[s0, 9\] but its operands give f32\[s0, 8\]"):
        ShapePropagation().run(g, PassContext())


def test_operands_that_no_longer_fit_name_the_op():
    g = Graph()
    x = g.add_input("x", TensorType((4, 8), F32))
    w = g.add_input("w", TensorType((8, 3), F32))
    mm = g.add_op("matmul", [x, w])
    w.type = TensorType((7, 3), F32)  # an upstream change the matmul no longer fits
    with pytest.raises(ShapePropError, match="matmul.*do not fit"):
        ShapePropagation().run(g, PassContext())
    assert mm.result.type.shape == (4, 3)
