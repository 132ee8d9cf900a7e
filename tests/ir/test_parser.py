"""The IR text parser: print -> parse -> print is the identity, and bad text gives IRParseError
naming line and column."""

from __future__ import annotations

import math

import pytest
import sympy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxforge.ir.dtypes import DType
from fxforge.ir.errors import IRParseError
from fxforge.ir.graph import Graph, Value, Weight
from fxforge.ir.ops import OPS
from fxforge.ir.optable import OperandRef
from fxforge.ir.parser import parse_dim, parse_graph, parse_type, parse_value
from fxforge.ir.printer import print_dim, print_graph, print_type, print_value
from fxforge.ir.reader import STATS, read_dim, read_graph, read_type
from fxforge.ir.types import NM, BlockFP, Quantized, TensorType, sym

s0, s1 = sym("s0"), sym("s1")


def roundtrip(text: str, weights=None) -> Graph:
    """Parse text, check that printing gives it back exactly; return the graph."""
    g = parse_graph(text, weights)
    assert print_graph(g) == text
    return g


def check_types_inferred(g: Graph) -> None:
    """Each op's result types (from the text) are those its shape function infers."""
    for op in g.ops:
        if op.opdef.infer is None and not (op.opcode == "const" and op.attrs["weight"] in g.weights):
            continue
        inferred = g.infer_types(op.opcode, op.operands, op.attrs)
        got = [r.type for r in op.results]
        assert len(inferred) == len(got) and all(a.same_as(b) for a, b in zip(inferred, got, strict=True)), (
            f"{op}: text says {[print_type(t) for t in got]}, inferred {[print_type(t) for t in inferred]}"
        )


def same_graph(a: Graph, b: Graph) -> None:
    assert a.name == b.name
    assert [v.name for v in a.inputs] == [v.name for v in b.inputs]
    assert [v.type for v in a.inputs] == [v.type for v in b.inputs]
    assert len(a.ops) == len(b.ops)
    for x, y in zip(a.ops, b.ops, strict=True):
        assert x.opcode == y.opcode
        assert [v.name for v in x.operands] == [v.name for v in y.operands]
        assert [v.name for v in x.results] == [v.name for v in y.results]
        assert [v.type for v in x.results] == [v.type for v in y.results]
    assert [v.name for v in a.outputs] == [v.name for v in b.outputs]


# -- hand-written graphs covering the op table ---------------------------------------------------

