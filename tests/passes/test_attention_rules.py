"""HF's eager attention written out as ops becomes the `attention` op (canonicalize's ATTENTION_RULES),
soft-capped (Gemma2) or not, fp32 or with the fp32 softmax between casts; the reference evaluation of the
op gives what the written-out graph gave. Scores read elsewhere keep the graph as it is."""

from __future__ import annotations

import pytest
import torch

from fxforge.ir import DType, Graph, TensorType, evaluate, sym, verify
from fxforge.passes import PassContext
from fxforge.passes.canonicalize import Canonicalize

S = sym("s0")


def eager_graph(dtype: DType, cap: float | None, mask: bool, keep_scores: bool = False) -> Graph:
    """HF's `eager_attention_forward` as captured: q [1, 4, s, 16], k/v [1, 4, 24, 16], mask [1, 1, s, 24]."""
    g = Graph()
    q = g.add_input("q", TensorType((1, 4, S, 16), dtype))
    k, v = (g.add_input(n, TensorType((1, 4, 24, 16), dtype)) for n in ("k", "v"))
    m = g.add_input("mask", TensorType((1, 1, S, 24), dtype)) if mask else None

    def op(opcode, *xs, **attrs):
        return g.add_op(opcode, list(xs), attrs).result

    def full(value):
        return op("full", shape=(), value=value, dtype=DType.f64)

    s = op("mul", op("matmul", q, op("permute", k, dims=(0, 1, 3, 2))), full(0.25))
    scores = s
    if cap is not None:
        c = full(cap)
        s = op("mul", op("tanh", op("div", s, c)), c)
    if m is not None:
        s = op("add", s, m)
    p = op("softmax", op("cast", s, dtype=DType.f32) if dtype != DType.f32 else s, dim=3)
    p = op("cast", p, dtype=dtype) if dtype != DType.f32 else p
    g.set_outputs([op("matmul", p, v)] + ([scores] if keep_scores else []))
    return g


def inputs(dtype: DType, s: int = 5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 16, generator=gen).to(dtype.torch) * 3 for n in (s, 24, 24))
    mask = torch.where(torch.rand(1, 1, s, 24, generator=gen) > 0.3, 0.0, torch.finfo(dtype.torch).min).to(dtype.torch)
    return [q, k, v, mask]


@pytest.mark.parametrize("dtype,cap,mask", [(DType.f32, 5.0, True), (DType.f16, 5.0, True), (DType.f32, None, False)])
def test_eager_attention_becomes_the_attention_op(dtype, cap, mask):
    g = eager_graph(dtype, cap, mask)
    xs = inputs(dtype)[: 4 if mask else 3]
    want = evaluate(g, xs)[0]
    Canonicalize().run(g, PassContext())
    verify(g)
    counts = g.op_counts()
    assert counts.get("attention") == 1 and not {"softmax", "tanh", "matmul"} & set(counts), counts
    (att,) = g.find("attention")
    assert att.attrs["scale"] == 0.25 and att.attrs["softcap"] == cap and len(att.operands) == 3 + mask
    got = evaluate(g, xs)[0]
    tol = 1e-3 if dtype == DType.f16 else 1e-5  # sdpa without a cap: rounding differs slightly
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
    if cap is not None:  # the cap matters on these scores: the op without it gives other numbers
        att.attrs = {**att.attrs, "softcap": None}
        assert (evaluate(g, xs)[0].float() - want.float()).abs().max() > 100 * tol


def test_scores_read_elsewhere_stay_written_out():
    g = eager_graph(DType.f32, 5.0, True, keep_scores=True)
    Canonicalize().run(g, PassContext())
    assert "attention" not in g.op_counts()


