"""Flash-decoding (`templates/decode_attention.py`): one query position against torch's sdpa under the
interpreter (GQA packed heads, bool/additive masks, one split and several with the combine kernel),
`attention()` sending Lq = 1 there, and the kernels building spill-free for sm_90/sm_80."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fxforge.codegen.build import build_in_subprocess, specs_for_arch
from fxforge.codegen.templates.attention import attention
from fxforge.codegen.templates.decode_attention import decode_attention
from fxforge.codegen.templates.dense_specs import decode_attention_specs
from fxforge.runtime.interpreter import interpreter_scope
from fxforge.testing import counting_launches

CASES = [  # B, Hq, Hkv, Lk, D, dtype, mask, splits
    (2, 8, 2, 100, 64, torch.float32, "add", None),
    (1, 4, 4, 77, 48, torch.float16, "bool", 3),
    (2, 8, 2, 300, 64, torch.float32, "add", 4),
    (1, 4, 1, 64, 16, torch.float32, None, 2),
]


def _inputs(B, Hq, Hkv, Lk, D, dtype, mask):
    g = torch.Generator().manual_seed(Lk)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(dtype) for h, n in ((Hq, 1), (Hkv, Lk), (Hkv, Lk)))
    m = None
    if mask == "add":  # HF's materialised mask: 0 where visible, -inf past the length
        m = torch.where(torch.arange(Lk) < Lk - 5, 0.0, float("-inf")).to(dtype)[None, None, None].expand(B, 1, 1, Lk)
    elif mask == "bool":
        m = torch.rand(B, 1, 1, Lk, generator=g) > 0.3
    return q, k, v, m


def _sdpa(q, k, v, m):
    m = m if m is None or m.dtype == torch.bool else m.float()
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), m, enable_gqa=True)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[1]}q{c[2]}kv-L{c[3]}-{c[6]}-s{c[7]}" for c in CASES])
def test_matches_sdpa(case):
    *shape, splits = case
    q, k, v, m = _inputs(*shape)
    with interpreter_scope():
        got = decode_attention(q, k, v, m, splits=splits)
    tol = 2e-3 if q.dtype == torch.float16 else 1e-5
    assert (got.float() - _sdpa(q, k, v, m)).abs().max().item() <= tol


def test_attention_sends_one_query_to_flash_decoding():
    q, k, v, m = _inputs(1, 8, 2, 40, 32, torch.float32, "add")
    with counting_launches() as names, interpreter_scope():
        got = attention(q, k, v, m, enable_gqa=True)
    assert names == ["decode_split_kernel"]  # one split under the interpreter: one launch, no combine
    assert (got - _sdpa(q, k, v, m)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch", [90, 80])
def test_decode_attention_builds(arch):
    specs = []
    for dt in ("float16", "float32"):
        for mask in ("add", "bool"):
            specs += decode_attention_specs(dt, 4, 8192, 64, mask=mask, arch=arch)
        specs += decode_attention_specs(dt, 8, 8192, 128, arch=arch)
    specs += decode_attention_specs("float16", 2, 8192, 256, mask="add", arch=arch, softcap=True)  # Gemma2: D=256, soft-cap
    specs += decode_attention_specs("float16", 4, 8192, 128, mask="add", arch=arch)  # masked D=128 (spilled at 64 keys)
    for dt in ("float16", "float32"):  # GPT-OSS: 8 query heads per kv head, D=64, sliding-window mask, attention sinks
        specs += decode_attention_specs(dt, 8, 8192, 64, mask="add", arch=arch, sinks=True)
    for fmt in ("bfp4", "fp8", "int8"):  # packed KV-cache rows decoded in the key loop (issue #12)
        specs += decode_attention_specs("float16", 4, 8192, 128, mask="bool", arch=arch, kv_format=fmt, kv_block=32)
    specs = specs_for_arch(list({s["label"]: s for s in specs}.values()), arch)
    builds = build_in_subprocess(specs, arch, timeout=900, sass_counts=False)
    report = "\n".join(f"{b.label}: ok={b.ok} regs={b.registers} stack={b.spills} {b.error[:200]}" for b in builds)
    assert len(builds) == len(specs) and all(b.ok and b.spills == 0 and 0 < b.registers <= 255 for b in builds), report


def softcapped_sdpa(q, k, v, mask=None, *, scale, cap, is_causal=False):
    """HF's eager soft-capped attention (Gemma2) in fp32: tanh(scale * q.k / cap) * cap, then the mask, softmax."""
    q, k, v = q.float(), k.float(), v.float()
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], 1) for t in (k, v))
    s = torch.tanh(q @ k.transpose(-2, -1) * scale / cap) * cap
    if is_causal:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool).tril()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("splits,mask", [(1, "add"), (3, "bool")])
def test_softcap_matches_eager(splits, mask):
    """Gemma2's logit soft-cap in flash-decoding (one split and with the combine), against the eager formula."""
    q, k, v, m = _inputs(2, 8, 2, 70, 16, torch.float32, mask)
    with interpreter_scope():
        got = decode_attention(q, k, v, m, scale=0.5, softcap=2.0, splits=splits)
    want = softcapped_sdpa(q, k, v, m, scale=0.5, cap=2.0)
    assert (got - want).abs().max().item() <= 1e-5
    assert (softcapped_sdpa(q, k, v, m, scale=0.5, cap=1e9) - want).abs().max().item() > 1e-3