EVERY_OP = """\
graph @every_op(%x: f32[s0, 8], %y: f32[s0, 8], %c: bool[s0, 8], %ids: i64[s0], %idx: i64[s0, 2], %q: f16[2, 4, s1, 16], %k: f16[2, 4, s1, 16], %v: f16[2, 4, s1, 16], %m: bool[s1, s1], %pc: u8[2, 4, s1, 9]) {
  %w = const @layers.0.weight : f32[16, 8]
  %b = const @layers.0.bias : f32[16]
  %g8 = const @norm.weight : f32[8]
  %emb = const @embed.weight : f32[100, 8]
  %qw = const @q.weight : f4e2m1[16, 8] #quantized<format="f4e2m1", axis=1, group=32, scale_dtype=f8e4m3, zero_point=false>
  %sw = const @sparse.weight : f32[16, 8] #nm<n=2, m=4, dtype=f32, scheme=none, group=0>
  %bw = const @mx.weight : f8e4m3[16, 8] #blockfp<format="f8e4m3", block=32, axis=-1, perm="mx.perm">
  %bw2 = const @mx2.weight : f8e4m3[16, 8] #blockfp<format="f8e4m3", block=16, axis=0, perm=none>
  %mr = const @moe.router : f32[4, 8]
  %mgu = const @moe.gate_up : f32[4, 6, 8]
  %md = const @moe.down : f32[4, 8, 3]
  %lin = linear(%x, %w) : f32[s0, 16]
  %linb = linear(%x, %w, %b) : f32[s0, 16]
  %qlin = linear(%x, %qw) : f32[s0, 16]
  %mm = matmul(%lin, %w) : f32[s0, 8]
  %e = embedding(%emb, %ids) : f32[s0, 8]
  %sum = sum(%x) : f32[]
  %sumd = sum(%x) {dims=[1], dtype=f64} : f64[s0]
  %mean = mean(%x) {dims=[1], keepdim=true} : f32[s0, 1]
  %amax = amax(%x) {dims=[0, 1]} : f32[]
  %amin = amin(%x) {dims=[-1]} : f32[s0]
  %any = any(%c) {dims=[0]} : bool[8]
  %am = argmax(%x) {dim=1} : i64[s0]
  %amk = argmax(%x) {dim=-1, keepdim=true} : i64[s0, 1]
  %cs = cumsum(%x) {dim=0, dtype=f64} : f64[s0, 8]
  %r = reshape(%x) {shape=[s0, 2, 4]} : f32[s0, 2, 4]
  %flat = reshape(%x) {shape=[(8*s0)]} : f32[(8*s0)]
  %p = permute(%r) {dims=[2, 0, 1]} : f32[4, s0, 2]
  %ex = expand(%mean) {shape=[3, s0, 8]} : f32[3, s0, 8]
  %sl = slice(%x) {dim=0, start=1, end=s0} : f32[(s0 - 1), 8]
  %sl2 = slice(%x) {dim=0, end=s0, step=2} : f32[(floor(s0/2 + 1/2)), 8]
  %sl3 = slice(%x) {dim=-1, start=2, end=7, step=2} : f32[s0, 3]
  %cat = cat(%x, %y, %sl) {dim=0} : f32[(3*s0 - 1), 8]
  %cat2 = cat(%x, %sl3) {dim=1} : f32[s0, 11]
  %is = index_select(%x, %ids) {dim=0} : f32[s0, 8]
  %ga = gather(%x, %idx) {dim=1} : f32[s0, 2]
  %ln = layer_norm(%x, %g8, %g8) {eps=1e-12} : f32[s0, 8]
  %ln1 = layer_norm(%x) : f32[s0, 8]
  %rms = rms_norm(%x, %g8) : f32[s0, 8]
  %rms2 = rms_norm(%x) {eps=1e-05} : f32[s0, 8]
  %sm = softmax(%x) {dim=0} : f32[s0, 8]
  %lsm = log_softmax(%x) : f32[s0, 8]
  %at = attention(%q, %k, %v) {is_causal=true} : f16[2, 4, s1, 16]
  %at2 = attention(%q, %k, %v, %m) {scale=0.125, enable_gqa=true} : f16[2, 4, s1, 16]
  %snk = full() {shape=[4], value=0.5, dtype=f16} : f16[4]
  %at3 = attention(%q, %k, %v, %snk) {sinks=true} : f16[2, 4, s1, 16]
  %at4 = attention(%q, %k, %v, %m, %snk) {softcap=30.0, sinks=true} : f16[2, 4, s1, 16]
  %f = full() {shape=[s0, 8], value=-inf, dtype=f32} : f32[s0, 8]
  %f2 = full() {shape=[], value=nan, dtype=bf16} : bf16[]
  %f3 = full() {shape=[2], value=-0.0, dtype=f16} : f16[2]
  %f4 = full() {shape=[2, 2], value=7, dtype=i32} : i32[2, 2]
  %ar = arange() {end=s0} : i64[s0]
  %ar2 = arange() {start=1, end=10, step=3, dtype=f32} : f32[3]
  %cast = cast(%x) {dtype=bf16} : bf16[s0, 8]
  %wh = where(%c, %x, %y) : f32[s0, 8]
  %cl = clamp(%x) {min=-1e-06, max=inf} : f32[s0, 8]
  %cl2 = clamp(%x) {max=1.5e+300} : f32[s0, 8]
  %ge = gelu(%x) {approximate="tanh"} : f32[s0, 8]
  %dv = div(%x, %y) {rounding_mode="floor"} : f32[s0, 8]
  %tu = triu(%x) {diagonal=1} : f32[s0, 8]
  %tl = tril(%x) {diagonal=-1} : f32[s0, 8]
  %tk, %tki = topk(%x) {k=3} : f32[s0, 3], i64[s0, 3]
  %tk0, %tk0i = topk(%x) {k=2, dim=0, largest=false, sorted=false} : f32[2, 8], i64[2, 8]
  %so, %soi = sort(%x) {dim=0, descending=true, stable=true} : f32[s0, 8], i64[s0, 8]
  %vr, %mn = var_mean(%x) {dims=[1], correction=0, keepdim=true} : f32[s0, 1], f32[s0, 1]
  %vra, %mna = var_mean(%x) : f32[], f32[]
  %mx, %mxi = max_dim(%x) {dim=1} : f32[s0], i64[s0]
  %mi, %mii = min_dim(%x) {dim=0, keepdim=true} : f32[1, 8], i64[1, 8]
  %had = hadamard(%x) : f32[s0, 8]
  %had4 = hadamard(%x) {block=4} : f32[s0, 8]
  %kq = kv_quant(%k) {format="bfp4", block=16} : f16[2, 4, s1, 16]
  %keep = skip_gate(%x, %y, %ids) {kind="carry", threshold=0.5, warmup=2, count="k0"} : i64[k0]
  %keep2 = skip_gate(%x, %y, %ids, %g8) {kind="linear", bias=0.25, threshold=0.0, count="k1"} : i64[k1]
  %rows = gather_rows(%x, %keep) : f32[k0, 8]
  %kf = skip_keep(%x, %y, %ids) {kind="carry", threshold=0.5, warmup=2} : f32[s0, 1]
  %back = scatter_add_rows(%x, %rows, %keep) : f32[s0, 8]
  %cnt = skip_count(%x, %keep) : i64[2]
  %cnt1 = skip_count(%x) : i64[2]
  %cnts = skip_counts(%cnt, %cnt1) {sites=["a", "b"]} : i64[2, 2]
  %kpos = arange() {end=s1} : i64[s1]
  %kc = cache_write(%k, %kpos, %q) : f16[2, 4, s1, 16]
  %pcw = cache_write(%pc, %kpos, %k) {format="bfp4", block=16} : u8[2, 4, s1, 9]
  %pk = kv_load(%pcw) {format="bfp4", block=16, head_dim=16, dtype=f16} : f16[2, 4, s1, 16]
  %s_0, %s_1 = extern(%x) {target="aten.sort.default", args=[$0, -1], kwargs={descending=true}} : f32[s0, 8], i64[s0, 8]
  %z = extern() {target="aten.zeros.default", args=[[2, 3]], kwargs={dtype=f32}} : f32[2, 3]
  %odd = extern(%x, %y) {target="my.op \\"quoted\\" \\\\ \\n \\u00e9", args=[$1, $0, none, [1e-06, -0.0, inf, nan, 1e+20], {a=s0, b=(s0 - 1), c=""}]} : f32[s0, 8]
  %ql = qlinear(%x, %qw) {scheme="w4a8-fp", act_format="f8e4m3", group=32} : f32[s0, 16]
  %qv, %qs = quantize(%x) {format="f8e4m3"} : f8e4m3[s0, 8], f32[s0, 1]
  %dq = dequantize(%qv, %qs) {format="f8e4m3"} : f32[s0, 8]
  %mo = moe(%x, %g8, %mr, %mgu, %md, %y) {k=2, renorm=true, norm="rms", eps=1e-05, residual=true} : f32[s0, 8]
  return %linb, %s_0, %s_1, %odd
}
"""  # noqa: E501


