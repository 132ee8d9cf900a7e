"""More recognised variants of the decoder-layer patterns (issue #13, `benchmarks/arch_probe.py`), each against
torch, kernel-level and graph-level only (cheap): the squared ReLU of Arcee's MLP as one GEMM-epilogue activation
(`relu2`, dense and 4-bit decode GEMMs); Cohere's LayerNorm spelled out (a `layer_norm`) read by both GEMMs of its
parallel block (`norm_copies`: each takes it as its prologue); a scalar multiplier of a 4-bit decode GEMM's result
(Granite's residual multiplier) in that kernel's epilogue; Gemma's fp16 RMSNorm (an fp32 (1 + w) weight before
the one rounding) as the dense and 4-bit decode GEMMs' norm prologue."""

from __future__ import annotations

import pytest
import torch

from fxforge.codegen.pool import Workspace
from fxforge.codegen.templates.gemm import linear
from fxforge.codegen.templates.qlinear_decode import qlinear_w4_decode
from fxforge.ir import DType, evaluate, verify
from fxforge.ir.ops import OPS
from fxforge.passes import PassContext
from fxforge.passes.canonicalize import Canonicalize
from fxforge.passes.cse import CommonSubexpressionElimination
from fxforge.passes.fuse import partition

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _relu2(h: torch.Tensor) -> torch.Tensor:
    return torch.square(torch.relu(h))


