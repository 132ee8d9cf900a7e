"""Generated kernels (pointwise, row, GEMM/attention template calls) against torch under Triton's
CPU interpreter. Shapes are awkward on purpose: not multiples of the tile, size-1 dims,
broadcasting, strided (transposed, sliced) inputs, a dynamic dim. Tolerances: fp32 1e-4 max abs;
fp16 2e-3 relative-ish (1e-2 abs on values of magnitude <= 4; per-op rounding follows torch, but
transcendental functions differ in the last fp16 bit); bf16 6.25e-2 abs (the interpreter truncates fp32 -> bf16: 1 ulp at |x| < 4).
"""

from __future__ import annotations

import pytest
import torch

from fxforge.codegen import generate_module, generate_source
from fxforge.ir.dtypes import DType
from fxforge.ir.evaluate import bind_symbols, evaluate
from fxforge.ir.graph import Graph
from fxforge.ir.types import TensorType, sym
from fxforge.passes.fuse import fuse
from fxforge.passes.fusion_rules import MAX_HORIZONTAL

F32 = 1e-4


def run_both(g: Graph, *inputs: torch.Tensor):
    mod = generate_module(fuse(g))
    bindings = bind_symbols([v.type for v in g.inputs], inputs, [v.name for v in g.inputs])
    return mod, mod.run(list(inputs), bindings), evaluate(g, list(inputs))


def check(g: Graph, *inputs: torch.Tensor, atol: float = F32) -> object:
    mod, got, want = run_both(g, *inputs)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
        if a.dtype == torch.bool or not a.dtype.is_floating_point:
            assert torch.equal(a, b), (a, b)
        else:
            torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=0, equal_nan=True)
    return mod


def graph(*types: tuple[tuple, DType]) -> tuple[Graph, list]:
    g = Graph()
    return g, [g.add_input(f"x{i}", TensorType(shape, dt)) for i, (shape, dt) in enumerate(types)]


def op(g: Graph, code: str, *xs, **attrs):
    return g.add_op(code, list(xs), attrs).result


def full(g: Graph, value, dtype=DType.f32):
    return op(g, "full", shape=(), value=value, dtype=dtype)


SHAPES = [(1,), (7,), (3, 1, 5), (33, 17), (2, 3, 1029)]
UNARY = ["neg", "abs", "exp", "sqrt", "rsqrt", "sin", "cos", "tanh", "erf", "sigmoid", "relu", "silu",
         "reciprocal", "floor", "ceil", "log", "log1p"]