def every_op_weights() -> dict[str, Weight | torch.Tensor]:
    return {
        "layers.0.weight": torch.randn(16, 8),
        "layers.0.bias": torch.randn(16),
        "norm.weight": torch.ones(8),
        "embed.weight": torch.randn(100, 8),
        "q.weight": Weight(torch.randn(16, 8), Quantized("f4e2m1", 1, 32, DType.f8e4m3)),
        "sparse.weight": Weight(torch.randn(16, 8), NM(2, 4)),
        "mx.weight": Weight(torch.randn(16, 8), BlockFP("f8e4m3", 32, -1, "mx.perm")),
        "mx2.weight": Weight(torch.randn(16, 8), BlockFP("f8e4m3", 16, 0)),
        "mx.perm": torch.arange(8),
        "moe.router": torch.randn(4, 8),
        "moe.gate_up": torch.randn(4, 6, 8),
        "moe.down": torch.randn(4, 8, 3),
    }


# Attributes for the pointwise ops that cannot go without (clamp needs a bound, cast a dtype).
_POINTWISE_ATTRS = {"cast": {"dtype": DType.f16}, "clamp": {"min": 0.0},
                    "xielu": {"alpha_p": 0.8, "alpha_n": 0.8, "beta": 0.5, "eps": -1e-6}}


def pointwise_graph() -> Graph:
    """Every pointwise op of the table, built through add_op (types inferred)."""
    g = Graph("pointwise")
    a = g.add_input("a", TensorType((s0, 4), DType.f32))
    b = g.add_input("b", TensorType((4,), DType.f32))
    i = g.add_input("i", TensorType((s0, 4), DType.i32))
    j = g.add_input("j", TensorType((1, 4), DType.i32))
    cond = g.add_input("cond", TensorType((s0, 1), DType.bool))
    col = g.add_input("col", TensorType((s0, 1), DType.f32))
    outs = []
    for name, opdef in OPS.items():
        if opdef.category != "pointwise":
            continue
        lo, _ = opdef.arity
        if name == "where":
            operands = [cond, a, b]
        elif name == "row_keep":
            operands = [a, col]
        elif name.startswith("bitwise"):
            operands = [i, j][:lo]
        else:
            operands = [a, b][:lo]
        attrs = _POINTWISE_ATTRS.get(name, {})
        outs.append(g.add_op(name, operands, attrs, name=name).result)
    for extra in ({"min": -0.5, "max": 0.5}, {"min": float("-inf")}):
        outs.append(g.add_op("clamp", [a], extra).result)
    outs.append(g.add_op("gelu", [a], {"approximate": "tanh"}).result)
    outs.append(g.add_op("div", [a, b], {"rounding_mode": "trunc"}).result)
    outs.append(g.add_op("triu", [a], {"diagonal": -2}).result)
    g.set_outputs(outs)
    return g


