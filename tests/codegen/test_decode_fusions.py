"""The decode-step fusions (issue #13, fewer launches): the dense GEMM template's RMSNorm prologue and
SwiGLU epilogue and the rope_cache template against torch, and every kernel one decode step of a
Llama launches builds for sm_90 and sm_80 without spilling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fxforge
from fxforge.codegen import buildcheck as bc
from fxforge.codegen.templates.gemm import linear
from fxforge.codegen.templates.gemm_prologue import post_norm_rows_spec
from fxforge.codegen.templates.rope_cache import rope_cache, rope_cache_spec
from fxforge.errors import ShapeError
from fxforge.ir.ops import OPS
from fxforge.runtime.generate import StaticKVCache

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def rms_norm(x, w, eps=1e-6):
    return OPS["rms_norm"].ref(x, w, eps=eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gemm_norm_prologue_and_swiglu_epilogue(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, dtype=dtype)  # K = 96: a partial last K tile
    w = (torch.randn(80, 96) / 10).to(dtype)  # [gate; up], N = 40 each
    g = (1 + torch.randn(96) / 4).to(dtype)
    r = torch.randn(2, 3, 40, dtype=dtype)
    h = F.linear(rms_norm(x, g), w).float()
    want = F.silu(h[..., :40]) * h[..., 40:] + r.float()
    got = linear(x, w, norm=(g, 1e-6), swiglu=True, residual=r)
    scale = want.abs().max().item()
    assert got.shape == (2, 3, 40) and got.dtype == dtype
    assert (got.float() - want).abs().max().item() <= TOL[dtype] * 4 * scale
    plain = linear(x, w, torch.randn(80, dtype=dtype), norm=(g, 1e-6))  # the prologue alone, with a bias
    assert plain.shape == (2, 3, 80)


def test_gemm_fusion_operands_are_checked():
    x, w = torch.randn(2, 8), torch.randn(6, 8)
    with pytest.raises(ShapeError, match="norm weight"):
        linear(x, w, norm=(torch.ones(7), 1e-6))
    with pytest.raises(ShapeError, match="swiglu"):
        linear(x, torch.randn(5, 8), swiglu=True)
    with pytest.raises(ShapeError, match="swiglu"):
        linear(x, w, swiglu=True, activation="relu")
    with pytest.raises(ShapeError, match=r"bias must have shape \(6,\)"):  # [b_gate; b_up]: the weight's rows
        linear(x, w, torch.zeros(3), swiglu=True)


def _rot(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_cache_matches_torch(dtype):
    torch.manual_seed(0)
    B, S, Hq, Hkv, D, L = 2, 3, 4, 2, 16, 9
    wide = torch.randn(B, S, (Hq + 2 * Hkv) * D + 5, dtype=dtype)
    qkv = wide[..., 5:]  # strided: a view, as the GEMM output's slices are
    cos, sin = torch.randn(1, 1, S, D, dtype=dtype), torch.randn(1, 1, S, D, dtype=dtype)
    pos = torch.tensor([6, 2, 7])
    kc, vc = torch.randn(B, Hkv, L, D, dtype=dtype), torch.randn(B, Hkv, L, D, dtype=dtype)
    k_before, v_before = kc.clone(), vc.clone()
    q, k_out, v_out = rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D)
    x = qkv.float().reshape(B, S, -1, D).transpose(1, 2)
    c, s = cos.float(), sin.float()
    k_before[:, :, pos] = (x[:, Hq:Hq + Hkv] * c + _rot(x[:, Hq:Hq + Hkv]) * s).to(dtype)
    v_before[:, :, pos] = x[:, Hq + Hkv:].to(dtype)
    tol = TOL[dtype] * 8
    assert k_out is kc and v_out is vc  # written in place
    torch.testing.assert_close(q.float(), x[:, :Hq] * c + _rot(x[:, :Hq]) * s, atol=tol, rtol=tol)
    torch.testing.assert_close(kc.float(), k_before.float(), atol=tol, rtol=tol)  # other positions untouched
    torch.testing.assert_close(vc, v_before, atol=0, rtol=0)


@pytest.fixture(scope="module")
def decode_step_specs():
    """Build specs of every kernel one decode step of a 1-layer GQA Llama launches."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
    dec = fxforge.compile_decoder(transformers.LlamaForCausalLM(cfg).eval(), max_length=16, executor="interpret")
    cache = StaticKVCache.for_step(dec.graph)
    ids = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(0))
    dec(ids, torch.arange(4), cache.tensors)
    launches = bc.record_launches(lambda: dec(ids[:, :1], torch.tensor([4]), cache.tensors))
    return bc.launch_specs(launches)


