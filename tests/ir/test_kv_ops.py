"""KV-cache formats (`fxforge.ir.kv_ops`): pack/unpack layouts and sizes, the kv_quant op, every code of
each format, ties and zero/NaN blocks; the Triton decode helper (`codegen.templates.kv_cache`) under the
interpreter bit-exact against `unpack_kv`."""

import os

import pytest
import torch

from fxforge.ir import kv_ops
from fxforge.ir.kv_ops import KV_FORMATS, kv_quant_ref, pack_kv, unpack_kv


def _x(seed=0, shape=(2, 3, 5, 64)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[0, 0, 0, 7] = 90.0  # an outlier channel in one block
    x[1, 1, 1, :16] = 0.0  # a zero block
    return x


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize("block", [16, 32, 64])
def test_pack_sizes_and_error(fmt, block):
    x = _x()
    p = pack_kv(x, fmt, block)
    tokens = x[..., 0].numel()
    per = {"bfp4": 32 + 64 // block, "bfp8": 64 + 64 // block, "fp8": 64 + 64 // block, "int8": 64 + 2 * 64 // block}[fmt]
    assert p.nbytes == tokens * per
    assert p.nbytes / tokens == 64 * kv_ops.kv_bytes_per_element(fmt, block)
    y = unpack_kv(p)
    assert torch.equal(y, kv_quant_ref(x, format=fmt, block=block))
    assert torch.equal(y[1, 1, 1, :16], torch.zeros(16))
    rel = ((y - x).norm() / x.norm()).item()
    assert 0 < rel < {"bfp4": 0.3, "bfp8": 0.05, "fp8": 0.05, "int8": 0.05}[fmt]  # the outlier crushes its block


def test_bfp_codes_exact_and_round_half_even():
    # every bfp4 mantissa -7..7 times 2^-3 in one block (max 7 -> exponent -3) comes back exactly
    q = torch.arange(-7, 8, dtype=torch.float32)
    x = torch.cat([q, torch.zeros(1)]) / 8
    assert torch.equal(kv_quant_ref(x.reshape(1, 16), format="bfp4", block=16).reshape(-1), x)
    # noclip exponent: amax 7.5 -> e = 1 (7.5 / 2 = 3.75 <= 7), 2.5 / 2 = 1.25 -> 1, 3 / 2 = 1.5 -> 2 (half even)
    y = torch.zeros(1, 16)
    y[0, :3] = torch.tensor([7.5, 2.5, 3.0])
    assert kv_quant_ref(y, format="bfp4", block=16)[0, :3].tolist() == [8.0, 2.0, 4.0]
    # bfp8: every mantissa -127..127
    m = torch.arange(-127, 128, dtype=torch.float32)
    m = torch.cat([m, torch.zeros(1)]).reshape(4, 64) * 2.0**-5
    m[:, 0] = 127 * 2.0**-5  # the block max sets the exponent
    assert torch.equal(kv_quant_ref(m, format="bfp8", block=64), m)


def test_nan_block_decodes_nan_and_bad_block():
    x = torch.randn(1, 64)
    x[0, 3] = float("nan")
    for fmt in KV_FORMATS:
        y = kv_quant_ref(x, format=fmt, block=16)
        assert bool(y[0, :16].isnan().all()) and bool(torch.isfinite(y[0, 16:]).all()), fmt
    with pytest.raises(ValueError, match="kv_block 32 does not divide head_dim 48"):
        pack_kv(torch.randn(2, 48), "bfp4", 32)


def test_triton_decode_helper_matches_unpack():
    assert os.environ.get("TRITON_INTERPRET") == "1"  # tests/conftest.py: kernels run in the interpreter
    from fxforge.codegen.templates import kv_cache

    x = _x(seed=3, shape=(2, 2, 7, 64))
    for fmt in KV_FORMATS:
        for block in (16, 64):
            p = pack_kv(x, fmt, block)
            assert torch.equal(kv_cache.kv_unpack(p), unpack_kv(p)), (fmt, block)


# -- packed cache rows and the cache ops (issue #12: the compressed cache is the decode storage) -------------

@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_cache_rows_layout_and_roundtrip(fmt):
    x = _x(seed=4, shape=(2, 2, 5, 64))
    x[0, 1, 2, 20] = float("inf")  # a non-finite block stays NaN through the row layout
    code, total = kv_ops.kv_row_layout(fmt, 16, 64)
    assert (code, total) == {"bfp4": (32, 36), "bfp8": (64, 68), "fp8": (64, 68), "int8": (64, 72)}[fmt]
    rows = kv_ops.pack_kv_rows(x, fmt, 16)
    assert rows.dtype == torch.uint8 and rows.shape == (2, 2, 5, total)
    p = pack_kv(x, fmt, 16)
    assert rows.numel() == p.nbytes  # the cache row is exactly the packed codes and scales
    want = unpack_kv(p)
    got = kv_ops.unpack_kv_rows(rows, fmt, 16, 64)
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)) and bool(got[0, 1, 2, 16:32].isnan().all())
    with pytest.raises(ValueError, match=r"uint8 \[\.\.\., "):
        kv_ops.unpack_kv_rows(rows[..., :-1], fmt, 16, 64)