def test_every_op_roundtrips():
    weights = every_op_weights()
    g = roundtrip(EVERY_OP, weights)
    fast = STATS["fast"]
    assert print_graph(read_graph(EVERY_OP, weights)) == EVERY_OP and STATS["fast"] == fast + 1, STATS
    check_types_inferred(g)
    assert set(g.weights) == set(weights)
    assert g.weights["q.weight"].encoding == Quantized("f4e2m1", 1, 32, DType.f8e4m3)
    pw = pointwise_graph()
    text = print_graph(pw)
    same_graph(pw, roundtrip(text))
    covered = set(g.op_counts()) | set(pw.op_counts())
    missing = set(OPS) - covered
    assert not missing, f"ops with no round-trip test (add them to EVERY_OP or pointwise_graph): {sorted(missing)}"


def test_every_op_without_weights():
    """Without a weight table, const types come from the text."""
    g = roundtrip(EVERY_OP)
    assert g.weights == {}
    qw = next(op for op in g.ops if op.attrs.get("weight") == "q.weight")
    assert qw.result.type.dtype is DType.f4e2m1
    assert isinstance(qw.result.type.encoding, Quantized)


def test_details_of_the_parsed_graph():
    g = parse_graph(EVERY_OP)
    by_name = {v.name: v for v in g.values()}
    assert by_name["sl"].type.shape == (s0 - 1, 8)
    assert by_name["sl2"].type.shape == (sympy.floor(s0 / 2 + sympy.Rational(1, 2)), 8)
    assert by_name["flat"].type.shape[0] == 8 * s0
    ext = by_name["s_0"].producer
    assert ext.results == [by_name["s_0"], by_name["s_1"]]
    assert ext.attrs["args"] == (OperandRef(0), -1)
    assert ext.attrs["kwargs"] == {"descending": True}
    odd = by_name["odd"].producer.attrs
    assert odd["target"] == 'my.op "quoted" \\ \n \u00e9'
    floats = odd["args"][3]
    assert floats[0] == 1e-06 and math.copysign(1, floats[1]) == -1 and floats[2] == math.inf and math.isnan(floats[3])
    assert odd["args"][4] == {"a": s0, "b": s0 - 1, "c": ""}
    # use-def chains are built
    assert by_name["lin"].uses == [by_name["mm"].producer]
    assert g.outputs == [by_name["linb"], by_name["s_0"], by_name["s_1"], by_name["odd"]]


def test_names_kept_exactly():
    text = """\
graph @layers.0(%0: f32[4], %x: f32[4], %x_0: f32[4]) {
  %5 = add(%0, %x) : f32[4]
  %1 = neg(%5) : f32[4]
  %v1 = neg(%1) : f32[4]
  %a.b = neg(%v1) : f32[4]
  %_ = neg(%a.b) : f32[4]
  return %_, %x_0
}
"""
    g = roundtrip(text)
    assert [v.name for v in g.values()] == ["0", "x", "x_0", "5", "1", "v1", "a.b", "_"]
    # fresh names made later do not collide with the parsed ones
    extra = g.add_op("neg", [g.inputs[0]]).result
    assert extra.name not in {"0", "x", "x_0", "5", "1", "v1", "a.b", "_"}


def test_graph_names():
    for name in ["forward", "gpt-2.block_0", "0"]:
        g = Graph(name)
        g.set_outputs([g.add_input("x", TensorType((2,), DType.f32))])
        assert parse_graph(print_graph(g)).name == name


def test_symbolic_dims_and_expressions():
    for text in ["s0", "(s0 - 1)", "(floor(s0/2) + 1)", "(2*s0*s1)", "(Max(s0, s1))", "(ceiling(s1/3))",
                 "(Mod(s0, 4))", "(-s0 + s1)", "(s0**2)", "(floor(s0/2 - 1/2) + 1)"]:
        d = parse_dim(text)
        assert print_dim(d) == text and read_dim(text) == d
        assert d.free_symbols <= {s0, s1}
    assert parse_dim("(s0 - 1)") == s0 - 1
    assert parse_dim("( 2 * s0 )") == 2 * s0  # spaces inside are fine
    assert parse_dim("(floor((s0 - 1)/2) + 1)") == parse_dim("(floor(s0/2 - 1/2) + 1)")  # sympy's canonical form
    assert parse_dim("(4)") == 4 and isinstance(parse_dim("(4)"), int)
    # names that sympy would read as constants or functions are symbols here
    assert parse_dim("(E + S + N)") == sym("E") + sym("S") + sym("N")
    assert parse_type("f16[S, 3]").shape == (sym("S"), 3)


