"""DCE: dead ops go (in one sweep, chains included), outputs and side effects stay, unused weights go."""

import torch

from fxforge.ir import BlockFP, DType, Graph, OperandRef, TensorType, evaluate, sym, verify
from fxforge.passes import PassContext
from fxforge.passes.dce import DeadCodeElimination, has_side_effects

F32 = DType.f32
S0 = sym("s0")


def op(g, opcode, *xs, **attrs):
    return g.add_op(opcode, list(xs), attrs).result


def test_dead_chains_and_unused_weights_are_removed():
    g = Graph()
    x = g.add_input("x", TensorType((S0, 4), F32))
    used = op(g, "const", weight=g.add_weight("used", torch.randn(4)))
    dead_w = op(g, "const", weight=g.add_weight("dead", torch.randn(4)))
    g.add_weight("never", torch.randn(10))
    chain = op(g, "exp", op(g, "mul", x, dead_w))
    op(g, "neg", chain)
    out = op(g, "add", x, used)
    g.set_outputs([out, x])
    inp = torch.randn(3, 4)
    want = evaluate(g, [inp])
    ctx = PassContext()
    DeadCodeElimination().run(g, ctx)
    verify(g)
    assert ctx.stats == {"ops_removed": 4, "weights_removed": 2, "weight_bytes_freed": 56}
    assert g.op_counts() == {"add": 1, "const": 1}
    assert set(g.weights) == {"used"}
    torch.testing.assert_close(evaluate(g, [inp]), want, atol=0, rtol=0)


def test_weights_named_by_a_live_encoding_stay():
    g = Graph()
    for name in ("perm", "perm_of_dead"):
        g.add_weight(name, torch.arange(32))
    g.add_weight("live", torch.randn(4, 32))
    g.add_weight("dead", torch.randn(4, 32))
    g.weights["live"].encoding = BlockFP("mxfp8", perm="perm")
    g.weights["dead"].encoding = BlockFP("mxfp8", perm="perm_of_dead")
    g.set_outputs([op(g, "const", weight="live")])
    op(g, "const", weight="dead")
    DeadCodeElimination().run(g, PassContext())
    assert set(g.weights) == {"live", "perm"}


def test_side_effecting_externs_stay():
    g = Graph()
    x = g.add_input("x", TensorType((4,), F32))
    t = TensorType((4,), F32)
    inplace = g.add_op("extern", [x], {"target": "aten.relu_.default", "args": (OperandRef(0),)}, [t])
    pure = g.add_op("extern", [x], {"target": "aten.relu.default", "args": (OperandRef(0),)}, [t])
    g.set_outputs([x])
    assert has_side_effects(inplace) and not has_side_effects(pure)
    DeadCodeElimination().run(g, PassContext())
    assert g.ops == [inplace]
