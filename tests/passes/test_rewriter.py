"""The pattern rewriter: matching, single use, the greedy driver's fixpoint and statistics."""

import pytest
import torch

from fxforge.ir import DType, Graph, TensorType, evaluate, sym, verify
from fxforge.passes.rewriter import P, RewriteError, Rule, State, apply_rules, rule

F32 = DType.f32


def graph_with(shape=(4, 8)):
    g = Graph()
    x = g.add_input("x", TensorType(shape, F32))
    return g, x


def op(g, opcode, *xs, **attrs):
    return g.add_op(opcode, list(xs), attrs).result


def matches(pattern, value):
    return [dict(s.bindings) for s in pattern.match(value, State())]


def test_op_pattern_binds_operands_and_checks_attrs():
    g, x = graph_with()
    w = g.add_weight("w", torch.randn(16, 8))
    wc = op(g, "const", weight=w)
    y = op(g, "matmul", x, op(g, "permute", wc, dims=(1, 0)))
    pat = P.op("matmul", P.any("x"), P.op("permute", P.const("w"), dims=(1, 0)))
    assert matches(pat, y) == [{"x": x, "w": wc}]
    assert matches(P.op("matmul", P.any(), P.op("permute", P.any(), dims=(0, 1))), y) == []
    assert matches(P.op("matmul", P.any(), P.op("permute", P.any(), dims=lambda d: d[0] == 1)), y)
    assert matches(P.op(("add", "matmul"), name="m"), y) == [{"m": y}]
    assert matches(P.op("matmul", P.const(), P.any()), y) == []


def test_a_name_bound_twice_must_bind_the_same_value():
    g, x = graph_with()
    z = op(g, "neg", x)
    same = op(g, "mul", x, op(g, "sigmoid", x))
    other = op(g, "mul", z, op(g, "sigmoid", x))
    pat = P.op("mul", P.any("x"), P.op("sigmoid", P.any("x")))
    assert matches(pat, same) == [{"x": x}]
    assert matches(pat, other) == []


def test_commutative_backtracks_through_nested_alternatives():
    g, x = graph_with()
    one = op(g, "full", shape=(), value=1.0, dtype=F32)
    inner = op(g, "add", one, x)  # the full is first: only the swapped order matches
    outer = op(g, "mul", inner, x)
    pat = P.op("mul", P.any("x"), P.op("add", P.any("x"), P.full("c", value=1.0), commutative=True), commutative=True)
    assert matches(pat, outer) == [{"x": x, "c": one}]
    assert matches(P.op("mul", P.any("x"), P.op("add", P.any("x"), P.full())), outer) == []


def test_full_matches_unit_shapes_and_values_only():
    g, x = graph_with()
    scalar = op(g, "full", shape=(), value=2, dtype=F32)
    unit = op(g, "full", shape=(1, 1), value=2, dtype=F32)
    big = op(g, "full", shape=(4, 8), value=2, dtype=F32)
    assert matches(P.full("c", value=2), scalar) and matches(P.full("c", value=2), unit)
    assert not matches(P.full("c"), big)
    assert not matches(P.full("c", value=3), scalar)
    assert matches(P.full("c", value=lambda v: v > 1), scalar)


@rule(P.op("neg", P.op("neg", P.any("x"))))
def double_neg(g, op_, b):
    return b["x"]


def test_driver_reaches_a_fixpoint_and_counts_rewrites():
    g, x = graph_with((sym("s0"), 8))
    y = x
    for _ in range(5):
        y = op(g, "neg", y)
    out = op(g, "exp", y)
    g.set_outputs([out])
    inp = torch.randn(3, 8)
    want = evaluate(g, [inp])[0]
    stats = apply_rules(g, [double_neg])
    verify(g)
    assert stats == {"double_neg": 2}
    assert g.op_counts() == {"exp": 1, "neg": 1}
    torch.testing.assert_close(evaluate(g, [inp])[0], want, rtol=0, atol=0)
    assert apply_rules(g, [double_neg]) == {}


def _fuse_exp_neg(g, op_, b):
    return g.insert_before(op_, "sigmoid", [b["x"]]).result  # nonsense math, but a visible rewrite