def test_decode_step_fused_kernels_build_without_spills(decode_step_specs):
    """The fused kernels as the model launches them, and rope_cache at Llama-1B/8B head sizes (the fused
    GEMMs at those sizes: `standard_specs.decode_specs`, tests/codegen/test_build.py)."""
    specs = [s for s in decode_step_specs if s["kernel"] == "rope_cache_kernel" or s["constexprs"].get("HAS_NORM")]
    gemms = [s["constexprs"] for s in specs if s["kernel"] == "gemm_kernel"]
    assert any(c["SWIGLU"] for c in gemms) and any(not c["SWIGLU"] for c in gemms)  # [gate; up], QKV and lm_head
    assert any(s["kernel"] == "rope_cache_kernel" for s in specs)
    specs += [dict(rope_cache_spec("float16", 32, 8, 64), key="rope fp16 64"),
              dict(rope_cache_spec("bfloat16", 32, 8, 128), key="rope bf16 128", min_arch=90),
              dict(rope_cache_spec("bfloat16", 16, 8, 128, qk_norm=True), key="rope bf16 128 qk_norm", min_arch=90),
              dict(rope_cache_spec("float16", 32, 8, 128, interleaved=True), key="rope fp16 128 interleaved"),  # GLM
              dict(rope_cache_spec("float16", 32, 8, 128, after=True), key="rope fp16 128 after"),  # HunYuan, Ministral3
              dict(rope_cache_spec("float16", 32, 8, 128, weightless=True), key="rope fp16 128 weightless"),  # NanoChat
              dict(rope_cache_spec("bfloat16", 64, 8, 64, half_tables=True), key="rope bf16 64 half_tables"),  # GPT-OSS
              dict(rope_cache_spec("float16", 32, 8, 128, qk_norm=True, nope=True), key="rope fp16 128 nope"),  # Flint
              dict(rope_cache_spec("bfloat16", 16, 8, 256, qk_norm=True, v_norm=True), key="rope bf16 256 v_norm",
                   min_arch=90),  # Gemma 4
              dict(rope_cache_spec("bfloat16", 64, 4, 192, v_head_dim=128, v_scale=True), key="rope bf16 192 v128",
                   min_arch=90),  # MiMo-V2-Flash: v heads of their own width, scaled before the cache
              dict(rope_cache_spec("float16", 16, 4, 64, "fp8", 32, v_scale=True), key="rope fp16 64 fp8 v_scale"),
              dict(post_norm_rows_spec("float16", bare=True), key="z = rms_norm(h) rows"),  # its norm of a norm, prefill
              dict(rope_cache_spec("float16", 32, 32, 128, qk_norm=True, norm_rows=True, norm_fp32=True),
                   key="rope fp16 128 qk_norm rows fp32")]  # OLMo2's norm over all heads
    specs += [dict(rope_cache_spec("float16", 32, 8, 128, fmt, 32), key=f"rope fp16 128 {fmt}")  # packed rows (#12)
              for fmt in ("bfp4", "bfp8", "fp8", "int8")]
    builds = bc.build_specs(specs, (90, 80), timeout=600)
    for arch, rows in builds.items():
        for spec, b in zip(specs, rows):
            if arch < spec.get("min_arch", 0):
                continue
            assert b is not None and b.ok and b.spills == 0, (arch, spec["label"], b)
