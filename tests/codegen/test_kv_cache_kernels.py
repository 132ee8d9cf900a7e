"""The kernels of the packed KV cache (issue #12) under the interpreter: the rope_cache template encodes
each written row bit for bit as `kv_ops.pack_kv_rows` on every format (outliers, zero, tiny, huge, NaN and
inf blocks, ties); the row decoder equals `unpack_kv_rows`; decode attention reading packed rows in its
key loop, and kv_attention's prefill path, equal sdpa over the decoded cache."""

from __future__ import annotations

import pytest
import torch

from fxforge.codegen.templates.kv_attention import kv_attention
from fxforge.codegen.templates.kv_cache import kv_unpack_rows
from fxforge.codegen.templates.rope_cache import rope_cache
from fxforge.ir.kv_ops import KV_FORMATS, kv_row_layout, pack_kv_rows, unpack_kv_rows

D = 64


def _rows(seed: int, n: int) -> torch.Tensor:
    """n head rows of D channels, the first ones planted with the cases the exponent rules must get right."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g) * torch.exp2(torch.randint(-6, 7, (n, 1), generator=g).float())
    x[0, 3] = 90.0  # an outlier crushing its block
    x[1, :16] = 0.0  # a zero block
    x[1, 16] = float("nan")  # a NaN block
    x[1, 40] = float("-inf")  # an inf block
    x[2] *= 1e-30  # tiny: int8's fp16 scale underflows, E8M0 near its bottom
    x[3] *= 1e30  # huge
    x[4, :16] = torch.arange(-8, 8) * 0.5 + 0.25  # ties of every kind for bfp4 / bfp8 / int8 rounding
    x[4, 16:32] = torch.tensor([7.0, 1.75, 448.0, 464.0, 480.0, -240.0, 3.5, 2 ** -9, 1.5 * 2 ** -9] + [0.0] * 7)
    return x


def _encode(fmt: str, block: int, seed: int = 0, dtype=torch.float32, rotate: bool = False):
    """rope_cache over S tokens of one q, one k and one v head: (k rows written, v rows written, k, v)."""
    S = 6
    k, v = _rows(seed, S), _rows(seed + 1, S)
    qkv = torch.cat([torch.randn(S, D), k, v], dim=1)[None].to(dtype)
    ang = torch.arange(S)[:, None] * torch.linspace(0.1, 1.0, D // 2).repeat(2)[None]
    cos, sin = (ang.cos(), ang.sin()) if rotate else (torch.ones(S, D), torch.zeros(S, D))
    cos, sin = cos.to(dtype).float(), sin.to(dtype).float()  # the tables as the kernel reads them
    row = kv_row_layout(fmt, block, D)[1]
    kc = torch.zeros(1, 1, S + 2, row, dtype=torch.uint8)
    vc = kc.clone()
    pos = torch.arange(S) + 1
    rope_cache(qkv, cos[None, None].to(dtype), sin[None, None].to(dtype), pos, kc, vc, q_heads=1, kv_heads=1,
               head_dim=D, format=fmt, block=block)
    assert not kc[:, :, 0].any() and not kc[:, :, S + 1].any()  # only the rows at pos are written
    k, v = qkv[0, :, D:2 * D].float(), qkv[0, :, 2 * D:].float()
    k = k * cos + torch.cat([-k[:, D // 2:], k[:, :D // 2]], dim=1) * sin  # HF's RoPE in fp32, as the graph has it
    return kc[0, 0, 1:S + 1], vc[0, 0, 1:S + 1], k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_rope_cache_encodes_rows_exactly_as_pack_kv_rows(fmt):
    k_rows, v_rows, k, v = _encode(fmt, 16)
    assert torch.equal(v_rows, pack_kv_rows(v, fmt, 16))
    assert torch.equal(k_rows, pack_kv_rows(k, fmt, 16))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize("block,dtype,rotate", [(32, torch.float32, True), (64, torch.float16, False),
                                                (16, torch.float16, True)])
def test_rope_cache_encodes_rows_exactly_all_blocks(fmt, block, dtype, rotate):
    k_rows, v_rows, k, v = _encode(fmt, block, seed=3, dtype=dtype, rotate=rotate)
    assert torch.equal(v_rows, pack_kv_rows(v, fmt, block))
    assert torch.equal(k_rows, pack_kv_rows(k, fmt, block))


def test_row_decoder_matches_unpack_kv_rows():
    x = torch.stack([_rows(7, 5), _rows(8, 5)])[None]  # [1, 2, 5, D]
    for fmt in KV_FORMATS:
        for block in (16, 64):
            rows = pack_kv_rows(x, fmt, block)
            want = unpack_kv_rows(rows, fmt, block, D)
            assert torch.equal(kv_unpack_rows(rows, fmt, block, D, torch.float32).nan_to_num(5.0), want.nan_to_num(5.0))


def _sdpa(q, k, v, mask):
    rep = q.shape[1] // k.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                                            mask)


@pytest.mark.parametrize("fmt", ["bfp4", "int8"])
def test_kv_attention_reads_packed_rows(fmt):
    g = torch.Generator().manual_seed(2)
    B, Hq, Hkv, L = 1, 4, 2, 40
    kc = pack_kv_rows(torch.randn(B, Hkv, L, D, generator=g), fmt, 32)
    vc = pack_kv_rows(torch.randn(B, Hkv, L, D, generator=g), fmt, 32)
    k, v = (unpack_kv_rows(c, fmt, 32, D) for c in (kc, vc))
    mask = torch.arange(L)[None, None, None, :] < 29  # the cache is filled up to 29
    q = torch.randn(B, Hq, 1, D, generator=g)
    got = kv_attention(q, kc, vc, mask, format=fmt, block=32)  # decode: packed rows read in the key loop
    assert (got - _sdpa(q, k, v, mask)).abs().max().item() <= 1e-5
    q3 = torch.randn(B, Hq, 3, D, generator=g)  # prefill: decoded into temporaries, then flash attention
    mask3 = torch.arange(L)[None, None, None, :] <= torch.arange(26, 29)[None, None, :, None]
    assert (kv_attention(q3, kc, vc, mask3, format=fmt, block=32) - _sdpa(q3, k, v, mask3)).abs().max().item() <= 1e-5
