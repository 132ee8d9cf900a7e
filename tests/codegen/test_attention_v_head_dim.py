"""Attention whose v head dim differs from q/k's (MiMo-V2-Flash: 192 / 128; MLA models written out per head, as HF's
DeepSeek-V3 does: q/k 192, v 128): the flash-attention and flash-decoding templates against the IR op's reference
(sdpa, or HF's eager form with soft-cap / sinks) under the interpreter, and both kernels building for sm_90 / sm_80."""

from __future__ import annotations

import pytest
import torch

from fxforge.codegen.build import build_in_subprocess, specs_for_arch
from fxforge.codegen.templates.attention import attention
from fxforge.codegen.templates.decode_attention import decode_attention
from fxforge.codegen.templates.dense_specs import attention_spec, decode_attention_specs
from fxforge.ir.attention_op import _attention
from fxforge.runtime.interpreter import interpreter_scope


def _inputs(B, Hq, Hkv, Lq, Lk, D, DV, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, n, d, generator=g).to(dtype) for h, n, d in ((Hq, Lq, D), (Hkv, Lk, D), (Hkv, Lk, DV))]


def _reference(q, k, v, mask=None, *, is_causal=False, softcap=None, sinks=None):
    extra = [t for t in (mask, sinks) if t is not None]
    return _attention(q.float(), k.float(), v.float(), *[t.float() if t.is_floating_point() else t for t in extra],
                      scale=None, is_causal=is_causal, enable_gqa=True, softcap=softcap, sinks=sinks is not None)


@pytest.mark.parametrize("D,DV", [(24, 16), (48, 80), (192, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_prefill_causal_gqa(D, DV, dtype):
    q, k, v = _inputs(2, 4, 2, 19, 19, D, DV, dtype)
    with interpreter_scope():
        got = attention(q, k, v, is_causal=True, enable_gqa=True)
    assert got.shape == (2, 4, 19, DV)
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    assert (got.float() - _reference(q, k, v, is_causal=True)).abs().max().item() <= tol


def test_prefill_mask_softcap_sinks():
    q, k, v = _inputs(1, 4, 1, 9, 13, 24, 40, torch.float32, seed=1)
    mask = torch.rand(1, 1, 9, 13, generator=torch.Generator().manual_seed(2)) > 0.3
    sinks = torch.randn(4)
    with interpreter_scope():
        got = attention(q, k, v, mask, enable_gqa=True, softcap=5.0, sinks=sinks)
    want = _reference(q, k, v, mask, softcap=5.0, sinks=sinks)
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("D,DV", [(24, 16), (16, 48)])
def test_decode_step(splits, D, DV):
    q, k, v = _inputs(2, 8, 2, 1, 70, D, DV, torch.float32, seed=splits)
    mask = torch.where(torch.arange(70) < 64, 0.0, float("-inf"))[None, None, None].expand(2, 1, 1, 70)
    sinks = torch.randn(8)
    with interpreter_scope():
        got = decode_attention(q, k, v, mask, sinks=sinks, splits=splits)
    assert got.shape == (2, 8, 1, DV)
    assert (got - _reference(q, k, v, mask, sinks=sinks)).abs().max().item() <= 1e-5


def test_shape_errors_name_both_head_dims():
    q, k, v = _inputs(1, 2, 2, 3, 5, 16, 8, torch.float32)
    with pytest.raises(Exception, match=r"k must be \[B, Hkv, Lk, D=16\] and v \[B, Hkv, Lk, DV\]"):
        attention(q, k, v[:, :, :4])
    big = torch.zeros(1, 2, 5, 320)
    with pytest.raises(Exception, match="head dims 16 .q, k. and 320 .v. must be <= 256"):
        attention(q, k, big)


@pytest.mark.parametrize("arch", [90, 80])
def test_builds(arch):
    specs = [attention_spec(dt, 512, 512, 192, causal=True, gqa=True, dv=128) for dt in ("float16", "bfloat16")]
    specs += decode_attention_specs("float16", 16, 8192, 192, mask="add", arch=arch, sinks=True, dv=128)  # MiMo's SWA
    specs += decode_attention_specs("bfloat16", 1, 8192, 192, mask="add", arch=arch, dv=128)  # MLA as MHA
    specs = specs_for_arch(specs, arch)
    builds = build_in_subprocess(specs, arch, timeout=900, sass_counts=False)
    report = "\n".join(f"{b.label}: ok={b.ok} regs={b.registers} stack={b.spills} {b.error[:200]}" for b in builds)
    assert len(builds) == len(specs) and all(b.ok and b.spills == 0 and 0 < b.registers <= 255 for b in builds), report
