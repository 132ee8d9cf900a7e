"""Canonicalization rules: each rewrite happens, and the graph computes what it computed before."""

import pytest
import torch

from fxforge.ir import DType, Graph, TensorType, evaluate, sym, verify
from fxforge.passes import PassContext
from fxforge.passes.canonicalize import Canonicalize

F32, F16, BF16, I64 = DType.f32, DType.f16, DType.bf16, DType.i64
S0 = sym("s0")


class B:
    """A tiny graph builder: `b.x = input`, `b("mul", a, c)` adds an op and returns its value."""

    def __init__(self):
        self.g = Graph()

    def input(self, name, shape, dtype=F32):
        return self.g.add_input(name, TensorType(tuple(shape), dtype))

    def const(self, name, tensor):
        return self.g.add_op("const", [], {"weight": self.g.add_weight(name, tensor)}).result

    def full(self, value, dtype=F32, shape=()):
        return self.g.add_op("full", [], {"shape": shape, "value": value, "dtype": dtype}).result

    def __call__(self, opcode, *xs, **attrs):
        return self.g.add_op(opcode, list(xs), attrs).result


def canonicalize(g, inputs, atol=0.0, rtol=0.0):
    """Run the pass; check the graph verifies and evaluates as before. Returns the rewrite counts."""
    want = evaluate(g, inputs)
    ctx = PassContext()
    Canonicalize().run(g, ctx)
    verify(g)
    got = evaluate(g, inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, equal_nan=True)
    return ctx.stats["rewrites"]


def ops(g):
    return g.op_counts()


# -- no-op folds and compositions -------------------------------------------------------------------


def test_noop_views_and_casts_fold_on_symbolic_shapes():
    b = B()
    x = b.input("x", (S0, 8))
    y = b("cast", x, dtype=F32)
    y = b("reshape", y, shape=(S0, 8))
    y = b("permute", y, dims=(0, 1))
    y = b("expand", y, shape=(S0, 8))
    y = b("slice", y, dim=0, start=0, end=S0)
    b.g.set_outputs([b("exp", y)])
    stats = canonicalize(b.g, [torch.randn(3, 8)])
    assert ops(b.g) == {"exp": 1}
    assert stats == {f"fold_noop_{k}": 1 for k in ("cast", "reshape", "permute", "expand", "slice")}


def test_real_views_are_kept():
    b = B()
    x = b.input("x", (4, 4))
    outs = [b("permute", x, dims=(1, 0)), b("slice", x, dim=0, start=1, end=4), b("expand", b("reshape", x, shape=(1, 4, 4)), shape=(2, 4, 4)),
            b("cast", x, dtype=F16)]
    b.g.set_outputs(outs)
    assert canonicalize(b.g, [torch.randn(4, 4)]) == {}


def test_reshapes_and_permutes_compose():
    b = B()
    x = b.input("x", (S0, 4, 6))
    r = b("reshape", b("reshape", x, shape=(S0, 24)), shape=(S0, 2, 12))
    back = b("reshape", b("reshape", x, shape=(S0 * 4, 6)), shape=(S0, 4, 6))
    p = b("permute", b("permute", x, dims=(1, 2, 0)), dims=(2, 0, 1))  # the identity
    q = b("permute", b("permute", x, dims=(1, 2, 0)), dims=(1, 0, 2))
    b.g.set_outputs([r, b("add", back, p), q])
    stats = canonicalize(b.g, [torch.randn(3, 4, 6)])
    assert stats == {"compose_reshape": 2, "compose_permute": 2}
    assert ops(b.g) == {"add": 1, "permute": 1, "reshape": 1}
    assert b.g.find("permute")[0].attrs["dims"] == (2, 1, 0)
    assert b.g.find("add")[0].operands[0] is x and b.g.find("add")[0].operands[1] is x