def test_types():
    for text in ["f32[]", "f32[s0, 128]", "bool[1]", "i4[3, (s0 - 1)]",
                 'f4e2m1[16, 64] #quantized<format="f4e2m1", axis=1, group=32, scale_dtype=f8e4m3, zero_point=true>',
                 "f32[4, 8] #nm<n=2, m=4, dtype=f32, scheme=none, group=0>", 'f8e5m2[8] #blockfp<format="f8e5m2", block=32, axis=-1, perm=none>']:
        assert print_type(parse_type(text)) == text
        assert read_type(text) == parse_type(text)
    t = parse_type("f4e2m1[16, 64] #quantized<format=\"f4e2m1\", axis=1>")
    assert t == TensorType((16, 64), DType.f4e2m1, Quantized("f4e2m1", 1))


@pytest.mark.parametrize("value", [
    0, -3, 2**80, 1.0, -0.0, 1e-06, 1.5e+300, 5e-324, float("inf"), float("-inf"), "", 'a "b" \\ \t\n\x00 \u00e9 \U0001f600',
    True, False, None, DType.bf16, OperandRef(3), s0, s0 - 1, sympy.floor(s0 / 2) + 1, (), (1, (2, (3,))),
    {}, {"a": (1, {"b": None})}, {"return": 1, "graph": 2, "true": 3}, sympy.Rational(1, 2),
])
def test_values(value):
    text = print_value(value)
    back = parse_value(text)
    assert print_value(back) == text
    assert back == value or (isinstance(value, float) and math.isnan(value))
    assert type(back) is type(value) or isinstance(value, sympy.Expr)


def test_nan_value():
    assert math.isnan(parse_value("nan"))


def test_comments_and_whitespace():
    text = """// a saved graph
graph @g(%x: f32[2]) {   // header
  %0 = neg(%x)
     : f32[2]   // types may go on the next line
  return %0
}  // end
"""
    g = parse_graph(text)
    assert print_graph(g) == "graph @g(%x: f32[2]) {\n  %0 = neg(%x) : f32[2]\n  return %0\n}\n"


def test_empty_graph():
    roundtrip("graph @g() {\n  return \n}\n")


def test_weights_table():
    w = torch.randn(4, 2)
    text = "graph @g(%x: f32[3, 2]) {\n  %w = const @lin.w : f32[4, 2]\n  %0 = linear(%x, %w) : f32[3, 4]\n  return %0\n}\n"
    g = roundtrip(text, {"lin.w": w, "unused": torch.zeros(1)})
    assert g.weights["lin.w"].data is w and "unused" in g.weights
    check_types_inferred(g)


def test_parse_1000_lines():
    """An ~1000-line transformer-shaped graph parses (its speed is a benchmark's business, not a test's)."""
    lines = ["graph @forward(%x: f16[s0, 512]) {"]
    prev = "x"
    for layer in range(100):
        p = f"layers.{layer}"
        lines += [
            f"  %{p}_w = const @{p}.weight : f16[512, 512]",
            f"  %{p}_n = rms_norm(%{prev}) : f16[s0, 512]",
            f"  %{p}_0 = linear(%{p}_n, %{p}_w) : f16[s0, 512]",
            f"  %{p}_1 = reshape(%{p}_0) {{shape=[s0, 8, 64]}} : f16[s0, 8, 64]",
            f"  %{p}_2 = permute(%{p}_1) {{dims=[1, 0, 2]}} : f16[8, s0, 64]",
            f"  %{p}_3 = attention(%{p}_2, %{p}_2, %{p}_2) {{is_causal=true}} : f16[8, s0, 64]",
            f"  %{p}_4 = permute(%{p}_3) {{dims=[1, 0, 2]}} : f16[s0, 8, 64]",
            f"  %{p}_5 = reshape(%{p}_4) {{shape=[s0, 512]}} : f16[s0, 512]",
            f"  %{p}_6 = slice(%{p}_5) {{dim=0, start=1, end=s0}} : f16[(s0 - 1), 512]",
            f"  %{p}_7 = add(%{prev}, %{p}_5) : f16[s0, 512]",
        ]
        prev = f"{p}_7"
    lines += [f"  return %{prev}", "}"]
    text = "\n".join(lines) + "\n"
    assert len(lines) > 1000
    g = parse_graph(text)
    assert len(g.ops) == 1000
    assert print_graph(parse_graph(print_graph(g))) == print_graph(g)


# -- random well-typed graphs -------------------------------------------------------------------

SYMS = [s0, s1]
FLOATS = [DType.f32, DType.f16, DType.bf16]
ODD_FLOATS = st.one_of(st.floats(), st.sampled_from([1e-06, -0.0, math.inf, -math.inf, math.nan, 1e+20, 5e-324]))
NAMES = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True), st.sampled_from(["0", "x.y", "1a"]))
KEYS = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True), st.sampled_from(["return", "graph", "none"]))
EXPRS = [s0, s0 - 1, sympy.floor(s0 / 2) + 1, 2 * s0 * s1, sympy.Max(s0, s1), sympy.ceiling(s1 / 3)]
LEAVES = st.one_of(
    st.integers(-(2**70), 2**70), ODD_FLOATS, st.text(max_size=8), st.booleans(), st.none(),
    st.sampled_from(list(DType)), st.integers(0, 4).map(OperandRef), st.sampled_from(EXPRS),
)
ATTR_VALUES = st.recursive(
    LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)), max_leaves=8
)
DIMS = st.one_of(st.integers(1, 6), st.sampled_from(SYMS))