@pytest.mark.parametrize("shape", SHAPES)
def test_pointwise_unary_chain_is_one_kernel(shape):
    g, (x,) = graph((shape, DType.f32))
    outs = []
    for code in UNARY:
        base = op(g, "abs", x) if code in ("sqrt", "rsqrt", "log", "log1p", "reciprocal") else x
        outs.append(op(g, "add", op(g, code, base), full(g, 0.5)))
    g.set_outputs(outs)
    x0 = (torch.randn(shape) * 2).clamp(-4, 4) + 0.05  # |exp| < 60: fp32 abs error stays < 1e-4
    mod = check(g, x0)
    # the trees all read x: horizontally fused, MAX_HORIZONTAL outputs per kernel
    assert all(k.kind == "pointwise" for k in mod.kernels) and len(mod.kernels) == -(-len(UNARY) // MAX_HORIZONTAL)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_and_clamp_and_cast(approximate):
    g, (x,) = graph(((5, 130), DType.f32))
    y = op(g, "gelu", x, approximate=approximate)
    z = op(g, "clamp", y, min=-0.1, max=0.7)
    g.set_outputs([op(g, "cast", z, dtype=DType.f16), op(g, "cast", x, dtype=DType.i32)])
    x0 = torch.randn(5, 130) * 3
    mod = check(g, x0, atol=1e-3)
    assert len(mod.kernels) == 1  # both trees read x: one horizontally fused kernel, f16 and i32 outputs


@pytest.mark.parametrize("a_shape,b_shape", [((4, 1, 7), (5, 1)), ((1,), (3, 9)), ((2, 1, 1, 33), (1, 6, 1)), ((), (4,))])
def test_binary_broadcasting(a_shape, b_shape):
    g, (a, b) = graph((a_shape, DType.f32), (b_shape, DType.f32))
    outs = [op(g, code, a, b) for code in ("add", "sub", "mul", "div", "maximum", "minimum", "pow", "remainder")]
    outs.append(op(g, "where", op(g, "gt", a, b), op(g, "exp", a), b))
    outs.append(op(g, "logical_and", op(g, "le", a, b), op(g, "ne", a, full(g, 0.0))))
    g.set_outputs(outs)
    a0, b0 = torch.rand(a_shape) + 0.5, torch.randn(b_shape)
    check(g, a0, b0)


def test_pow_literals_and_negative_bases():
    g, (x,) = graph(((37,), DType.f32))
    g.set_outputs([op(g, "pow", x, full(g, e)) for e in (2.0, 3.0, 0.5, -1.0, 1.7)] + [op(g, "pow", full(g, 2.0), x)])
    x0 = torch.linspace(-3, 3, 37)
    check(g, x0)


def test_integer_and_bool_ops():
    g, (a, b) = graph(((3, 11), DType.i64), ((11,), DType.i64))
    outs = [op(g, "remainder", a, b), op(g, "div", a, b, rounding_mode="floor"), op(g, "div", a, b, rounding_mode="trunc"),
            op(g, "bitwise_and", a, b), op(g, "bitwise_xor", a, b), op(g, "mul", a, full(g, 3, DType.i64)),
            op(g, "bitwise_and", op(g, "eq", a, b), op(g, "logical_not", op(g, "lt", a, full(g, 0, DType.i64)))),
            op(g, "div", a, b)]
    g.set_outputs(outs)
    a0 = torch.randint(-20, 20, (3, 11))
    b0 = torch.randint(1, 7, (11,)) * torch.tensor([1, -1] * 5 + [1])
    check(g, a0, b0)


def test_strided_inputs_and_views():
    g, (x, y) = graph(((6, 10), DType.f32), ((10, 6), DType.f32))
    xt = op(g, "permute", y, dims=(1, 0))
    s = op(g, "slice", x, dim=1, start=1, end=10, step=2)
    st = op(g, "slice", xt, dim=1, start=0, end=9, step=2)
    g.set_outputs([op(g, "mul", op(g, "add", x, xt), op(g, "exp", xt)), op(g, "sub", s, st)])
    x0 = torch.randn(10, 6).t()  # a transposed (non-contiguous) input
    y0 = torch.randn(10, 6)
    assert not x0.is_contiguous()
    check(g, x0, y0)


@pytest.mark.parametrize("dtype,atol", [(DType.f16, 1e-2), (DType.bf16, 6.25e-2)])
def test_half_precision_pointwise(dtype, atol):
    g, (x, y) = graph(((3, 77), dtype), ((77,), dtype))
    z = op(g, "mul", op(g, "silu", op(g, "add", x, y)), op(g, "tanh", y))
    g.set_outputs([z, op(g, "cast", z, dtype=DType.f32)])
    check(g, torch.randn(3, 77).to(dtype.torch), torch.randn(77).to(dtype.torch), atol=atol)


ROW_SHAPES = [(1, 1), (13, 37), (3, 5, 100), (2, 64)]


@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("code", ["softmax", "log_softmax", "layer_norm", "rms_norm", "sum", "mean", "amax"])
def test_row_kernels(shape, code):
    g, (x, w, b) = graph((shape, DType.f32), (shape[-1:], DType.f32), (shape[-1:], DType.f32))
    if code in ("softmax", "log_softmax"):
        y = op(g, code, x, dim=-1)
    elif code == "layer_norm":
        y = op(g, code, x, w, b, eps=1e-5)
    elif code == "rms_norm":
        y = op(g, code, x, w, eps=1e-6)
    else:
        y = op(g, code, x, dims=(-1,), keepdim=len(shape) == 2)
    g.set_outputs([y])
    mod = check(g, torch.randn(shape) * 3, torch.randn(shape[-1:]), torch.randn(shape[-1:]))
    assert [k.kind for k in mod.kernels] == ["row"]


def test_layer_norm_without_affine_and_f16_rms_norm():
    g, (x, w) = graph(((9, 48), DType.f16), ((48,), DType.f16))
    g.set_outputs([op(g, "layer_norm", x), op(g, "rms_norm", x, w)])
    check(g, torch.randn(9, 48).half(), torch.randn(48).half(), atol=1e-2)


def test_row_kernel_with_prologue_and_epilogue_on_strided_input():
    g, (x, y, z) = graph(((4, 6, 21), DType.f32), ((21,), DType.f32), ((4, 1), DType.f32))
    xp = op(g, "permute", x, dims=(1, 0, 2))  # strided view [6, 4, 21]
    pre = op(g, "add", op(g, "mul", xp, full(g, 2.0)), y)
    sm = op(g, "softmax", pre, dim=-1)
    out = op(g, "mul", op(g, "mul", sm, z), full(g, 3.0))
    g.set_outputs([out])
    mod = check(g, torch.randn(4, 6, 21), torch.randn(21), torch.randn(4, 1))
    assert [(k.kind, k.ops) for k in mod.kernels] == [("row", ["mul", "add", "softmax", "mul", "mul"])]


def test_softmax_with_masked_rows_like_attention_masks():
    g, (x, m) = graph(((3, 10), DType.f32), ((3, 10), DType.bool))
    g.set_outputs([op(g, "softmax", op(g, "where", m, x, full(g, float("-inf"))), dim=-1)])
    mask = torch.rand(3, 10) > 0.3
    mask[:, 0] = True
    check(g, torch.randn(3, 10), mask)


def test_dynamic_dim_is_a_kernel_argument_not_a_recompile():
    s0 = sym("s0")
    g = Graph()
    x = g.add_input("x", TensorType((2, s0, 24), DType.f32))
    w = g.add_input("w", TensorType((24,), DType.f32))
    g.set_outputs([op(g, "rms_norm", op(g, "add", x, op(g, "sigmoid", x)), w), op(g, "exp", x)])
    mod = generate_module(fuse(g))
    assert "s0" in mod.source.split("def run")[0]  # kernels take s0 as an argument
    for n in (1, 5, 19):
        xs, w0 = torch.randn(2, n, 24), torch.randn(24)
        got = mod.run([xs, w0], {s0: n})
        want = evaluate(g, [xs, w0])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=F32, rtol=0)
    assert generate_module(fuse(g)).module is mod.module  # same text: the loaded module is reused