def test_exact_widening_round_trips_fold_and_narrowing_ones_do_not():
    b = B()
    h = b.input("h", (4,), F16)
    x = b.input("x", (4,))
    b.g.set_outputs([b("cast", b("cast", h, dtype=F32), dtype=F16), b("cast", b("cast", x, dtype=F16), dtype=F32)])
    stats = canonicalize(b.g, [torch.randn(4).half(), torch.randn(4) * 1e3])
    assert stats == {"fold_widening_round_trip": 1}
    assert b.g.outputs[0] is h and ops(b.g) == {"cast": 2}


def test_identity_scalars_fold_only_when_exact():
    b = B()
    x = b.input("x", (S0, 4))
    i = b.input("i", (4,), I64)
    y = b("mul", b.full(1), x)
    y = b("div", y, b.full(1.0, DType.f64))
    y = b("sub", y, b.full(0, I64))
    kept = [b("add", y, b.full(0.0)), b("mul", i, b.full(1.0, DType.f64)), b("mul", x, b.full(1, shape=(2, 1, 1)))]
    b.g.set_outputs(kept)
    x0 = torch.tensor([[-0.0, 1.0, float("nan"), -2.5]] * 3)
    stats = canonicalize(b.g, [x0, torch.arange(4)])
    assert stats == {"fold_mul_one": 1, "fold_div_one": 1, "fold_sub_zero": 1}
    assert b.g.find("add")[0].operands[0] is x  # x + 0.0 stays: -0.0 + 0.0 is +0.0
    assert len(b.g.find("mul")) == 2  # int * 1.0 is float; a rank-3 full broadcasts x up


# -- linear -----------------------------------------------------------------------------------------


def aot_linear(b, x, w, bias, shape_2d, shape_out):
    """What aot_autograd gives for F.linear on a 3-D input: view, t, mm/addmm, view back."""
    flat = b("reshape", x, shape=shape_2d)
    y = b("matmul", flat, b("permute", w, dims=(1, 0)))
    if bias is not None:
        y = b("add", y, bias)
    return b("reshape", y, shape=shape_out)


@pytest.mark.parametrize("with_bias", [True, False])
def test_aot_linear_sandwich_becomes_linear_on_the_unflattened_input(with_bias):
    b = B()
    x = b.input("x", (S0, 8, 64))
    w = b.const("w", torch.randn(16, 64))
    bias = b.const("b", torch.randn(16)) if with_bias else None
    b.g.set_outputs([aot_linear(b, x, w, bias, (S0 * 8, 64), (S0, 8, 16))])
    stats = canonicalize(b.g, [torch.randn(3, 8, 64)], atol=1e-5, rtol=1e-5)
    assert ops(b.g) == {"const": 1 + with_bias, "linear": 1}
    lin = b.g.find("linear")[0]
    assert lin.operands[0] is x and lin.operands[1] is w and lin.result.type.shape == (S0, 8, 16)
    assert stats == {"matmul_to_linear": 1, "linear_unflatten": 1, **({"linear_bias": 1} if with_bias else {})}


def test_dynamo_head_bmm_sandwich_becomes_a_batched_matmul():
    """Dynamo's q k^T and p v: bmm of the heads viewed [B * H, m, k], viewed back [B, H, m, n]; v a GQA repeat
    (expand of [B, Hkv, 1, L, d]) viewed straight to [B * H, L, d]. Each becomes matmul on [B, H, ...] views; a
    bmm viewed back to fewer dims (the batched experts' squeeze) stays."""
    b = B()
    q, kt = b.input("q", (2, 4, S0, 16)), b.input("kt", (2, 4, 16, 6))
    v = b.input("v", (2, 2, 1, 6, 16))
    s = b("reshape", b("matmul", b("reshape", q, shape=(8, S0, 16)), b("reshape", kt, shape=(8, 16, 6))),
          shape=(2, 4, S0, 6))
    rep = b("reshape", b("expand", v, shape=(2, 2, 2, 6, 16)), shape=(8, 6, 16))
    o = b("reshape", b("matmul", b("reshape", s, shape=(8, S0, 6)), rep), shape=(2, 4, S0, 16))
    squeezed = b("reshape", b("matmul", b("reshape", q, shape=(8, S0, 16)), b("reshape", kt, shape=(8, 16, 6))),
                 shape=(8 * S0, 6))
    b.g.set_outputs([o, squeezed])
    g = torch.Generator().manual_seed(0)
    stats = canonicalize(b.g, [torch.randn(2, 4, 3, 16, generator=g), torch.randn(2, 4, 16, 6, generator=g),
                               torch.randn(2, 2, 1, 6, 16, generator=g)], atol=1e-5, rtol=1e-5)
    assert stats.get("matmul_unflatten") == 2
    assert sorted(len(m.result.type.shape) for m in b.g.find("matmul")) == [3, 4, 4]
    first = [m for m in b.g.find("matmul") if m.result.type.shape == (2, 4, S0, 6)][0]
    assert first.operands[0] is q and first.operands[1] is kt  # the views of q and kt folded away