def _same_shape(values: list[Value], v: Value) -> list[Value]:
    return [u for u in values if u.type.shape == v.type.shape and u.type.dtype.is_float]


def _static_shape(draw, max_rank=3):
    return tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=max_rank)))


def _step(draw, g: Graph, values: list[Value]) -> list[Value]:
    # build on float values of rank >= 1 (the inputs are such); others (i64, scalars) are only results
    v = draw(st.sampled_from([u for u in values if u.type.rank >= 1 and u.type.dtype.is_float]))
    rank = v.type.rank
    name = draw(st.one_of(st.none(), NAMES))
    kind = draw(st.sampled_from(["unary", "binary", "clamp", "cast", "reduce", "softmax", "reshape", "permute",
                                 "slice", "cat", "matmul", "linear", "const", "extern", "full", "arange"]))

    def op(opcode, operands, attrs=None, result_types=None):
        return g.add_op(opcode, operands, attrs, result_types=result_types, name=name).results

    if kind == "unary":
        return op(draw(st.sampled_from(["neg", "exp", "tanh", "relu", "sigmoid", "silu", "abs", "floor"])), [v])
    if kind == "binary":
        other = draw(st.sampled_from(_same_shape(values, v)))
        return op(draw(st.sampled_from(["add", "sub", "mul", "maximum", "div", "pow"])), [v, other])
    if kind == "clamp":
        return op("clamp", [v], {"min": draw(st.one_of(st.none(), ODD_FLOATS)), "max": draw(ODD_FLOATS)})
    if kind == "cast":
        return op("cast", [v], {"dtype": draw(st.sampled_from(FLOATS))})
    if kind == "reduce":
        dims = draw(st.one_of(st.none(), st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True)))
        attrs = {"dims": dims, "keepdim": draw(st.booleans())}
        opcode = draw(st.sampled_from(["sum", "mean", "amax"]))
        if opcode == "sum" and draw(st.booleans()):
            attrs["dtype"] = DType.f32
        return op(opcode, [v], attrs)
    if kind == "softmax":
        return op("softmax", [v], {"dim": draw(st.integers(-rank, rank - 1))})
    if kind == "reshape":
        shape = draw(st.sampled_from([[v.type.numel()], list(v.type.shape) + [1], [1] + list(v.type.shape)]))
        return op("reshape", [v], {"shape": shape})
    if kind == "permute":
        return op("permute", [v], {"dims": draw(st.permutations(range(rank)))})
    if kind == "slice":
        dim = draw(st.integers(0, rank - 1))
        size = v.type.shape[dim]
        if isinstance(size, int):
            start = draw(st.integers(0, size - 1))
            end = draw(st.integers(start + 1, size))
        else:
            start, end = draw(st.integers(0, 1)), size
        return op("slice", [v], {"dim": dim, "start": start, "end": end, "step": draw(st.integers(1, 2))})
    if kind == "cat":
        other = draw(st.sampled_from([u for u in _same_shape(values, v) if u.type.dtype == v.type.dtype]))
        return op("cat", [v, other], {"dim": draw(st.integers(0, rank - 1))})
    if kind == "matmul" and rank >= 2:
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        t = g.add_op("permute", [v], {"dims": perm}).result
        return [t] + op("matmul", [v, t])
    if kind == "linear" and isinstance(v.type.shape[-1], int):
        out = draw(st.integers(1, 5))
        wname = f"w{len(g.weights)}.weight"
        g.add_weight(wname, torch.randn(out, v.type.shape[-1]))
        w = g.add_op("const", [], {"weight": wname}).result
        operands = [v, w]
        if draw(st.booleans()):
            g.add_weight(wname + ".bias", torch.randn(out))
            operands.append(g.add_op("const", [], {"weight": wname + ".bias"}).result)
        return operands[1:] + op("linear", operands)
    if kind == "const":
        shape = _static_shape(draw)
        enc = draw(st.sampled_from([None, Quantized("f4e2m1", 0, 32, DType.f8e4m3, True), NM(2, 4),
                                    BlockFP("f8e4m3", 32, -1, None), BlockFP("f8e5m2", 16, 0, "perm.0")]))
        wname = f"c{len(g.weights)}"
        g.add_weight(wname, Weight(torch.randn(shape), enc))
        return op("const", [], {"weight": wname})
    if kind == "extern":
        kwargs = draw(st.dictionaries(KEYS, ATTR_VALUES, max_size=3))
        target = draw(st.one_of(st.just("aten.sort.default"), st.text(max_size=10)))
        types = [v.type, v.type.with_dtype(DType.i64)][: draw(st.integers(1, 2))]
        return op("extern", [v], {"target": target, "args": [OperandRef(0), -1], "kwargs": kwargs}, result_types=types)
    if kind == "full":
        return op("full", [], {"shape": list(v.type.shape), "value": draw(ODD_FLOATS), "dtype": draw(st.sampled_from(FLOATS))})
    if kind == "arange":
        return op("arange", [], {"end": draw(st.sampled_from(list(v.type.shape)))})
    return op("neg", [v])


