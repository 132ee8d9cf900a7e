"""rope_cache with v heads of their own width and a value scale (MiMo-V2-Flash: q/k 192 and v 128 channels per head,
v times attention_value_scale before its cache write) under the interpreter, against torch: q and the k cache RoPE'd,
the v cache rows x_v * scale rounded once to the model's dtype (the graph's mul of v by a number); a packed cache's v
rows equal `pack_kv_rows` of the scaled values; the launcher names a shape that does not fit."""

from __future__ import annotations

import pytest
import torch

from fxforge.codegen.templates.rope_cache import rope_cache
from fxforge.errors import ShapeError
from fxforge.ir.kv_ops import kv_row_layout, pack_kv_rows

B, S, HQ, HKV, D, DV, L, SCALE = 1, 3, 4, 2, 24, 16, 8, 0.707


def _rope(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin


def _tables(dtype, d=D):
    ang = torch.arange(S)[:, None] * torch.linspace(0.1, 1.0, d // 2).repeat(2)[None]
    return ang.cos().to(dtype)[None, None], ang.sin().to(dtype)[None, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_v_head_dim_and_scale(dtype):
    g = torch.Generator().manual_seed(0)
    qkv = (torch.randn(B, S, (HQ + HKV) * D + HKV * DV, generator=g) * 2).to(dtype)
    cos, sin = _tables(dtype)
    pos = torch.tensor([5, 1, 3])
    kc, vc = torch.zeros(B, HKV, L, D, dtype=dtype), torch.zeros(B, HKV, L, DV, dtype=dtype)
    q, _, _ = rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=HQ, kv_heads=HKV, head_dim=D, v_head_dim=DV,
                         v_scale=SCALE)
    xq, xk, xv = qkv.split([HQ * D, HKV * D, HKV * DV], -1)
    heads = lambda x, h, d: x.reshape(B, S, h, d).transpose(1, 2).float()  # noqa: E731
    c, s = cos.float(), sin.float()
    tol = 2e-3 if dtype == torch.float16 else 1e-6
    assert (q.float() - _rope(heads(xq, HQ, D), c, s).to(dtype).float()).abs().max() <= tol
    assert (kc[:, :, pos].float() - _rope(heads(xk, HKV, D), c, s).to(dtype).float()).abs().max() <= tol
    assert torch.equal(vc[:, :, pos], (heads(xv, HKV, DV) * SCALE).to(dtype))  # one rounding: exact
    untouched = [i for i in range(L) if i not in pos.tolist()]
    assert not kc[:, :, untouched].any() and not vc[:, :, untouched].any()


def test_packed_cache_v_scale():
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, S, (HQ + 2 * HKV) * 32, generator=g)
    cos, sin = _tables(torch.float32, 32)
    row = kv_row_layout("fp8", 16, 32)[1]
    kc, vc = (torch.zeros(B, HKV, L, row, dtype=torch.uint8) for _ in range(2))
    pos = torch.tensor([0, 2, 4])
    rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=HQ, kv_heads=HKV, head_dim=32, format="fp8", block=16,
               v_scale=SCALE)
    v = qkv[..., (HQ + HKV) * 32:].reshape(B, S, HKV, 32).transpose(1, 2) * SCALE
    assert torch.equal(vc[:, :, pos], pack_kv_rows(v, "fp8", 16))


def test_shapes_are_checked():
    qkv = torch.zeros(B, S, (HQ + HKV) * D + HKV * DV)
    cos, sin = _tables(torch.float32)
    kc, vc = torch.zeros(B, HKV, L, D), torch.zeros(B, HKV, L, DV)
    with pytest.raises(ShapeError, match=r"\(Hq \+ Hkv\) \* D \+ Hkv \* DV\] for Hq=4, Hkv=2, D=24, DV=24"):
        rope_cache(qkv, cos, sin, torch.arange(S), kc, vc, q_heads=HQ, kv_heads=HKV, head_dim=D)
    with pytest.raises(ShapeError, match="must be"):
        rope_cache(qkv, cos, sin, torch.arange(S), kc, kc, q_heads=HQ, kv_heads=HKV, head_dim=D, v_head_dim=DV)
    with pytest.raises(ShapeError, match="a fp8 cache takes one head dim"):
        rope_cache(qkv, cos, sin, torch.arange(S), kc, vc, q_heads=HQ, kv_heads=HKV, head_dim=D, v_head_dim=DV,
                   format="fp8", block=16)
