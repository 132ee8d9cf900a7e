"""CSE: duplicates merge (commutative operands too), exact attribute keys, random externs never merge."""

import torch

from fxforge.ir import DType, Graph, OperandRef, TensorType, evaluate, sym, verify
from fxforge.passes import PassContext
from fxforge.passes.cse import CommonSubexpressionElimination, may_merge

F32 = DType.f32
S0 = sym("s0")


def make():
    g = Graph()
    x = g.add_input("x", TensorType((S0, 8), F32))
    y = g.add_input("y", TensorType((S0, 8), F32))
    return g, x, y


def op(g, opcode, *xs, **attrs):
    return g.add_op(opcode, list(xs), attrs).result


def run(g, inputs=None):
    want = evaluate(g, inputs) if inputs is not None else None
    ctx = PassContext()
    CommonSubexpressionElimination().run(g, ctx)
    verify(g)
    if inputs is not None:
        for a, b in zip(evaluate(g, inputs), want, strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    return ctx.stats


def test_duplicates_merge_transitively_and_commutatively():
    g, x, y = make()
    a1, a2 = op(g, "add", x, y), op(g, "add", y, x)  # same value: IEEE add commutes
    e1, e2 = op(g, "exp", a1), op(g, "exp", a2)  # equal once a2 is a1
    s1, s2 = op(g, "sub", x, y), op(g, "sub", y, x)  # not equal
    r1 = op(g, "reshape", e1, shape=(S0, 2, 4))
    r2 = op(g, "reshape", e2, shape=(S0, 2, 4))
    g.set_outputs([r1, r2, s1, s2])
    stats = run(g, [torch.randn(3, 8), torch.randn(3, 8)])
    assert stats == {"merged": 3, "merged_by_opcode": {"add": 1, "exp": 1, "reshape": 1}}
    assert g.outputs[0] is g.outputs[1] and g.op_counts() == {"add": 1, "exp": 1, "reshape": 1, "sub": 2}


def test_attributes_must_be_exactly_equal():
    g, x, _ = make()
    fulls = [op(g, "full", shape=(), value=v, dtype=F32) for v in (0.0, -0.0, 0.0, 1, 1.0, True)]
    slices = [op(g, "slice", x, dim=1, start=0, end=4), op(g, "slice", x, dim=1, start=0, end=4, step=1),
              op(g, "slice", x, dim=1, start=0, end=4, step=2)]
    g.set_outputs(fulls + slices)
    stats = run(g, [torch.randn(2, 8), torch.randn(2, 8)])
    assert stats["merged_by_opcode"] == {"full": 1, "slice": 1}
    assert len({id(v) for v in g.outputs}) == 7  # 0.0 twice, and the two slices with step 1


def test_random_and_stateful_externs_never_merge_but_consts_do():
    g, x, _ = make()
    t = TensorType((S0, 8), F32)
    rand = [g.add_op("extern", [x], {"target": "aten.rand_like.default", "args": (OperandRef(0),)}, [t]) for _ in range(2)]
    drop = [g.add_op("extern", [x], {"target": "aten.native_dropout.default", "args": (OperandRef(0), 0.5, True)}, [t, t])
            for _ in range(2)]
    inplace = [g.add_op("extern", [x], {"target": "aten.relu_.default", "args": (OperandRef(0),)}, [t]) for _ in range(2)]
    pure = [g.add_op("extern", [x], {"target": "aten.erfinv.default", "args": (OperandRef(0),)}, [t]) for _ in range(2)]
    w = g.add_weight("w", torch.randn(8))
    consts = [op(g, "const", weight=w) for _ in range(2)]
    g.set_outputs([o.results[0] for o in rand + drop + inplace + pure] + consts)
    assert not any(may_merge(o) for o in rand + drop + inplace) and all(may_merge(o) for o in pure)
    stats = run(g)
    assert stats["merged_by_opcode"] == {"const": 1, "extern": 1}
    assert len(g.find("extern")) == 7 and len(g.find("const")) == 1


def test_fresh_tensors_written_in_place_never_merge():
    """Two `zeros` each scattered into in place (DeepSeek-V3's group mask, one per layer) stay two tensors: merged,
    the second scatter would read the first's write; a zeros only pure ops read still merges."""
    g, x, _ = make()
    t = TensorType((S0, 1), F32)
    zeros = [op(g, "full", shape=(S0, 1), value=0, dtype=F32) for _ in range(4)]
    idx = op(g, "full", shape=(S0, 1), value=0, dtype=DType.i64)
    scatters = [g.add_op("extern", [z, idx], {"target": "aten.scatter_.value",
                                              "args": (OperandRef(0), 1, OperandRef(1), v)}, [t]).result
                for z, v in zip(zeros[:2], (1.0, 2.0), strict=True)]
    g.set_outputs([*scatters, op(g, "exp", zeros[2]), op(g, "exp", zeros[3])])
    stats = run(g, [torch.randn(3, 8), torch.randn(3, 8)])
    assert stats["merged_by_opcode"] == {"full": 1, "exp": 1}
    assert [o.operands[0] for o in g.find("extern")][0] is not [o.operands[0] for o in g.find("extern")][1]