@st.composite
def graphs(draw) -> Graph:
    g = Graph(draw(st.sampled_from(["forward", "g", "layers.0.block"])))
    values = []
    for _ in range(draw(st.integers(1, 3))):
        shape = tuple(draw(st.lists(DIMS, min_size=1, max_size=3)))
        values.append(g.add_input(draw(NAMES), TensorType(shape, draw(st.sampled_from(FLOATS)))))
    for _ in range(draw(st.integers(1, 10))):
        values.extend(_step(draw, g, values))
    g.set_outputs(draw(st.lists(st.sampled_from(values), min_size=1, max_size=3)))
    return g


RANDOM = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@RANDOM
@given(graphs())
def test_random_graphs_roundtrip(g: Graph):
    text = print_graph(g)
    back = parse_graph(text)
    assert print_graph(back) == text
    same_graph(g, back)
    assert back.weights == {}
    fast = STATS["fast"]
    same_graph(g, read_graph(text))  # the fast reader of the canonical form reads every printed graph
    assert STATS["fast"] == fast + 1, STATS
    # with the weight table given, const types are checked against it and it is carried over
    with_weights = parse_graph(text, g.weights)
    assert with_weights.weights.keys() == g.weights.keys()
    same_graph(g, with_weights)


@RANDOM
@given(graphs())
def test_random_graphs_parse_twice_same_text(g: Graph):
    text = print_graph(g)
    once = print_graph(parse_graph(text))
    twice = print_graph(parse_graph(once))
    assert once == twice


@settings(max_examples=200, deadline=None)
@given(ATTR_VALUES)
def test_random_attribute_values(value):
    text = print_value(value)
    assert print_value(parse_value(text)) == text


# -- errors ---------------------------------------------------------------------------------------

HEAD = "graph @g(%x: f32[s0, 4], %i: i64[s0]) {\n"


def body(*lines: str) -> str:
    return HEAD + "".join(f"  {line}\n" for line in lines) + "}\n"


