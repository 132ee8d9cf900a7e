"""The flash-attention template agrees with torch's scaled_dot_product_attention.

Kernels run under the Triton interpreter: TRITON_INTERPRET=1 is set before triton is imported.
Covers causal (top-left aligned as torch's is_causal, also for Lq != Lk), GQA, boolean and additive
masks with broadcasting, fully masked rows, decode (Lq = 1), D = 16 / 48 / 80 (padded head dims),
strided q/k/v and custom scales. Tolerances (max abs error): fp32 1e-4, fp16 5e-3 (outputs are O(1)).
"""

from __future__ import annotations

import importlib
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from test_decode_attention import softcapped_sdpa  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from fxforge.codegen.templates import attention as attn  # noqa: E402
from fxforge.errors import ShapeError  # noqa: E402

if not isinstance(attn.attention_kernel, InterpretedFunction):
    attn = importlib.reload(attn)  # imported earlier without the interpreter

FP32_TOL = 1e-4
FP16_TOL = 5e-3


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _qkv(B, Hq, Hkv, Lq, Lk, D, dtype=torch.float32):
    return _randn(B, Hq, Lq, D, dtype=dtype, seed=1), _randn(B, Hkv, Lk, D, dtype=dtype, seed=2), \
        _randn(B, Hkv, Lk, D, dtype=dtype, seed=3)


def _check(q, k, v, mask=None, tol=FP32_TOL, **kw):
    out = attn.attention(q, k, v, mask, **kw)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                         mask if mask is None or mask.dtype == torch.bool else mask.float(), **kw)
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert not out.isnan().any()
    err = (out.float() - ref).abs().max().item()
    assert err <= tol, err


@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,D,causal", [
    (1, 2, 2, 33, 47, 16, False),
    (1, 2, 2, 33, 47, 16, True),   # Lq < Lk: top-left alignment
    (1, 2, 2, 47, 33, 16, True),   # Lq > Lk
    (2, 4, 2, 40, 40, 48, True),   # GQA, padded D
    (2, 4, 1, 40, 70, 48, False),  # multi-query
    (1, 2, 1, 1, 50, 48, False),   # decode step
    (1, 2, 2, 1, 50, 16, True),    # decode step, causal: sees key 0 only, as torch
    (1, 1, 1, 20, 36, 80, False),  # D = 80 padded to 128
])
def test_attention_fp32(B, Hq, Hkv, Lq, Lk, D, causal):
    q, k, v = _qkv(B, Hq, Hkv, Lq, Lk, D)
    _check(q, k, v, is_causal=causal, enable_gqa=Hq != Hkv)


@pytest.mark.parametrize("mask_shape", [(1, 1, 33, 47), (2, 1, 33, 47), (2, 2, 33, 47), (33, 47)])
def test_attention_bool_mask(mask_shape):
    q, k, v = _qkv(2, 2, 2, 33, 47, 16)
    mask = torch.rand(*mask_shape, generator=torch.Generator().manual_seed(5)) > 0.3
    mask[..., 4, :] = False  # a row that sees no key: 0, as torch
    _check(q, k, v, mask)


@pytest.mark.parametrize("mask_shape", [(2, 2, 33, 47), (1, 2, 33, 47), (33, 47)])
def test_attention_float_mask(mask_shape):
    q, k, v = _qkv(2, 2, 2, 33, 47, 16)
    mask = _randn(*mask_shape, seed=6)
    mask[..., :, 7] = float("-inf")
    _check(q, k, v, mask)


def test_attention_gqa_with_mask_and_scale():
    q, k, v = _qkv(1, 4, 2, 21, 30, 48)
    mask = _randn(1, 4, 21, 30, seed=7)
    _check(q, k, v, mask, scale=0.3, enable_gqa=True)


def test_attention_strided_and_rank3():
    # q/k/v as models produce them: [B, L, H, D] transposed to [B, H, L, D]
    q = _randn(2, 33, 2, 16, seed=1).transpose(1, 2)
    k = _randn(2, 47, 2, 16, seed=2).transpose(1, 2)
    v = _randn(2, 47, 2, 16, seed=3).transpose(1, 2)
    _check(q, k, v, is_causal=True)
    q3, k3, v3 = _randn(3, 20, 16, seed=1), _randn(3, 25, 16, seed=2), _randn(3, 25, 16, seed=3)
    _check(q3, k3, v3)


def test_attention_fp16():
    q, k, v = _qkv(1, 2, 2, 40, 70, 48, dtype=torch.float16)
    _check(q, k, v, tol=FP16_TOL, is_causal=True)
    _check(q, k, v, _randn(40, 70, seed=4).half(), tol=FP16_TOL)


def test_attention_errors():
    q, k, v = _qkv(1, 4, 2, 8, 8, 16)
    with pytest.raises(ShapeError, match="enable_gqa"):
        attn.attention(q, k, v)
    q, k, v = _qkv(1, 2, 2, 8, 8, 16)
    with pytest.raises(ShapeError, match="not both"):
        attn.attention(q, k, v, torch.ones(8, 8, dtype=torch.bool), is_causal=True)
    with pytest.raises(ShapeError, match="does not broadcast"):
        attn.attention(q, k, v, torch.ones(3, 8, 8, dtype=torch.bool))


@pytest.mark.parametrize("dtype,mask,causal", [(torch.float32, "add", False), (torch.float16, None, True),
                                               (torch.float32, "bool", False)])
def test_attention_softcap(dtype, mask, causal):
    """Gemma2's logit soft-cap at the score step, before the mask (a cap of 2 on scores of std ~2: it matters)."""
    q, k, v = _qkv(1, 4, 2, 33, 47, 16, dtype=dtype)
    m = {None: None, "add": _randn(1, 1, 33, 47, seed=8).to(dtype), "bool": _randn(33, 47, seed=8) > -1}[mask]
    out = attn.attention(q, k, v, m, scale=0.5, softcap=2.0, is_causal=causal, enable_gqa=True)
    want = softcapped_sdpa(q, k, v, m, scale=0.5, cap=2.0, is_causal=causal)
    tol = FP16_TOL if dtype == torch.float16 else FP32_TOL
    assert out.dtype == dtype and (out.float() - want).abs().max().item() <= tol
    uncapped = softcapped_sdpa(q, k, v, m, scale=0.5, cap=1e9, is_causal=causal)
    assert (uncapped - want).abs().max().item() > 20 * tol  # the check can fail without the cap