def test_merged_heads_before_o_proj_become_a_3d_linear():
    b = B()
    x = b.input("x", (S0, 8, 4, 16))  # attention output, heads not yet merged
    w = b.const("w", torch.randn(64, 64))
    b.g.set_outputs([aot_linear(b, x, w, None, (S0 * 8, 64), (S0, 8, 64))])
    canonicalize(b.g, [torch.randn(2, 8, 4, 16)], atol=1e-5, rtol=1e-5)
    assert ops(b.g) == {"const": 1, "linear": 1, "reshape": 1}
    assert b.g.find("reshape")[0].result.type.shape == (S0, 8, 64)


def test_2d_matmul_with_bias_and_bias_first():
    b = B()
    x = b.input("x", (S0, 64))
    w, bias = b.const("w", torch.randn(16, 64)), b.const("b", torch.randn(16))
    b.g.set_outputs([b("add", bias, b("matmul", x, b("permute", w, dims=(1, 0))))])
    canonicalize(b.g, [torch.randn(5, 64)], atol=1e-5, rtol=1e-5)
    assert ops(b.g) == {"const": 2, "linear": 1}
    assert b.g.find("linear")[0].operands == [x, w, bias]


def test_linear_is_not_formed_where_it_would_be_wrong_or_duplicate_work():
    b = B()
    x = b.input("x", (S0, 8, 64))
    w_in = b.input("w", (16, 64))  # not a const
    not_const = b("matmul", x, b("permute", w_in, dims=(1, 0)))
    w = b.const("w", torch.randn(16, 64))
    flat = b("reshape", x, shape=(S0 * 8, 64))
    mm = b("matmul", flat, b("permute", w, dims=(1, 0)))  # also an output: the bias add must not absorb it
    biased = b("add", mm, b.const("b", torch.randn(16)))
    wide_bias = b("add", b("matmul", flat, b("permute", w, dims=(1, 0))), b.const("b2", torch.randn(1, 16)))
    b.g.set_outputs([not_const, mm, b("reshape", biased, shape=(S0, 8, 16)), wide_bias])
    stats = canonicalize(b.g, [torch.randn(2, 8, 64), torch.randn(16, 64)], atol=1e-5, rtol=1e-5)
    assert stats == {"matmul_to_linear": 2}
    assert len(b.g.find("matmul")) == 1 and len(b.g.find("add")) == 2


# -- rms_norm ---------------------------------------------------------------------------------------


def llama_rms(b, x, weight=None, eps=1e-6, eps_dtype=DType.f64, dims=(-1,)):
    """LlamaRMSNorm as aot_autograd writes it out."""
    xf = b("cast", x, dtype=F32) if x.type.dtype != F32 else x
    var = b("mean", b("pow", xf, b.full(2)), dims=dims, keepdim=True)
    y = b("mul", xf, b("rsqrt", b("add", var, b.full(eps, eps_dtype))))
    if x.type.dtype != F32:
        y = b("cast", y, dtype=x.type.dtype)
    return y if weight is None else b("mul", weight, y)


