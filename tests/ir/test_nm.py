"""The #nm codec (fxforge.ir.nm): bit packing round trips for every M, compress/expand are inverse,
the stored bytes equal the theoretical size, quantized kept values decode through the scheme, and
the encoding prints and parses back."""

import pytest
import torch

from fxforge.ir.dtypes import DType
from fxforge.ir.lowp_ops import decode_weight, encode_weight
from fxforge.ir.nm import compress, decode_nm, encode_nm, expand, index_bits, pack_bits, unpack_bits
from fxforge.ir.parser import parse_type
from fxforge.ir.printer import print_type
from fxforge.ir.types import NM, TensorType


@pytest.mark.parametrize("m", [2, 3, 4, 5, 8, 16])
def test_pack_bits_round_trip(m):
    b = index_bits(m)
    idx = torch.randint(0, m, (5, 37))
    packed = pack_bits(idx, b)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (37 * b + 7) // 8)
    assert torch.equal(unpack_bits(packed, b, 37), idx)


def random_mask(out, inp, n, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    full = (inp // m) * m
    score = torch.rand(out, full // m, m, generator=g)
    keep = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(n, -1).indices, True)
    return torch.cat([keep.reshape(out, full), torch.ones(out, inp - full, dtype=torch.bool)], 1)


@pytest.mark.parametrize("n,m,inp", [(2, 4, 64), (4, 8, 64), (1, 4, 66), (3, 7, 30)])
def test_compress_expand_inverse_and_bytes(n, m, inp):
    w = torch.randn(8, inp)
    kept = random_mask(8, inp, n, m)
    vals, pos = compress(w, kept, n, m)
    assert torch.equal(expand(vals, pos, n, m, inp), w * kept)
    weight = encode_nm(w * kept, kept, n, m, DType.f16)
    k = (inp // m) * n
    assert weight.nbytes() == 8 * (2 * (k + inp % m) + (k * index_bits(m) + 7) // 8)
    assert torch.equal(decode_nm(weight), (w * kept).half())


def test_bits_per_weight_match_the_issue():
    w, kept = torch.randn(64, 256), random_mask(64, 256, 2, 4)
    assert encode_nm(w * kept, kept, 2, 4, DType.f16).nbytes() * 8 / w.numel() == 9.0  # 16/2 + 2/2
    vals, pos = compress(w * kept, kept, 2, 4)
    inner = encode_weight(vals, "w4a16-int4", 32)
    codes_and_index = inner.payload["codes"].numel() + pack_bits(pos, 2).numel()
    assert codes_and_index * 8 / w.numel() == 3.0  # 4/2 + 2/2, scales on top


def test_quantized_nm_decodes_through_the_scheme():
    from fxforge.ir.lowp_ops import quantize_groups, weight_params
    from fxforge.ir.nm import encode_nm_quantized

    w, kept = torch.randn(16, 64), random_mask(16, 64, 2, 4)
    vals, _ = compress(w * kept, kept, 2, 4)
    params = weight_params(vals.reshape(16, 1, 32), "w8a8-int8", False)
    codes_c, _ = quantize_groups(vals.reshape(16, 1, 32), "w8a8-int8", params)
    codes = torch.zeros(16, 64, dtype=codes_c.dtype)
    codes[kept] = codes_c.reshape(-1)
    weight = encode_nm_quantized(codes, kept, 2, 4, "w8a8-int8", 0, params)
    want = expand(decode_weight(encode_weight(vals, "w8a8-int8")), compress(w, kept, 2, 4)[1], 2, 4, 64)
    assert torch.equal(decode_nm(weight), want)


def test_encoding_prints_and_parses():
    t = TensorType((16, 64), DType.f32, NM(2, 4, DType.f32, "w4a16-int4", 32))
    text = print_type(t)
    assert text == 'f32[16, 64] #nm<n=2, m=4, dtype=f32, scheme="w4a16-int4", group=32>'
    assert parse_type(text) == t