def _sink_inputs(dtype: DType):
    """A graph with inputs q [1, 4, S, 16], k, v [1, 4, 24, 16], an additive mask [1, 1, S, 24] and sinks [4] of
    `dtype`, and a helper adding an op and returning its result."""
    g = Graph()
    shapes = {"q": (1, 4, S, 16), "k": (1, 4, 24, 16), "v": (1, 4, 24, 16), "mask": (1, 1, S, 24), "sinks": (4,)}
    xs = [g.add_input(n, TensorType(shape, dtype)) for n, shape in shapes.items()]

    def op(opcode, *args, **attrs):
        return g.add_op(opcode, list(args), attrs).result

    return g, xs, op


def sink_graph(use_indices: bool = False, shifted: bool = True) -> Graph:
    """GPT-OSS's eager attention with sinks as captured (its GQA head repeat aside): the sink column [1, 4, s, 1]
    joins the masked scores, the row max is subtracted (not by Flint: `shifted` False), softmax, the sink column
    dropped."""
    g, (q, k, v, m, sinks), op = _sink_inputs(DType.f32)
    s = op("add", op("mul", op("matmul", q, op("permute", k, dims=(0, 1, 3, 2))), op("full", shape=(), value=0.25, dtype=DType.f64)), m)
    col = op("expand", op("reshape", sinks, shape=(1, 4, 1, 1)), shape=(1, 4, S, 1))
    cat = op("cat", s, col, dim=3)
    mx = g.add_op("max_dim", [cat], {"dim": -1, "keepdim": True}) if shifted else None
    p = op("slice", op("softmax", op("sub", cat, mx.results[0]) if shifted else cat, dim=3), dim=3, start=0, end=24)
    g.set_outputs([op("matmul", p, v)] + ([mx.results[1]] if use_indices else []))
    return g


@pytest.mark.parametrize("shifted", [True, False])
def test_sinks_become_the_attention_ops_sinks(shifted):
    g = sink_graph(shifted=shifted)
    xs = inputs(DType.f32)
    xs.append(torch.linspace(-1.0, 4.0, 4))
    want = evaluate(g, xs)[0]
    Canonicalize().run(g, PassContext())
    verify(g)
    counts = g.op_counts()  # views of k and of the sinks are left to dce
    assert counts.get("attention") == 1 and not {"softmax", "max_dim", "cat", "sub", "slice", "matmul"} & set(counts), counts
    (att,) = g.find("attention")
    assert att.attrs["sinks"] and att.operands[3] is g.inputs[3] and att.operands[4] is g.inputs[4]
    torch.testing.assert_close(evaluate(g, xs)[0], want, atol=1e-5, rtol=0)
    xs[4] = torch.full((4,), -1e4)  # sinks that weigh nothing: the op gives sdpa's result, far from the one above
    assert (evaluate(g, xs)[0] - want).abs().max() > 0.05


def test_sinks_with_the_max_indices_read_stay_written_out():
    g = sink_graph(use_indices=True)
    Canonicalize().run(g, PassContext())
    assert "attention" not in g.op_counts()


def lse_sink_graph(dtype: DType, read_lse: bool = False) -> Graph:
    """Granite-SWA's eager attention with sinks as captured: softmax(s) @ v scaled by sigmoid(logsumexp(s) - sink)
    (fp16: the softmax between casts, the difference cast to fp32, the scale cast back before its unsqueeze)."""
    from fxforge.ir.extern_op import OperandRef

    g = Graph()
    q = g.add_input("q", TensorType((1, 4, S, 16), dtype))
    k, v = (g.add_input(n, TensorType((1, 4, 24, 16), dtype)) for n in ("k", "v"))
    m = g.add_input("mask", TensorType((1, 1, S, 24), dtype))
    sinks = g.add_input("sinks", TensorType((4,), dtype))
    f16 = dtype != DType.f32

    def op(opcode, *xs, **attrs):
        return g.add_op(opcode, list(xs), attrs).result

    quarter = op("full", shape=(), value=0.25, dtype=DType.f64)
    s = op("add", op("mul", op("matmul", q, op("permute", k, dims=(0, 1, 3, 2))), quarter), m)
    lse = g.add_op("extern", [s], {"target": "aten.logsumexp.default", "args": (OperandRef(0), (-1,)), "kwargs": {}},
                   result_types=[TensorType((1, 4, S), dtype)]).result
    d = op("sub", lse, op("reshape", sinks, shape=(1, 4, 1)))
    w = op("sigmoid", op("cast", d, dtype=DType.f32) if f16 else d)
    w = op("reshape", op("cast", w, dtype=dtype) if f16 else w, shape=(1, 4, S, 1))
    p = op("softmax", op("cast", s, dtype=DType.f32) if f16 else s, dim=3)
    p = op("cast", p, dtype=dtype) if f16 else p
    g.set_outputs([op("mul", op("matmul", p, v), w)] + ([lse] if read_lse else []))
    return g