def test_cache_write_packs_rows_and_kv_load_reads_them():
    from fxforge.ir.cache_ops import CACHE_FORMATS
    from fxforge.ir.ops import lookup

    assert CACHE_FORMATS == ("dense", *KV_FORMATS)
    write, load = lookup("cache_write"), lookup("kv_load")
    cache = torch.zeros(1, 2, 8, kv_ops.kv_row_layout("bfp8", 32, 64)[1], dtype=torch.uint8)
    new = _x(seed=5, shape=(2, 2, 3, 64))[:1]
    pos = torch.tensor([2, 3, 4])
    out = write.ref(cache, pos, new, dim=2, format="bfp8", block=32)
    assert out is cache  # in place
    assert torch.equal(cache[:, :, 2:5], kv_ops.pack_kv_rows(new, "bfp8", 32))
    assert not cache[:, :, :2].any() and not cache[:, :, 5:].any()
    from fxforge.ir.dtypes import DType

    vals = load.ref(cache, format="bfp8", block=32, head_dim=64, dtype=DType.f16)
    assert vals.dtype == torch.float16 and torch.equal(vals[:, :, 2:5], kv_quant_ref(new, format="bfp8", block=32).half())


def test_cache_ops_check_the_packed_types_and_print_parse():
    from fxforge.ir.errors import ShapeError
    from fxforge.ir.parser import parse_graph
    from fxforge.ir.printer import print_graph

    text = """graph @step(%cache: u8[1, 2, 8, 36], %pos: i64[s0], %new: f16[1, 2, s0, 64]) {
  %w = cache_write(%cache, %pos, %new) {format="bfp4", block=16} : u8[1, 2, 8, 36]
  %k = kv_load(%w) {format="bfp4", block=16, head_dim=64, dtype=f16} : f16[1, 2, 8, 64]
  return %k
}
"""
    assert print_graph(parse_graph(text, {})) == text
    from fxforge.ir.ops import lookup
    from fxforge.ir.parser import parse_type

    write, load = lookup("cache_write"), lookup("kv_load")
    pos, new = parse_type("i64[3]"), parse_type("f16[1, 2, 3, 64]")
    bad = [("u8[1, 2, 8, 40]", 16, r"u8\[\.\.\., 36\]"),  # wrong row size
           ("f16[1, 2, 8, 64]", 16, "one packed row per token"),  # a dense cache with a packed format
           ("u8[1, 2, 8, 36]", 48, "must be one of")]  # a block that does not divide head_dim
    for cache_type, block, match in bad:
        with pytest.raises(ShapeError, match=match):
            write.infer([parse_type(cache_type), pos, new], write.full_attrs({"format": "bfp4", "block": block}))
    with pytest.raises(ShapeError, match=r"must be u8\[\.\.\., 36\]"):
        load.infer([parse_type("u8[1, 2, 8, 40]")], load.full_attrs(
            {"format": "bfp4", "block": 16, "head_dim": 64, "dtype": new.dtype}))