ERRORS = [
    # (text, line, column, words the message must contain)
    (body("%0 = add(%x, %y) : f32[s0, 4]", "return %0"), 2, 16, ["undefined value %y", "line 2"]),
    (body("%0 = neg(%x) : f32[s0, 4]", "return %1"), 3, 10, ["undefined value %1"]),
    (body("%0 = neg(%x) : f32[s0, 4]", "%0 = neg(%x) : f32[s0, 4]", "return %0"), 3, 3,
     ["%0 is defined twice", "line 2"]),
    ("graph @g(%x: f32[2], %x: f32[2]) {\n  return %x\n}\n", 1, 22, ["%x is defined twice"]),
    (body("%x = neg(%x) : f32[s0, 4]", "return %x"), 2, 3, ["%x is defined twice"]),
    (body("%0 = sofmax(%x) : f32[s0, 4]", "return %0"), 2, 8, ["unknown op 'sofmax'", "softmax"]),
    (body("%0 = neg(%x) : f33[s0, 4]", "return %0"), 2, 18, ["unknown dtype 'f33'", "f32"]),
    (body("%0 = cast(%x) {dtype=bf61} : bf16[s0, 4]", "return %0"), 2, 24, ["unknown dtype 'bf61'", "bf16"]),
    (body("%0, %1 = neg(%x) : f32[s0, 4]", "return %0"), 2, 12, ["2 result(s) but 1 result type(s)"]),
    (body("%0, %1 = neg(%x) : f32[s0, 4], f32[s0, 4]", "return %0"), 2, 12, ["neg has 1 result(s), not 2"]),
    (body("%0 = neg(%x) {alpha=1} : f32[s0, 4]", "return %0"), 2, 8, ["unknown attribute", "alpha"]),
    (body("%0 = cast(%x) : f32[s0, 4]", "return %0"), 2, 8, ["missing required attribute 'dtype'"]),
    (body("%0 = add(%x) : f32[s0, 4]", "return %0"), 2, 8, ["add", "operands, got 1"]),
    (body("%0 = add(%x, %x : f32[s0, 4]", "return %0"), 2, 19, ["unexpected ':'", "expected ')', ','"]),
    (body("%0 = neg(%x) f32[s0, 4]", "return %0"), 2, 16, ["unexpected 'f32'", "':'"]),
    (body("%0 = neg(%x) : f32[s0, 4", "return %0"), 3, 3, ["unexpected 'return'", "']'"]),
    (HEAD + "  %0 = neg(%x) : f32[s0, 4]\n  return %0\n", 4, 1, ["end of the text", "'}'"]),
    (body("%0 = neg(%x) : f32[s0, 4]", "return %0") + "graph", 5, 1, ["unexpected 'graph'", "end of the text"]),
    (body("%0 = neg(%x) ? : f32[s0, 4]", "return %0"), 2, 16, ["unexpected character '?'"]),
    (body('%0 = extern(%x) {target="abc} : f32[s0, 4]', "return %0"), 2, 27, ["unterminated string"]),
    (body('%0 = extern(%x) {target="a\\qb"} : f32[s0, 4]', "return %0"), 2, 27, ["bad string literal"]),
    (body("%0 = neg(%x) : f32[(s0 - ), 4]", "return %0"), 2, 22, ["cannot read dimension expression"]),
    (body("%0 = neg(%x) : f32[(open(s0)), 4]", "return %0"), 2, 22, ["unknown function 'open'"]),
    (body("%0 = neg(%x) : f32[2.5, 4]", "return %0"), 2, 22, ["must be an integer"]),
    (body("%0 = clamp(%x) {min=-foo} : f32[s0, 4]", "return %0"), 2, 24, ["after '-'"]),
    (body('%0 = neg(%x) : f32[s0, 4] #quantised<format="f4e2m1", axis=0>', "return %0"), 2, 29,
     ["unknown encoding #quantised", "#quantized"]),
    (body('%0 = neg(%x) : f32[s0, 4] #quantized<format="f4e2m1", axs=0>', "return %0"), 2, 29,
     ["bad encoding #quantized", "axs"]),
    (body("%0 = const : f32[2]", "return %0"), 2, 8, ["const needs a weight"]),
    (body("%0 = const @w() : f32[2]", "return %0"), 2, 8, ["const takes no operand list"]),
    (body("%0 = neg @w(%x) : f32[2]", "return %0"), 2, 12, ["only const names a weight"]),
    (body("%0 = neg : f32[2]", "return %0"), 2, 8, ["neg needs an operand list"]),
    ("", 1, 1, ["unexpected end of the text", "'graph'"]),
]


@pytest.mark.parametrize("text,line,column,words", ERRORS, ids=[w[0] for *_, w in ERRORS])
@pytest.mark.parametrize("reader", [parse_graph, read_graph])
def test_errors(text, line, column, words, reader):
    """The fast reader (`reader.py`) refuses what lark refuses, with lark's error."""
    with pytest.raises(IRParseError) as info:
        reader(text)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    message = str(err)
    assert message.startswith(f"line {line}, column {column}: ")
    for w in words:
        assert w in message, message


def test_weight_errors():
    text = "graph @g() {\n  %w = const @w : f32[2]\n  return %w\n}\n"
    with pytest.raises(IRParseError, match=r"line 2, column 14: weight @w has type f32\[3\], the text says f32\[2\]"):
        parse_graph(text, {"w": torch.zeros(3)})
    g = parse_graph(text, {"ww": torch.zeros(2)})  # a const may name a weight that is not given
    assert list(g.weights) == ["ww"] and g.ops[0].attrs["weight"] == "w"
    assert parse_graph(text, {"w": torch.zeros(2)}).weights["w"].data.shape == (2,)


def test_type_and_value_errors():
    with pytest.raises(IRParseError, match=r"line 1, column 5: unexpected end of the text; expected"):
        parse_type("f32[")
    with pytest.raises(IRParseError, match=r"line 1, column 7: unexpected '\]'"):
        parse_type("f32[2,]")
    with pytest.raises(IRParseError, match=r"line 1, column 8: bad encoding #nm"):
        parse_type("f32[2] #nm<n=2>")
    with pytest.raises(IRParseError, match=r"line 1, column 4: unexpected '2'"):
        parse_value("[1 2]")
    with pytest.raises(IRParseError, match=r"line 1, column 2: unknown function '__import__'"):
        parse_value("[(__import__(1))]")


def test_parser_tables_are_cached_in_the_directory_given(tmp_path):
    from fxforge.ir.parser import _CACHE_DIR, parse_type, use_parser_cache

    before = _CACHE_DIR[0]
    try:
        use_parser_cache(tmp_path)
        assert str(parse_type("f32[s0, 4]")) == str(parse_type("f32[s0, 4]"))
        assert [p.name for p in tmp_path.iterdir()] == ["ir-grammar.lark-cache"]
        use_parser_cache(None)
        use_parser_cache(tmp_path)  # a fresh parser from the cached tables parses the same
        assert parse_type("f16[2, 3]").shape == (2, 3)
    finally:
        use_parser_cache(before)
