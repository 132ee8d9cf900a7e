"""DCE: dead ops go (in one sweep, chains included), outputs and side effects stay (but not an in-place write nobody
sees: `unseen_write`), unused weights go."""

import pytest
import torch

from fxforge.ir import BlockFP, DType, Graph, OperandRef, TensorType, evaluate, sym, verify
from fxforge.passes import PassContext
from fxforge.passes.dce import DeadCodeElimination, has_side_effects, unseen_write

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


# -- unseen_write: an in-place write nobody can see (the router's div_ of its top-k values once moe_rules has replaced
# the experts that read them) goes; one that a later reader, an input, an output or another view sees stays ----------

def routed(where: str) -> tuple[Graph, object]:
    """x [s0, 6] -> topk (k=3) -> sum -> div_(vals, sum) whose result nobody reads; out = sum * 2 [+ what `where` adds].
    `where`: "fresh" (nothing else), "view" (the write lands through a view of vals that only the sum reads),
    "later" (an op after the write reads vals), "input" (the write is on x), "output" (vals is an output),
    "other_view" (a view of vals taken before the write is read after it), "weight" (the write is on a const)."""
    g = Graph()
    x = g.add_input("x", TensorType((S0, 6), F32))
    vals = g.add_op("topk", [x], {"k": 3}).results[0]
    target = {"input": x, "weight": op(g, "const", weight=g.add_weight("w", torch.randn(1, 6)))}.get(where, vals)
    if where == "view":
        target = op(g, "reshape", vals, shape=[S0, 3])
    early_view = op(g, "reshape", vals, shape=[3 * S0]) if where == "other_view" else None
    s = op(g, "sum", target, dims=[-1], keepdim=True)
    div = g.add_op("extern", [target, s], {"target": "aten.div_.Tensor", "args": (OperandRef(0), OperandRef(1))},
                   [target.type])
    outs = [op(g, "mul", s, op(g, "full", shape=(), value=2.0, dtype=F32))]
    if where == "later":
        outs.append(op(g, "neg", vals))
    elif where == "output":
        outs.append(vals)
    elif where == "other_view":
        outs.append(op(g, "neg", early_view))
    g.set_outputs(outs)
    verify(g)
    return g, div


@pytest.mark.parametrize("where,dropped", [("fresh", True), ("view", True), ("later", False), ("input", False),
                                           ("output", False), ("other_view", False), ("weight", False)])
def test_unseen_in_place_writes_are_dropped_and_seen_ones_stay(where, dropped):
    g, div = routed(where)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    want = evaluate(g, [x.clone()])
    order = {id(o): i for i, o in enumerate(g.ops)}
    assert unseen_write(div, {id(v) for v in g.outputs}, order) == dropped
    DeadCodeElimination().run(g, PassContext())
    verify(g)
    assert (div not in g.ops) == dropped
    if where != "weight":  # the reference's div_ wrote the weight's own tensor: a second evaluation reads another w
        for got, w in zip(evaluate(g, [x.clone()]), want, strict=True):
            torch.testing.assert_close(got, w, atol=0, rtol=0)


@pytest.mark.parametrize("target,args,kwargs,read,dropped", [
    ("aten.div_.Tensor", (0, 1), None, False, True),
    ("aten.div_.Tensor", (1, 0), None, False, False),  # writes operand 1
    ("aten.add_.Tensor", (0, 1), {"alpha": 2}, False, False),  # kwargs: not looked into
    ("aten.mul_.Tensor", (0, 1), None, True, False),  # its result is read
    ("aten.div.Tensor", (0, 1), None, False, False),  # not in place (pure: dropped anyway, not by this rule)
])
def test_unseen_write_is_an_unread_in_place_aten_op_on_operand_0(target, args, kwargs, read, dropped):
    g = Graph()
    a, b = (op(g, "exp", g.add_input(n, TensorType((4,), F32))) for n in "ab")
    early = op(g, "sum", a, dims=[0])
    attrs = {"target": target, "args": tuple(map(OperandRef, args)), **({"kwargs": kwargs} if kwargs else {})}
    w = g.add_op("extern", [a, b], attrs, [TensorType((4,), F32)])
    g.set_outputs([early, b] + ([op(g, "neg", w.result)] if read else []))
    assert unseen_write(w, {id(v) for v in g.outputs}, {id(o): i for i, o in enumerate(g.ops)}) == dropped
