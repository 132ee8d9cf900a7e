"""The 4-bit decode GEMM's LayerNorm prologue (`qlinear_decode_fuse.prologue_rows` LAYER_NORM; StableLM, Starcoder2,
Cohere, OLMo: a quantized layer launches what a dense one does): against `qlinear_ref` of the row-major weight on the
op table's layer_norm(x) under the interpreter, weight and bias each optional, at decode rows (in the kernel, split-K
too), prefill rows (the row kernel) and on the FP8-MMA layout; the fuse pass puts a LayerNorm into a decode qlinear's
group (no layer_norm row kernel in a quantized Starcoder2 step); the kernel builds for sm_90 / sm_80 with its K loop's
SASS as the RMSNorm prologue's."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.codegen.build import build_in_subprocess
from fxforge.codegen.templates.qlinear_decode import qlinear_w4_decode, w4_decode_spec
from fxforge.errors import ShapeError
from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref
from fxforge.ir.ops import OPS
from fxforge.ir.weight_layouts import to_decode_layout
from fxforge.runtime.generate import StaticKVCache
from fxforge.testing import counting_launches, gqa_decoder

N, K, GROUP = 48, 192, 32


@pytest.mark.parametrize("scheme,fp8", [("w4a16-int4", False), ("w4a8-fp", False), ("w4a8-fp", True)])
@pytest.mark.parametrize("M,weight,bias,split", [(1, True, True, None), (5, True, False, 2), (16, False, False, None),
                                                 (70, True, True, None)])  # 70 rows: prefill tiles
def test_layer_norm_prologue_matches_reference(scheme, fp8, M, weight, bias, split):
    torch.manual_seed(M)
    w = encode_weight(torch.randn(N, K), scheme, group=GROUP)
    x = (torch.randn(M, K) * 2 + 0.5).half()  # off-centre rows: the mean matters
    g = (torch.rand(K) + 0.5).half() if weight else None
    b = torch.randn(K).half() if bias else None
    y = qlinear_w4_decode(x, to_decode_layout(w, fp8=fp8), layer_norm=(g, b, 1e-5), split_k=split)
    xn = OPS["layer_norm"].ref(x, *[t for t in (g, b) if t is not None], eps=1e-5)
    act = "f8e4m3" if scheme == "w4a8-fp" else None
    ref = qlinear_ref(xn.float(), decode_weight(w), None, scheme=scheme, act_format=act, group=GROUP, lorc_rank=0)
    assert y.shape == (M, N) and (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()


def _truncated(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> bf16 as Triton's interpreter converts (truncation; a GPU rounds to nearest), kept as fp32."""
    return (t.float().view(torch.int32) & -65536).view(torch.float32)


@pytest.mark.parametrize("scheme,fp8", [("w4a16-int4", False), ("w4a8-fp", False), ("w4a8-fp", True)])
@pytest.mark.parametrize("M", [3, 40])
def test_bf16_layer_norm_is_exact(scheme, fp8, M):
    """bf16 rows (scaled into fp16 / quantized to E4M3 in the prologue): the same numbers as the LayerNorm computed in
    fp32 and rounded once to bf16, then the reference GEMM, rounding as the interpreter does."""
    torch.manual_seed(M)
    w = encode_weight(torch.randn(N, K), scheme, group=GROUP)
    x, g, b = (torch.randn(M, K) * 3 + 1).bfloat16(), (torch.rand(K) + 0.5).bfloat16(), torch.randn(K).bfloat16()
    y = qlinear_w4_decode(x, to_decode_layout(w, fp8=fp8), layer_norm=(g, b, 1e-5))
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)
    xn = _truncated((xf - mean) * torch.rsqrt(((xf - mean) ** 2).mean(-1, keepdim=True) + 1e-5) * g.float() + b.float())
    act = "f8e4m3" if scheme == "w4a8-fp" else None
    ref = _truncated(qlinear_ref(xn, decode_weight(w), None, scheme=scheme, act_format=act, group=GROUP, lorc_rank=0))
    assert y.dtype == torch.bfloat16 and torch.equal(y.float(), ref)


def test_layer_norm_operands_are_checked():
    w = to_decode_layout(encode_weight(torch.randn(16, 64), "w4a16-int4", group=64))
    x, ones = torch.randn(2, 64).half(), torch.ones(64).half()
    with pytest.raises(ShapeError, match="one norm prologue"):
        qlinear_w4_decode(x, w, norm=(ones, 1e-6), layer_norm=(ones, None, 1e-5))
    with pytest.raises(ShapeError, match=r"layer_norm takes a bias of shape \(64,\) or None, and no post_norm"):
        qlinear_w4_decode(x, w, layer_norm=(ones, torch.ones(8).half(), 1e-5))
    with pytest.raises(ShapeError, match="and no post_norm"):
        qlinear_w4_decode(x, w, layer_norm=(ones, None, 1e-5), post_norm=(x, ones, 1e-6))


def test_quantized_starcoder2_step_fuses_its_layer_norms():
    model = gqa_decoder("starcoder2", layers=1).half()
    opts = dict(max_length=12, quantize="w4a16-int4", quantize_group=32)
    dec = fxforge.compile_decoder(model, executor="interpret", **opts)
    ref = fxforge.compile_decoder(model, executor="reference", **opts)
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(dec.generate(ids, max_new_tokens=4), ref.generate(ids, max_new_tokens=4))
    cache = StaticKVCache.for_step(dec.graph)
    dec(ids, torch.arange(5), cache.tensors)
    with counting_launches() as names:
        dec(ids[:, :1], torch.tensor([5]), cache.tensors)
    assert not [n for n in names if "layer_norm" in n] and names.count("qlinear_w4_decode_kernel") == 4, names


@pytest.mark.parametrize("arch", [90, 80])
def test_layer_norm_prologue_builds(arch):
    specs = [w4_decode_spec(4096, 4096, M=M, arch=arch, fp4=fp4, group=32, norm=True, layer_norm=ln)
             for fp4 in (False, True) for M in (1, 16) for ln in (False, True)]
    builds = build_in_subprocess(specs, arch, timeout=900)
    report = "\n".join(f"{b.label}: ok={b.ok} regs={b.registers} stack={b.spills} loop={b.loop_instructions} "
                       f"{b.error[:200]}" for b in builds)
    assert all(b.ok and b.spills == 0 for b in builds), report
    for rms, ln in zip(builds[0::2], builds[1::2]):  # the K loop is the RMSNorm kernel's (the prologue is before it)
        assert abs(ln.loop_instructions - rms.loop_instructions) <= 8, report