def test_buffers_are_reused_by_liveness():
    g, (x,) = graph(((8, 40), DType.f32))
    s = x
    for _ in range(4):  # a row op never fuses a row producer: four kernels, each intermediate read once
        s = op(g, "softmax", s, dim=-1)
    g.set_outputs([s])
    mod = check(g, torch.randn(8, 40))
    assert [k.ops for k in mod.kernels] == [["softmax"]] * 4
    # three buffers, made once in _plan (the third kernel reuses the first's); run() itself allocates none
    assert mod.source.count("torch.empty(") == 3 and "# reuses buf" in mod.source
    assert "torch.empty(" not in mod.source[mod.source.index("\ndef run("):]


def test_gemm_epilogue_and_attention_templates():
    g, (x, w, bias, r, q, k, v) = graph(
        ((2, 5, 24), DType.f32), ((40, 24), DType.f32), ((40,), DType.f32), ((2, 5, 40), DType.f32),
        ((1, 4, 9, 16), DType.f32), ((1, 2, 9, 16), DType.f32), ((1, 2, 9, 16), DType.f32))
    y = op(g, "linear", x, w)
    y = op(g, "add", op(g, "gelu", op(g, "add", op(g, "mul", y, full(g, 0.5)), bias), approximate="tanh"), r)
    att = op(g, "attention", q, k, v, is_causal=True, enable_gqa=True)
    g.set_outputs([y, att])
    t = [torch.randn(2, 5, 24), torch.randn(40, 24), torch.randn(40), torch.randn(2, 5, 40),
         torch.randn(1, 4, 9, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16)]
    mod = check(g, *t)
    assert [(k.kind, len(k.ops)) for k in mod.kernels] == [("gemm", 5), ("attention", 1)]
    assert "activation='gelu_tanh'" in mod.source and "scale=0.5" in mod.source


def test_source_is_readable_text_without_importing_triton():
    g, (x,) = graph(((4, 4), DType.f32))
    g.set_outputs([op(g, "softmax", op(g, "exp", x))])
    source, kernels, part, _ = generate_source(fuse(g))
    compile(source, "<generated>", "exec")
    assert source.count("@triton.jit") == 1 and "def run(weights, x0, *, pool=None):" in source
    assert '"""row softmax + 1 prologue op(s):' in source and len(kernels) == 1
    # only what the module uses: no unused device helpers, templates, op table or sympy
    for unused in ("_tanh", "_pow", "_ev", "OPS", "OperandRef", "_attention", "_linear", "import sympy", "F."):
        assert unused not in source, unused
    assert "_c * 0" not in source  # every load/store here spans the columns already
    assert max(len(line) for line in source.splitlines()) <= 120


