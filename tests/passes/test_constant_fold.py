"""Constant folding: uniform results become `full`s, small ones weights, big ones nothing."""

import torch

from fxforge.ir import DType, Graph, OperandRef, TensorType, evaluate, sym, verify
from fxforge.passes import PassContext
from fxforge.passes.constant_fold import ConstantFold, is_uniform

F32, I64, BOOL = DType.f32, DType.i64, DType.bool
S0 = sym("s0")


def op(g, opcode, *xs, **attrs):
    return g.add_op(opcode, list(xs), attrs).result


def full(g, value, dtype=F32, shape=()):
    return op(g, "full", shape=shape, value=value, dtype=dtype)


def fold(g, inputs, **options):
    want = evaluate(g, inputs)
    ctx = PassContext(options={f"constant_fold.{k}": v for k, v in options.items()})
    ConstantFold().run(g, ctx)
    verify(g)
    for a, b in zip(evaluate(g, inputs), want, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True)
    return ctx.stats


def test_scalar_arithmetic_collapses_to_a_full():
    g = Graph()
    x = g.add_input("x", TensorType((S0, 4), F32))
    eps = op(g, "add", op(g, "mul", full(g, 2.0), full(g, 3, I64)), full(g, 1e-6, DType.f64))
    big = op(g, "expand", op(g, "cast", full(g, 1, I64), dtype=F32), shape=(64, 64))  # uniform: any size
    g.set_outputs([op(g, "add", x, eps), big])
    stats = fold(g, [torch.randn(2, 4)])
    assert stats["folded"] == 4 and stats["to_full"] == 4 and stats["to_weight"] == 0
    assert g.outputs[1].producer.opcode == "full" and g.outputs[1].producer.attrs["value"] == 1.0
    assert g.op_counts() == {"add": 1, "full": 8}  # 4 folded + the 4 operands left dead for DCE
    eps_full = g.find("add")[0].operands[1]
    assert eps_full.producer.attrs["value"] == 6.000001 and eps_full.type.dtype == DType.f64  # rank-0 f32 + f64: f64


def test_non_uniform_results_become_small_weights_chained():
    g = Graph()
    x = g.add_input("x", TensorType((8, 8), F32))
    pos = op(g, "arange", end=8)
    mask = op(g, "le", op(g, "reshape", pos, shape=(1, 8)), op(g, "reshape", pos, shape=(8, 1)))  # causal
    bias = op(g, "where", mask, full(g, 0.0), full(g, float("-inf")))
    g.set_outputs([op(g, "add", x, bias)])
    stats = fold(g, [torch.randn(8, 8)])
    assert stats["folded"] == 4 and stats["to_weight"] == 4
    (add,) = g.find("add")
    folded = add.operands[1].producer
    assert folded.opcode == "const" and folded.attrs["weight"].startswith("folded.")
    assert torch.equal(g.weights[folded.attrs["weight"]].data, torch.zeros(8, 8).masked_fill(~torch.ones(8, 8).tril().bool().T, float("-inf")).T)


def test_size_threshold_and_views_of_model_weights():
    g = Graph()
    x = g.add_input("x", TensorType((4, 100), F32))
    big = op(g, "const", weight=g.add_weight("big", torch.randn(100, 100)))
    small = op(g, "const", weight=g.add_weight("small", torch.randn(100)))
    transposed = op(g, "permute", big, dims=(1, 0))  # never materialise a transposed copy
    flipped = op(g, "permute", op(g, "reshape", small, shape=(10, 10)), dims=(1, 0))  # a view of a model weight: kept
    scaled_big = op(g, "mul", big, full(g, 2.0))  # reads a const above the threshold: not constant
    scaled = op(g, "mul", small, full(g, 2.0))  # 100 elements: folds
    g.set_outputs([op(g, "matmul", x, transposed), flipped, scaled_big, scaled])
    stats = fold(g, [torch.randn(4, 100)])
    assert stats["by_opcode"] == {"mul": 1} and stats["skipped_views"] == 1
    assert len(g.find("permute")) == 2 and len(g.find("mul")) == 1
    assert [n for n in g.weights if n not in ("big", "small")] == [g.outputs[3].producer.attrs["weight"]]

    g2 = Graph()
    a = op(g2, "arange", end=5000, dtype=F32)
    g2.set_outputs([op(g2, "mul", a, full(g2, 2.0))])
    assert fold(g2, [], max_elements=4096)["skipped_too_large"] == 1
    assert fold(g2, [], max_elements=5000)["to_weight"] == 1


def test_externs_and_symbolic_shapes_are_not_folded():
    g = Graph()
    x = g.add_input("x", TensorType((S0,), F32))
    c = full(g, 3.0, shape=(4,))
    ext = g.add_op("extern", [c], {"target": "aten.erfinv.default", "args": (OperandRef(0),)}, [TensorType((4,), F32)])
    sym_full = full(g, 1.0, shape=(S0,))
    g.set_outputs([ext.result, op(g, "neg", sym_full), op(g, "add", x, sym_full)])
    stats = fold(g, [torch.randn(3)])
    assert stats["folded"] == 0


def test_uniformity_is_bitwise():
    assert is_uniform(torch.full((3,), float("nan")))
    assert not is_uniform(torch.tensor([0.0, -0.0]))
    assert is_uniform(torch.tensor([True, True])) and not is_uniform(torch.tensor([1, 2]))
    g = Graph()
    signs = op(g, "mul", op(g, "cast", op(g, "arange", start=-1, end=1), dtype=F32), full(g, 0.0))  # [-0.0, 0.0]
    g.set_outputs([signs])
    assert fold(g, [])["to_weight"] == 2
    assert torch.equal(torch.signbit(evaluate(g, [])[0]), torch.tensor([True, False]))