@pytest.mark.parametrize("dtype", [DType.f32, DType.f16])
def test_logsumexp_sinks_become_the_attention_ops_sinks(dtype):
    g = lse_sink_graph(dtype)
    xs = [x.to(dtype.torch) for x in inputs(DType.f32)] + [torch.linspace(-1.0, 4.0, 4).to(dtype.torch)]
    want = evaluate(g, xs)[0]
    Canonicalize().run(g, PassContext())
    verify(g)
    counts = g.op_counts()
    assert counts.get("attention") == 1 and not {"softmax", "extern", "sigmoid", "matmul", "mul"} & set(counts), counts
    (att,) = g.find("attention")
    assert att.attrs["sinks"] and att.attrs["scale"] == 0.25 and att.operands[4] is g.inputs[4]
    tol = 2e-3 if dtype == DType.f16 else 1e-5  # fp16: eager rounds the probabilities and the scale (1-2 ulps)
    torch.testing.assert_close(evaluate(g, xs)[0].float(), want.float(), atol=tol, rtol=tol)
    xs[4] = torch.full((4,), -1e4).to(dtype.torch)  # sinks that weigh nothing: other numbers than above
    assert (evaluate(g, xs)[0].float() - want.float()).abs().max() > 0.05


def test_logsumexp_read_elsewhere_stays_written_out():
    g = lse_sink_graph(DType.f32, read_lse=True)
    Canonicalize().run(g, PassContext())
    assert "attention" not in g.op_counts()


def upcast_sink_graph() -> Graph:
    """Flint's eager attention in fp16 as captured: q and k cast to fp32 before the scores' matmul, the fp16 mask and
    sink column joining the fp32 scores, softmax, the sink column dropped, p cast back to fp16 for p @ v."""
    g, (q, k, v, m, sinks), op = _sink_inputs(DType.f16)
    qk = op("matmul", op("cast", q, dtype=DType.f32), op("permute", op("cast", k, dtype=DType.f32), dims=(0, 1, 3, 2)))
    s = op("add", op("mul", qk, op("full", shape=(), value=0.25, dtype=DType.f64)), m)
    cat = op("cat", s, op("expand", op("reshape", sinks, shape=(1, 4, 1, 1)), shape=(1, 4, S, 1)), dim=3)
    p = op("cast", op("slice", op("softmax", cat, dim=3), dim=3, start=0, end=24), dtype=DType.f16)
    g.set_outputs([op("matmul", p, v)])
    return g


def test_upcast_scores_with_sinks_become_one_attention_op():
    g = upcast_sink_graph()
    xs = [t.half() for t in inputs(DType.f32)] + [torch.linspace(-1.0, 4.0, 4).half()]
    want = evaluate(g, xs)[0]
    Canonicalize().run(g, PassContext())
    verify(g)
    counts = g.op_counts()
    assert counts.get("attention") == 1 and not {"softmax", "cat", "slice", "matmul"} & set(counts), counts
    (att,) = g.find("attention")
    assert att.attrs["upcast"] and att.attrs["sinks"] and att.operands[0] is g.inputs[0]  # q itself, not its cast
    got = evaluate(g, xs)[0]
    assert got.dtype == torch.float16 and torch.equal(got, want)  # the reference's chain is eager's, op for op
