"""Post-norm decoder blocks (Gemma2/3, OLMo2, EXAONE 4; issue #13): the dense GEMM's post-norm residual prologue
(z = res + rms_norm(h, w), then the norm of z if any, z stored for the next residual add) and OLMo's weightless
LayerNorm prologue, against torch; the fusion rule on an IR block, run through the generated module. Kernel-level
and graph-level only (cheap); the architectures run in benchmarks/arch_probe.py and tests/runtime/test_arch_decode.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fxforge.codegen import generate_module
from fxforge.codegen.templates.gemm import linear
from fxforge.errors import ShapeError
from fxforge.ir import DType, Graph, TensorType, evaluate, sym
from fxforge.ir.evaluate import bind_symbols
from fxforge.ir.ops import OPS
from fxforge.passes.fuse import fuse, partition

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def rms_norm(x, w, eps):
    return OPS["rms_norm"].ref(x, w, eps=eps)


def _pre_norm(kind: str, K: int, dtype: torch.dtype):
    """(the kwargs of `linear`, the torch form) of the norm of z the GEMM applies: none, RMSNorm, LayerNorm with
    weight and bias, weightless LayerNorm (OLMo)."""
    g, b = (1 + torch.randn(K) / 4).to(dtype), (torch.randn(K) / 4).to(dtype)
    if kind == "rms":
        return dict(norm=(g, 1e-5)), lambda z: rms_norm(z, g, 1e-5)
    if kind == "ln":
        return dict(layer_norm=(g, b, 1e-5)), lambda z: F.layer_norm(z.float(), (K,), g.float(), b.float(), 1e-5).to(dtype)
    if kind == "ln_bare":
        return dict(layer_norm=(None, None, 1e-5)), lambda z: F.layer_norm(z.float(), (K,), eps=1e-5).to(dtype)
    return {}, lambda z: z


@pytest.mark.parametrize(
    "dtype,pre,split_k,M",
    [(torch.float32, "none", 2, 130), (torch.float16, "rms", None, 5), (torch.float32, "ln", None, 5), (torch.float16, "ln_bare", 2, 5)],
)
def test_post_norm_prologue_matches_torch(dtype, pre, split_k, M):
    """Several column tiles at M=5 (only the first writes z: every element of z must be written, and right), two
    row tiles at M=130, a partial last K tile, split-K (each split writes its own K range of z)."""
    torch.manual_seed(0)
    K, N = 96, 160 if M < 16 else 16
    h, res = torch.randn(M, K, dtype=dtype) * 3, torch.randn(M, K, dtype=dtype)
    pw, w = (1 + torch.randn(K) / 4).to(dtype), (torch.randn(N, K) / 10).to(dtype)
    kw, norm_of = _pre_norm(pre, K, dtype)
    z_want = res + rms_norm(h, pw, 1e-6)
    want = F.linear(norm_of(z_want).float(), w.float())
    z_out = torch.full((M, K), float("nan"), dtype=dtype)
    y, z = linear(h, w, post_norm=(res, pw, 1e-6), keep_z=True, z_out=z_out, split_k=split_k, **kw)
    assert z.data_ptr() == z_out.data_ptr() and y.shape == (M, N)
    torch.testing.assert_close(z, z_want, atol=TOL[dtype], rtol=TOL[dtype])  # fp16: one rounding step at most
    assert (y.float() - want).abs().max() <= TOL[dtype] * 4 * want.abs().max()
    assert torch.equal(linear(h, w, post_norm=(res, pw, 1e-6), split_k=split_k, **kw), y)  # without z: the same y


def test_weightless_layer_norm_prologue():
    torch.manual_seed(1)
    x, w = torch.randn(3, 80) * 2 + 1, torch.randn(24, 80) / 10
    got = linear(x, w, layer_norm=(None, None, 1e-5))
    torch.testing.assert_close(got, F.linear(F.layer_norm(x, (80,), eps=1e-5), w), atol=1e-5, rtol=1e-5)


def test_post_norm_operands_are_checked():
    x, w, res = torch.randn(2, 8), torch.randn(6, 8), torch.randn(2, 8)
    with pytest.raises(ShapeError, match="post_norm"):
        linear(x, w, post_norm=(torch.randn(3, 8), torch.ones(8), 1e-6))
    with pytest.raises(ShapeError, match="post_norm"):
        linear(x, w, post_norm=(res, torch.ones(7), 1e-6))
    with pytest.raises(ShapeError, match="keep_z"):
        linear(x, w, keep_z=True)
    with pytest.raises(ShapeError, match="keep flags"):
        linear(x, w, post_norm=(res, torch.ones(8), 1e-6), keep=torch.ones(2, 1))


def _post_norm_block(pre_norm: bool) -> Graph:
    """h2 = h + rms_norm(o_proj(a)); y = down(act(up(prenorm(h2) or h2))); out = h2 + rms_norm(y): a post-norm
    block (Gemma with `pre_norm`, OLMo2 without); the second residual add reads h2 again."""
    torch.manual_seed(2)
    g = Graph()
    s0 = sym("s0")
    a = g.add_input("a", TensorType((1, s0, 32), DType.f32))
    h = g.add_input("h", TensorType((1, s0, 32), DType.f32))

    def const(name, *shape, scale=0.2, base=0.0):
        return g.add_op("const", [], {"weight": g.add_weight(name, base + torch.randn(*shape) * scale)}).result

    o = g.add_op("linear", [a, const("o", 32, 32)], {}).result
    h2 = g.add_op("add", [h, g.add_op("rms_norm", [o, const("n1", 32, base=1.0)], {"eps": 1e-6}).result], {}).result
    x = g.add_op("rms_norm", [h2, const("n2", 32, base=1.0)], {"eps": 1e-6}).result if pre_norm else h2
    up = g.add_op("silu", [g.add_op("linear", [x, const("up", 48, 32)], {}).result], {}).result
    y = g.add_op("linear", [up, const("down", 32, 48)], {}).result
    g.set_outputs([g.add_op("add", [h2, g.add_op("rms_norm", [y, const("n3", 32, base=1.0)], {"eps": 1e-6}).result], {}).result])
    return g


@pytest.mark.parametrize("pre_norm", [True, False])
def test_post_norm_block_fuses_and_runs(pre_norm):
    """The up projection's group takes the post-norm and the add (z stored: the last add reads it); the generated
    module gives the graph's reference result. The last rms_norm + add (a graph output, no consumer GEMM) stays a
    row kernel."""
    g = _post_norm_block(pre_norm)
    part = partition(g)
    up = next(grp for grp in part.groups if grp.kind == "gemm" and grp.params["post_norm"] is not None)
    assert [o.opcode for o in up.ops][:2] == ["rms_norm", "add"] and up.params["post_norm"].z in up.outputs
    assert sum(grp.kind == "row" for grp in part.groups) == 1
    inputs = [torch.randn(1, 3, 32), torch.randn(1, 3, 32)]
    mod = generate_module(fuse(g))
    assert "z_out=" in mod.source and "keep_z=True" in mod.source
    got = mod.run(inputs, bind_symbols([v.type for v in g.inputs], inputs, [v.name for v in g.inputs]))
    torch.testing.assert_close(got[0], evaluate(g, inputs)[0], atol=1e-5, rtol=1e-5)