class _Relu2Mlp(torch.nn.Module):
    """up -> ReLU -> square -> down, the square spelled two ways (aten.square, ** 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(16, 32, bias=False), torch.nn.Linear(32, 16, bias=False)

    def forward(self, x):
        return self.down(torch.square(torch.relu(self.up(x)))) + self.down(torch.relu(self.up(x)) ** 2)


def test_relu_square_is_one_epilogue_activation():
    """relu(y) * relu(y) and relu(y) ** 2 become relu2(y) with torch's bits, and the up GEMM takes it."""
    from fxforge.frontend.export import capture_export

    x = torch.randn(2, 3, 16)
    g = capture_export(_Relu2Mlp(), (x,)).lowered.graph
    want = evaluate(g, [x])
    ctx = PassContext()
    Canonicalize().run(g, ctx)
    verify(g)
    assert ctx.stats["rewrites"]["relu2_mul"] == 1 and ctx.stats["rewrites"]["relu2_pow"] == 1
    # the graph's GEMMs are not bit-reproducible under multithreaded MKL (same op, other buffers): close; relu2 itself
    # has torch's bits
    torch.testing.assert_close(evaluate(g, [x])[0], want[0], rtol=1e-6, atol=1e-7)
    y = torch.randn(4, 33)
    assert torch.equal(OPS["relu2"].ref(y), torch.square(torch.relu(y))) and torch.equal(OPS["relu2"].ref(y), torch.relu(y) ** 2)
    gemms = [grp for grp in partition(g).groups if grp.kind == "gemm"]
    assert sorted(grp.params["activation"] for grp in gemms) == ["none", "none", "relu2", "relu2"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gemm_relu2_epilogue(dtype):
    torch.manual_seed(0)
    x, w = torch.randn(3, 96, dtype=dtype), (torch.randn(40, 96) / 10).to(dtype)
    want = _relu2(x.float() @ w.float().T)
    got = linear(x, w, activation="relu2")
    assert (got.float() - want).abs().max() <= TOL[dtype] * 4 * want.abs().max()


def test_qlinear_decode_relu2_epilogue():
    from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref
    from fxforge.ir.weight_layouts import to_decode_layout

    torch.manual_seed(1)
    w = encode_weight(torch.randn(48, 128), "w4a16-int4", group=64)
    x = torch.randn(2, 128).half()
    y = qlinear_w4_decode(x, to_decode_layout(w), activation="relu2", ws=Workspace())
    ref = _relu2(qlinear_ref(x.float(), decode_weight(w), None, scheme="w4a16-int4", act_format=None, group=64, lorc_rank=0))
    assert (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()


class _ParallelBlock(torch.nn.Module):
    """Cohere's block: a hand-written LayerNorm (fp32 mean and variance, weight, no bias) read by attention's and the
    MLP's GEMMs, both added to the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(1 + torch.randn(16) / 4)
        self.attn, self.mlp = torch.nn.Linear(16, 16, bias=False), torch.nn.Linear(16, 16, bias=False)

    def forward(self, x):
        h = x.to(torch.float32)
        mean = h.mean(-1, keepdim=True)
        var = (h - mean).pow(2).mean(-1, keepdim=True)
        h = (self.weight.to(torch.float32) * ((h - mean) * torch.rsqrt(var + 1e-5))).to(x.dtype)
        return x + self.attn(h) + self.mlp(h)


def test_parallel_block_layer_norm_prologue_in_both_gemms():
    from fxforge.frontend.export import capture_export
    from fxforge.passes.norm_copies import copy_shared_norms

    torch.manual_seed(0)
    block, x = _ParallelBlock(), torch.randn(2, 3, 16) + 2
    g = capture_export(block, (x,)).lowered.graph
    Canonicalize().run(g, PassContext())
    CommonSubexpressionElimination().run(g, PassContext())  # the two x - mean, as the pipeline merges them
    ctx = PassContext()
    Canonicalize().run(g, ctx)
    verify(g)
    assert ctx.stats["rewrites"]["layer_norm_centered"] == 1
    torch.testing.assert_close(evaluate(g, [x])[0], block(x), rtol=1e-5, atol=1e-5)
    assert copy_shared_norms(g) == 1
    verify(g)
    part = partition(g)
    gemms = [grp for grp in part.groups if grp.kind == "gemm"]
    assert len(part.groups) == 2 and all(grp.params["norm"].opcode == "layer_norm" for grp in gemms)
    assert [grp.params["residual"] is not None for grp in gemms] == [True, True]  # both adds in the epilogues
    torch.testing.assert_close(evaluate(g, [x])[0], block(x), rtol=1e-5, atol=1e-5)


def test_qlinear_decode_scale_epilogue():
    """scale * (x @ W^T) + residual in the 4-bit decode kernel, split-K too."""
    from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref
    from fxforge.ir.weight_layouts import to_decode_layout

    torch.manual_seed(2)
    w = encode_weight(torch.randn(48, 256), "w4a16-int4", group=64)
    x, r = torch.randn(3, 256).half(), torch.randn(3, 48).half()
    ref = 0.22 * qlinear_ref(x.float(), decode_weight(w), None, scheme="w4a16-int4", act_format=None, group=64, lorc_rank=0) + r.float()
    for split_k in (None, 2):
        y = qlinear_w4_decode(x, to_decode_layout(w), scale=0.22, residual=r, ws=Workspace(), split_k=split_k)
        assert (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()


class _ScaledResidual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 64, bias=False)

    def forward(self, x):
        return x + self.proj(x) * 0.22  # Granite's residual multiplier


def test_decode_layout_qlinear_takes_the_scale_step():
    import fxforge

    torch.manual_seed(0)
    model, x = _ScaledResidual().half(), torch.randn(1, 3, 64).half()
    opts = dict(dynamic=False, quantize="w4a16-int4", quantize_group=64)
    mod = fxforge.compile_aot(model, (x,), executor="interpret", **opts)
    ref = fxforge.compile_aot(model, (x,), executor="reference", **opts)
    source = mod.program.executor.module.source
    assert source.count("_qlinear_w4_decode(") == 1 and "scale=0.22" in source and "residual=" in source
    assert len(mod.graph.partition.groups) == 1
    y, want = mod(x).float(), ref(x).float()
    assert (y - want).abs().max() <= 2e-3 * want.abs().max()


def _one_rounding_norm(x: torch.Tensor, g: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Gemma's RMSNorm of 16-bit x with an fp32 weight: scale and weight in fp32, one rounding."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * g).to(x.dtype)


def test_fp32_norm_weight_prologue_rounds_once():
    """An fp32 norm weight on fp16 x: the prologue's normed rows are the one-rounding ones (Llama's rounds twice),
    bit for bit: the dense GEMM, the decode kernel at 3 rows and its 24-row prefill (the row kernel)."""
    from fxforge.ir.lowp_ops import encode_weight
    from fxforge.ir.weight_layouts import to_decode_layout

    torch.manual_seed(3)
    x, g = (torch.randn(3, 256) * 2).half(), 1 + torch.randn(256) / 4
    one = _one_rounding_norm(x, g)
    w = (torch.randn(64, 256) / 10).half()
    assert torch.equal(linear(x, w, norm=(g, 1e-6)), linear(one, w))
    wl = to_decode_layout(encode_weight(torch.randn(64, 256), "w4a16-int4", group=64))
    for rows in (1, 8):
        got = qlinear_w4_decode(x.repeat(rows, 1), wl, norm=(g, 1e-6), ws=Workspace())
        assert torch.equal(got, qlinear_w4_decode(one.repeat(rows, 1), wl, ws=Workspace()))


class _GemmaNormLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(64) / 4)
        self.proj = torch.nn.Linear(64, 64, bias=False)

    def forward(self, x):
        xf = x.float()
        h = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + self.weight.float())
        return self.proj(h.type_as(x))


@pytest.mark.parametrize("quantize", [None, "w4a16-int4"])
def test_gemma_fp16_norm_is_the_gemm_prologue(quantize):
    import fxforge

    torch.manual_seed(0)
    model, x = _GemmaNormLinear().half(), torch.randn(1, 3, 64).half()
    opts = dict(dynamic=False, quantize=quantize, quantize_group=64) if quantize else dict(dynamic=False)
    mod = fxforge.compile_aot(model, (x,), executor="interpret", **opts)
    ref = fxforge.compile_aot(model, (x,), executor="reference", **opts)
    (group,) = mod.graph.partition.groups
    norm = group.params["norm"]  # the cast chain is one rms_norm(x16, w32) since canonicalize takes it (one rounding)
    assert "cast" not in [o.opcode for o in group.ops] and norm.opcode == "rms_norm"
    assert norm.operands[1].type.dtype == DType.f32 and norm.operands[0].type.dtype == DType.f16
    y, want = mod(x).float(), ref(x).float()
    assert (y - want).abs().max() <= 2e-3 * want.abs().max()