def test_single_use_blocks_rewrites_that_would_duplicate_work():
    g, x = graph_with()
    inner = op(g, "neg", x)
    out = op(g, "exp", inner)
    g.set_outputs([out, inner])  # inner escapes as an output
    strict = Rule(P.op("exp", P.op("neg", P.any("x"))), _fuse_exp_neg, "fuse", single_use=True)
    assert apply_rules(g, [strict]) == {}
    per_node = Rule(P.op("exp", P.op("neg", P.any("x"), single_use=True)), _fuse_exp_neg, "fuse")
    assert apply_rules(g, [per_node]) == {}
    loose = Rule(P.op("exp", P.op("neg", P.any("x"))), _fuse_exp_neg, "fuse")
    assert apply_rules(g, [loose]) == {"fuse": 1}
    verify(g)
    assert g.op_counts() == {"neg": 1, "sigmoid": 1}  # the shared neg stays for its other use


def test_uses_inside_the_match_count_as_single_use():
    g, x = graph_with()
    e = op(g, "exp", x)
    out = op(g, "mul", e, op(g, "sigmoid", e))  # e is used twice, both inside the match
    g.set_outputs([out])
    r = Rule(P.op("mul", P.op("exp", P.any("x"), name="e"), P.op("sigmoid", P.any("e"))),
             lambda g_, o, b: g_.insert_before(o, "silu", [b["e"]]).result, "silu", single_use=True)
    assert apply_rules(g, [r]) == {"silu": 1}
    verify(g)
    assert g.op_counts() == {"exp": 1, "silu": 1}


def test_either_matches_its_first_matching_alternative_after_one_check():
    g, x = graph_with()
    e = op(g, "exp", op(g, "neg", x))
    s = op(g, "sigmoid", x)
    checked = []
    pat = P.either(P.op("exp", P.op("abs", P.any("x"))), P.op("exp", P.op("neg", P.any("x"), name="n")),
                   check=lambda v: checked.append(v) or True)
    assert matches(pat, e) == [{"x": x, "n": e.producer.operands[0]}] and checked == [e]
    assert matches(pat, s) == [] and pat.opcodes == ("exp",)
    assert matches(P.either(*pat.alternatives, check=lambda v: False), e) == []
    g.set_outputs([e, s])  # as a rule: the matched neg is erased with the exp
    r = Rule(pat, lambda g_, o, b: g_.insert_before(o, "sigmoid", [b["x"]]).result, "either")
    assert apply_rules(g, [r]) == {"either": 1}
    verify(g)
    assert g.op_counts() == {"sigmoid": 2}


def test_first_matching_rule_wins_and_tuples_are_rules():
    g, x = graph_with()
    g.set_outputs([op(g, "neg", op(g, "neg", x))])
    first = Rule(P.op("neg", P.op("neg", P.any("x"))), lambda g_, o, b: b["x"], "first")
    second = (P.op("neg", P.op("neg", P.any("x"))), lambda g_, o, b: g_.insert_before(o, "abs", [b["x"]]).result, "second")
    assert apply_rules(g, [first, second]) == {"first": 1}
    assert g.ops == [] and g.outputs == [x]


def test_rule_errors_are_reported():
    g, x = graph_with()
    g.set_outputs([op(g, "neg", x)])
    wrong_type = Rule(P.op("neg", P.any("x")), lambda g_, o, b: g_.insert_before(o, "cast", [b["x"]], {"dtype": DType.f16}).result)
    with pytest.raises(RewriteError, match="keep the type"):
        apply_rules(g, [wrong_type])

    g, x = graph_with()
    g.set_outputs([op(g, "neg", x)])

    def builds_then_declines(g_, o, b):
        g_.insert_before(o, "abs", [b["x"]])
        return None

    with pytest.raises(RewriteError, match="returned None"):
        apply_rules(g, [Rule(P.op("neg", P.any("x")), builds_then_declines)])

    g, x = graph_with()
    g.set_outputs([op(g, "neg", x)])
    flip = Rule(P.op("neg", P.any("x")), lambda g_, o, b: g_.insert_before(o, "neg", [b["x"]]).result, "flip")
    with pytest.raises(RewriteError, match="fixpoint"):
        apply_rules(g, [flip], max_iterations=3)
    with pytest.raises(TypeError, match="root"):
        Rule(P.any("x"), lambda *a: None)
