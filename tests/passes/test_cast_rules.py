"""canonicalize's `CAST_RULES`: a float cast moves above exact data movement, to sources cast anyway (ERNIE 4.5's fp16
RoPE) or into the pointwise kernel behind a view (Ministral3's q scale); the values stay bit for bit."""

import torch
from test_canonicalize import F16, F32, I64, S0, B, canonicalize

from fxforge.passes import PassContext
from fxforge.passes.cse import CommonSubexpressionElimination
from fxforge.passes.dce import DeadCodeElimination
from fxforge.passes.fuse import partition


def _rope16(b, x, up: bool, dtype=F32):
    """ERNIE's `(x.float() * cos + rotate(x).float() * sin)`, the pairs rotated in x's dtype (x [2, 3, 8])."""
    pair = [b("reshape", v, shape=(2, 3, 4, 1)) for v in (b("neg", b("slice", x, dim=2, start=1, end=8, step=2)),
                                                            b("slice", x, dim=2, start=0, end=8, step=2))]
    rot = b("cast", b("reshape", b("cat", *pair, dim=3), shape=(2, 3, 8)), dtype=dtype)
    cos, sin = b.input("cos", (2, 3, 8), dtype), b.input("sin", (2, 3, 8), dtype)
    xf = b("cast", x, dtype=dtype) if up else b.input("xf", (2, 3, 8), dtype)
    return b("add", b("mul", xf, cos), b("mul", rot, sin))


def test_cast_of_a_rotation_reads_the_sources_cast_anyway():
    b = B()
    x = b.input("x", (2, 3, 8), F16)
    b.g.set_outputs([_rope16(b, x, up=True)])
    args = [torch.randn(2, 3, 8).half(), *torch.randn(2, 2, 3, 8)]
    assert canonicalize(b.g, args) == {"cast_to_sources": 1}
    for p in (CommonSubexpressionElimination(), DeadCodeElimination()):
        b.g = p.run(b.g, PassContext())
    (up,) = x.uses  # one cast of x: the rotation reads it (RoPE of cast(x, f32), as rope_forms knows it)
    assert up.opcode == "cast" and b.g.op_counts()["cast"] == 1 and b.g.op_counts()["neg"] == 1


def test_cast_stays_without_a_twin_or_when_integer():
    b = B()
    x = b.input("x", (2, 3, 8), F16)
    i = b.input("i", (2, 3, 8), I64)
    b.g.set_outputs([_rope16(b, x, up=False), b("cast", b("neg", i), dtype=F32), b("cast", i, dtype=F32)])
    args = [torch.randn(2, 3, 8).half(), torch.randint(-9, 9, (2, 3, 8)), *torch.randn(3, 2, 3, 8)]
    assert canonicalize(b.g, args) == {}


def test_cast_behind_a_view_joins_the_pointwise_kernel():
    """Ministral3's Llama-4 q scale: 1 + beta * log(1 + floor(pos / n)) in fp32, viewed [1, 1, T, 1], cast to fp16."""
    b = B()
    pos, q = b.input("pos", (S0,), I64), b.input("q", (1, 4, S0, 16), F16)
    one = b.full(1.0)
    s = b("add", b("mul", b("log", b("add", b("floor", b("div", pos, b.full(4, I64))), one)), b.full(0.1)), one)
    b.g.set_outputs([b("mul", q, b("cast", b("reshape", s, shape=(1, 1, S0, 1)), dtype=F16))])
    assert canonicalize(b.g, [torch.arange(5, 10), torch.randn(1, 4, 5, 16).half()]) == {"cast_before_view": 1}
    (cast,) = b.g.find("cast")
    (kernel,) = [grp for grp in partition(b.g).groups if cast in grp.ops]
    assert cast.operands[0].producer in kernel.ops and kernel.outputs == [cast.result]  # the scale's kernel, in fp16


def test_cast_of_a_view_of_no_pointwise_op_or_widening_stays():
    b = B()
    x = b.input("x", (S0, 16))
    w = b.const("w", torch.randn(8, 16))
    h = b.input("h", (S0, 16), F16)
    b.g.set_outputs([b("cast", b("reshape", b("linear", x, w), shape=(S0, 2, 4)), dtype=F16),
                     b("cast", b("reshape", b("exp", h), shape=(S0, 2, 8)), dtype=F32)])
    assert canonicalize(b.g, [torch.randn(3, 16), torch.randn(3, 16).half()]) == {}