def hf_rms_norm(x, weight, eps):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(x.shape[-1], eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_llama_rms_norm_is_recognised_and_equals_torch(dtype):
    b = B()
    x = b.input("x", (S0, 8, 64), dtype)
    weight = (torch.rand(64) + 0.5).to(dtype.torch)
    b.g.set_outputs([llama_rms(b, x, b.const("w", weight))])
    inp = (torch.randn(3, 8, 64) * 4).to(dtype.torch)
    tol = 1e-5 if dtype == F32 else 1e-2  # the written-out pow(x, full 2) is std::pow, rms_norm squares: ulps
    canonicalize(b.g, [inp], atol=tol, rtol=tol)
    assert ops(b.g) == {"const": 1, "rms_norm": 1}
    norm = b.g.find("rms_norm")[0]
    assert norm.operands[0] is x and norm.attrs["eps"] == 1e-6 and norm.result.type.dtype == dtype
    torch.testing.assert_close(evaluate(b.g, [inp])[0], hf_rms_norm(inp, weight, 1e-6), atol=0, rtol=0)


def test_fp32_weight_on_fp16_activations_keeps_the_weight_multiply_outside():
    b = B()
    x = b.input("x", (S0, 64), F16)
    weight = torch.rand(64) + 0.5  # fp32: the multiply promotes to fp32, which rms_norm cannot express
    b.g.set_outputs([llama_rms(b, x, b.const("w", weight))])
    inp = torch.randn(5, 64).half()
    canonicalize(b.g, [inp], atol=1e-3, rtol=1e-3)
    assert ops(b.g) == {"const": 1, "mul": 1, "rms_norm": 1}
    assert len(b.g.find("rms_norm")[0].operands) == 1 and b.g.outputs[0].type.dtype == F32
    torch.testing.assert_close(evaluate(b.g, [inp])[0], hf_rms_norm(inp, weight, 1e-6), atol=0, rtol=0)


def test_eps_is_read_through_its_full_dtype_and_unweighted_norms_work():
    b = B()
    x = b.input("x", (4, 64))
    b.g.set_outputs([llama_rms(b, x, eps=1e-6, eps_dtype=F16)])
    canonicalize(b.g, [torch.randn(4, 64)], atol=1e-5, rtol=1e-5)
    (norm,) = b.g.find("rms_norm")
    assert len(norm.operands) == 1 and norm.attrs["eps"] == torch.tensor(1e-6, dtype=torch.float16).item() != 1e-6


def test_rms_norm_look_alikes_are_left_alone():
    b = B()
    x = b.input("x", (4, 64))
    wrong_dim = llama_rms(b, x, dims=(0,))
    b2 = B()
    x2 = b2.input("x", (4, 64))
    xf = x2
    var = b2("mean", b2("pow", xf, b2.full(2)), dims=(-1,), keepdim=True)
    inv = b2("rsqrt", b2("add", var, b2.full(1e-5)))
    b2.g.set_outputs([b2("mul", xf, inv), inv])  # the rsqrt is needed elsewhere: no rewrite
    b.g.set_outputs([wrong_dim, b("mul", x, b("rsqrt", b("add", b("mean", b("pow", x, b.full(3)), dims=(-1,), keepdim=True),
                                                         b.full(1e-5))))])
    assert canonicalize(b.g, [torch.randn(4, 64)]) == {}
    assert canonicalize(b2.g, [torch.randn(4, 64)]) == {}


# -- activations ------------------------------------------------------------------------------------


def test_x_times_sigmoid_x_is_silu():
    b = B()
    x = b.input("x", (S0, 32))
    other = b.input("y", (S0, 32))
    b.g.set_outputs([b("mul", b("sigmoid", x), x), b("mul", x, b("sigmoid", other))])
    stats = canonicalize(b.g, [torch.randn(3, 32), torch.randn(3, 32)], atol=1e-6, rtol=1e-6)
    assert stats == {"silu": 1}
    assert ops(b.g) == {"mul": 1, "sigmoid": 1, "silu": 1}