def test_helpers_and_imports_follow_use():
    g, (x, w) = graph(((4, 40), DType.f32), ((8, 40), DType.f32))
    y = op(g, "linear", op(g, "gelu", x, approximate="tanh"), w)
    g.set_outputs([op(g, "pow", y, op(g, "full", shape=(), value=1.5, dtype=DType.f32))])
    source = generate_source(fuse(g))[0]
    head = source.split("def run(")[0]
    assert "@triton.jit\ndef _tanh(" in head and "@triton.jit\ndef _pow(" in head and "def _imod(" not in head
    assert "import linear as _linear" in head and "_attention" not in head and "_qlinear" not in head


def test_cat_fused_into_a_pointwise_tree_reads_shifted_operands():
    # RoPE's rotate_half: cat(-x[..., 8:], x[..., :8]) * sin + x * cos, with a strided x
    s0 = sym("s0")
    g = Graph()
    x = g.add_input("x", TensorType((1, s0, 3, 16), DType.f32))
    cos = g.add_input("cos", TensorType((s0, 1, 16), DType.f32))
    xt = op(g, "permute", x, dims=(0, 2, 1, 3))  # [1, 3, s0, 16], strided
    lo = op(g, "slice", xt, dim=3, start=0, end=8)
    hi = op(g, "slice", xt, dim=3, start=8, end=16)
    rot = op(g, "cat", op(g, "neg", hi), lo, dim=3)
    out = op(g, "add", op(g, "mul", rot, op(g, "sin", op(g, "permute", cos, dims=(1, 0, 2)))),
             op(g, "mul", xt, op(g, "permute", cos, dims=(1, 0, 2))))
    three = op(g, "cat", op(g, "exp", op(g, "slice", x, dim=1, start=0, end=1)), x, op(g, "cos", x), dim=1)
    g.set_outputs([out, op(g, "mul", three, op(g, "full", shape=(), value=2.0, dtype=DType.f32))])
    mod = generate_module(fuse(g))
    assert [k.ops for k in mod.kernels] == [["neg", "cat", "sin", "mul", "mul", "add"], ["exp", "cos", "cat", "mul"]]
    for n in (1, 7):
        xs, c0 = torch.randn(1, n, 3, 16), torch.randn(n, 1, 16)
        got, want = mod.run([xs, c0], {s0: n}), evaluate(g, [xs, c0])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=F32, rtol=0)


def test_horizontal_fusion_writes_several_outputs_from_one_kernel():
    # cos/sin of one tensor (a strided view), plus a third tree of another dtype reading it: one kernel
    s0 = sym("s0")
    g = Graph()
    x = g.add_input("x", TensorType((s0, 16), DType.f32))
    y = g.add_input("y", TensorType((1, 16), DType.f32))
    f = op(g, "exp", x)  # two uses below: its own kernel
    t = op(g, "permute", op(g, "reshape", f, shape=(s0, 16)), dims=(0, 1))
    c = op(g, "cos", t)
    s = op(g, "mul", op(g, "sin", t), y)
    h = op(g, "cast", op(g, "add", t, y), dtype=DType.f16)
    g.set_outputs([c, s, h, f])
    mod = generate_module(fuse(g))
    kinds = [k.ops for k in mod.kernels]
    assert kinds == [["exp"], ["cos", "sin", "mul", "add", "cast"]], kinds
    assert mod.source.count("tl.store(") == 4  # exp's, and the three trees' of the fused kernel
    assert "horizontal" in mod.kernels[1].reason
    for n in (1, 5, 300):
        xs, ys = torch.randn(n, 16), torch.randn(1, 16)
        got, want = mod.run([xs, ys], {s0: n}), evaluate(g, [xs, ys])
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a.double(), b.double(), atol=1e-3 if a.dtype == torch.float16 else F32, rtol=0)


def test_swiglu_mul_runs_in_the_up_projection_gemm():
    g, (x, wg, wu, r) = graph(((2, 5, 24), DType.f32), ((40, 24), DType.f32), ((40, 24), DType.f32),
                              ((2, 5, 40), DType.f32))
    gate = op(g, "silu", op(g, "linear", x, wg))
    g.set_outputs([op(g, "add", op(g, "mul", gate, op(g, "linear", x, wu)), r)])
    mod = check(g, torch.randn(2, 5, 24), torch.randn(40, 24), torch.randn(40, 24), torch.randn(2, 5, 40))
    assert [k.ops for k in mod.kernels] == [["linear", "silu"], ["linear", "mul", "add"]]
    assert "mul=" in mod.source and "residual=" in mod.source
