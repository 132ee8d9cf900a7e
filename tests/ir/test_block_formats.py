"""Block formats: the MX shared-scale rule, error bounds, zero / outlier / NaN blocks, NVFP4, packing, sizes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxforge.ir.block_formats import (
    MX_FORMATS,
    MXTensor,
    bytes_of,
    decode_e8m0,
    encode_e8m0,
    get_mx_format,
    nvfp4_block_scales,
    pack_codes,
    pack_fp6,
    quantize_mx,
    quantize_nvfp4,
    unpack_codes,
    unpack_fp6,
)
from fxforge.ir.formats import decode_float, encode_float, encode_fp8, get_format

SLOW = settings(max_examples=40, deadline=None, database=None)
# name -> (element, emax) as the OCP MX v1.0 spec lists them
SPEC = {"mxfp8_e4m3": ("f8e4m3", 8), "mxfp8_e5m2": ("f8e5m2", 15), "mxfp6_e2m3": ("f6e2m3", 2),
        "mxfp6_e3m2": ("f6e3m2", 4), "mxfp4": ("f4e2m1", 2), "mxint8": ("i8", 0)}


def floor_log2(a: float) -> int:
    return math.frexp(a)[1] - 1


def expected_scale_codes(x: torch.Tensor, emax: int, block: int = 32) -> torch.Tensor:
    """Spec rule, block by block in Python: floor(log2(amax)) - emax + 127, clamped; 0 for a zero block."""
    amax = x.double().abs().reshape(*x.shape[:-1], -1, block).amax(-1)
    codes = [0 if a == 0 else min(max(floor_log2(a) - emax, -127), 127) + 127 for a in amax.flatten().tolist()]
    return torch.tensor(codes, dtype=torch.uint8).reshape(amax.shape)


def half_step(v: torch.Tensor, name: str) -> torch.Tensor:
    """Half the element spacing at |v| (float formats), float64."""
    f = get_format(name)
    v = v.clamp(max=f.max_value)
    _, e = torch.frexp(v)
    binade = torch.where(v > 0, e - 1, 1 - f.bias).clamp(min=1 - f.bias)
    return torch.ldexp(torch.ones_like(v), (binade - f.man_bits - 1).double())


def mx_error_bound(x: torch.Tensor, scales: torch.Tensor, name: str) -> torch.Tensor:
    """|x - deq| bound: X * (half step at |x|/X + saturation overshoot), X = the block scale."""
    element = SPEC[name][0]
    X = decode_e8m0(scales).double().repeat_interleave(32, dim=-1)
    v = x.double().abs() / X
    if element == "i8":
        top, step = 127 / 64, torch.full_like(v, 2.0**-7)
    else:
        top, step = get_format(element).max_value, half_step(v, element)
    return X * (step + (v - top).clamp(min=0))


@st.composite
def block_tensor(draw: st.DrawFn, block: int = 32) -> torch.Tensor:
    rows, nblocks = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    lo, width = draw(st.integers(-140, 106)), draw(st.integers(0, 20))
    exps = torch.randint(lo, lo + width + 1, (rows, nblocks * block), generator=g).double()
    x = torch.rand(rows, nblocks * block, generator=g, dtype=torch.float64) + 1
    x = (x * torch.exp2(exps) * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1)).float()
    zero = torch.rand(x.shape, generator=g) < draw(st.sampled_from([0.0, 0.2, 1.0]))
    return torch.where(zero, 0.0, x)


raw_block = st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=32, max_size=32)


# ---------------------------------------------------------------- E8M0 and packing

def test_e8m0_every_code() -> None:
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    got = decode_e8m0(codes)
    assert torch.isnan(got[255])
    assert got[:255].double().tolist() == [math.ldexp(1.0, c - 127) for c in range(255)]
    assert torch.equal(encode_e8m0(torch.arange(-127, 128)), codes[:255])
    assert encode_e8m0(torch.tensor([-500, 500])).tolist() == [0, 254]


def test_fp6_packing_layout() -> None:
    packed = pack_fp6(torch.tensor([1, 2, 3, 63]))
    word = 1 | (2 << 6) | (3 << 12) | (63 << 18)
    assert packed.tolist() == [word & 0xFF, (word >> 8) & 0xFF, word >> 16]
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_fp6(torch.zeros(6, dtype=torch.uint8))


@given(st.integers(1, 4), st.integers(1, 8), st.integers(0, 2**31))
@SLOW
def test_fp6_pack_round_trip(rows: int, groups: int, seed: int) -> None:
    codes = torch.randint(0, 64, (rows, 4 * groups), generator=torch.Generator().manual_seed(seed))
    codes = codes.to(torch.uint8)
    packed = pack_fp6(codes)
    assert packed.shape == (rows, 3 * groups) and torch.equal(unpack_fp6(packed), codes)


# ---------------------------------------------------------------- MX

def test_mx_table_matches_spec() -> None:
    assert set(MX_FORMATS) == set(SPEC)
    for name, (element, emax) in SPEC.items():
        spec = get_mx_format(name)
        assert (spec.element, spec.emax, spec.block) == (element, emax, 32)
    with pytest.raises(ValueError, match="known"):
        get_mx_format("mxfp3")


@pytest.mark.parametrize("name", sorted(SPEC))
@given(x=block_tensor())
@SLOW
def test_mx_scale_rule_and_error_bound(name: str, x: torch.Tensor) -> None:
    q = quantize_mx(x, name)
    assert torch.equal(q.scales, expected_scale_codes(x, SPEC[name][1]))
    deq = q.dequantize(torch.float64)
    assert deq.shape == x.shape and bool(torch.isfinite(deq).all())
    err = (x.double() - deq).abs()
    assert bool((err <= mx_error_bound(x, q.scales, name) * (1 + 1e-12)).all())


@pytest.mark.parametrize("name", sorted(SPEC))
@given(values=raw_block)
@settings(max_examples=25, deadline=None, database=None)
def test_mx_arbitrary_float32_blocks(name: str, values: list[float]) -> None:
    x = torch.tensor([values], dtype=torch.float32)
    q = quantize_mx(x, name)
    assert torch.equal(q.scales, expected_scale_codes(x, SPEC[name][1]))
    err = (x.double() - q.dequantize(torch.float64)).abs()
    assert bool((err <= mx_error_bound(x, q.scales, name) * (1 + 1e-12)).all())


@pytest.mark.parametrize("name", sorted(SPEC))
@given(seed=st.integers(0, 2**31), scale=st.integers(-127, 127))
@settings(max_examples=20, deadline=None, database=None)
def test_mx_representable_blocks_round_trip_exactly(name: str, seed: int, scale: int) -> None:
    """Blocks of element values whose largest lies in the top binade come back code for code."""
    element, emax = SPEC[name]
    scale = min(scale, 126 - emax)  # keep max * 2^scale a finite float32
    q0 = quantize_mx(torch.randn(2, 64, generator=torch.Generator().manual_seed(seed)), name)
    bits = 8 if element == "i8" else get_format(element).bits
    codes = unpack_codes(q0.codes, bits).clone()
    top = 0x7F if element == "i8" else int(encode_float(torch.tensor([get_format(element).max_value]), element))
    codes[:, ::32] = top  # first element of every block is the format's max
    scales = torch.full((2, 2), scale + 127, dtype=torch.uint8)
    x = MXTensor(pack_codes(codes, bits), scales, (2, 64), name).dequantize()
    q = quantize_mx(x, name)
    assert torch.equal(q.scales, scales)
    assert torch.equal(q.codes, pack_codes(codes, bits))
    assert torch.equal(q.dequantize(torch.float64), x.double())


@pytest.mark.parametrize("name", sorted(SPEC))
def test_mx_zero_blocks_are_exact_zeros(name: str) -> None:
    x = torch.zeros(3, 64)
    x[1, 32:] = torch.linspace(-1, 1, 32)
    q = quantize_mx(x, name)
    assert q.scales[0].tolist() == [0, 0] and q.scales[1, 0].item() == 0
    deq = q.dequantize()
    assert bool(torch.isfinite(deq).all()) and torch.equal(deq[0], torch.zeros(64))


@pytest.mark.parametrize("name", sorted(SPEC))
@given(seed=st.integers(0, 2**31), where=st.integers(0, 31), big=st.floats(1e3, 1e30))
@SLOW
def test_mx_block_with_one_outlier(name: str, seed: int, where: int, big: float) -> None:
    x = torch.randn(1, 32, generator=torch.Generator().manual_seed(seed)) * 1e-3
    x[0, where] = big
    q = quantize_mx(x, name)
    emax = SPEC[name][1]
    assert q.scales.item() == floor_log2(float(x[0, where])) - emax + 127
    deq = q.dequantize(torch.float64)
    top_binade_loss = (x[0, where].double() - deq[0, where]).abs() / x[0, where].double()
    assert top_binade_loss <= 0.25 + 1e-9  # saturation at most: max >= 0.75 * 2^(emax+1)
    err = (x.double() - deq).abs()
    assert bool((err <= mx_error_bound(x, q.scales, name) * (1 + 1e-12)).all())


@pytest.mark.parametrize("name", sorted(SPEC))
def test_mx_non_finite_block_gets_nan_scale(name: str) -> None:
    x = torch.ones(2, 64)
    x[0, 3], x[1, 40] = math.nan, math.inf
    q = quantize_mx(x, name)
    assert q.scales.tolist() == [[0xFF, 127 - SPEC[name][1]], [127 - SPEC[name][1], 0xFF]]
    deq = q.dequantize()
    assert bool(torch.isnan(deq[0, :32]).all() and torch.isnan(deq[1, 32:]).all())
    assert torch.equal(deq[0, 32:], torch.ones(32)) and torch.equal(deq[1, :32], torch.ones(32))


def test_mx_requires_multiple_of_block_and_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        quantize_mx(torch.zeros(4, 48), "mxfp4")
    x = torch.randn(4, 64)
    sizes = {n: (quantize_mx(x, n).codes.shape[-1], quantize_mx(x, n).nbytes) for n in SPEC}
    assert sizes["mxfp4"] == (32, 4 * 32 + 4 * 2)
    assert sizes["mxfp6_e2m3"] == (48, 4 * 48 + 8) and sizes["mxfp6_e3m2"] == (48, 200)
    assert sizes["mxfp8_e4m3"] == (64, 264) and sizes["mxint8"] == (64, 264)
    assert bytes_of(quantize_mx(x, "mxfp4"), torch.zeros(3, dtype=torch.float32)) == 136 + 12


# ---------------------------------------------------------------- NVFP4

def nvfp4_error_bound(x: torch.Tensor, q) -> torch.Tensor:
    s = nvfp4_block_scales(q).repeat_interleave(16, dim=-1)
    v = x.double().abs() / torch.where(s > 0, s, 1.0)
    bound = s * (half_step(v, "f4e2m1") + (v - 6).clamp(min=0))
    underflow = 6 * q.tensor_scale.double() * 2.0**-10  # block scale rounded to e4m3 zero
    return torch.where(s > 0, bound, underflow)


@given(x=block_tensor(block=16))
@settings(max_examples=80, deadline=None, database=None)
def test_nvfp4_recipe_and_error_bound(x: torch.Tensor) -> None:
    q = quantize_nvfp4(x)
    amax = x.abs().max()
    tiny = torch.tensor(2.0**-149)  # a subnormal amax must not underflow the tensor scale to 0
    want_ts = torch.maximum(amax / (6 * 448), tiny) if amax > 0 else torch.tensor(1.0)
    assert q.tensor_scale.dtype == torch.float32 and q.tensor_scale.item() == want_ts.item()
    block_amax = x.double().abs().reshape(*x.shape[:-1], -1, 16).amax(-1)
    assert torch.equal(q.block_scales, encode_fp8(block_amax / 6 / q.tensor_scale.double(), "f8e4m3"))
    deq = q.dequantize(torch.float64)
    assert bool(torch.isfinite(deq).all())
    assert bool(((x.double() - deq).abs() <= nvfp4_error_bound(x, q) * (1 + 1e-12)).all())


def test_nvfp4_zero_tensor_and_zero_block() -> None:
    q = quantize_nvfp4(torch.zeros(2, 32))
    assert q.tensor_scale.item() == 1.0 and torch.equal(q.dequantize(), torch.zeros(2, 32))
    x = torch.zeros(1, 32)
    x[0, 16:] = torch.arange(16) - 8.0
    q = quantize_nvfp4(x)
    assert q.block_scales[0, 0].item() == 0 and torch.equal(q.dequantize()[0, :16], torch.zeros(16))


def test_nvfp4_outlier_and_exact_values() -> None:
    x = torch.tensor([[6.0, -4.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.0] * 2 + [1e-6] * 16])
    x[0, 3] = 2688.0  # amax 2688 -> tensor scale 1, block scale 448 in e4m3
    q = quantize_nvfp4(x)
    assert q.tensor_scale.item() == 1.0 and q.block_scales[0, 0].item() == 0x7E
    assert q.dequantize()[0, 3].item() == 2688.0
    assert q.block_scales[0, 1].item() == 0  # 1e-6 / 6 underflows e4m3: the block stores zeros
    assert decode_float(q.block_scales, "f8e4m3")[0, 0].item() == 448.0


def test_nvfp4_rejects_non_finite_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_nvfp4(torch.tensor([[math.inf] + [0.0] * 15]))
    with pytest.raises(ValueError, match="block size 16"):
        quantize_nvfp4(torch.zeros(2, 24))
    q = quantize_nvfp4(torch.randn(4, 64))
    assert q.codes.shape == (4, 32) and q.block_scales.shape == (4, 4)
    assert q.nbytes == bytes_of(q) == 4 * 32 + 16 + 4


def test_mxint8_is_fixed_point_and_symmetric() -> None:
    x = torch.zeros(1, 32)
    x[0, :4] = torch.tensor([-1.999, 1.999, 0.5 + 2.0**-7, 1.0])  # amax in [1, 2): scale 2^0
    q = quantize_mx(x, "mxint8")
    assert q.scales.item() == 127
    assert q.codes[0, :4].view(torch.int8).tolist() == [-127, 127, 32, 64]  # -128 never; 32.5 -> 32
    assert q.dequantize()[0, :4].tolist() == [-127 / 64, 127 / 64, 0.5, 1.0]


def test_nvfp4_subnormal_tensor_is_not_flushed_to_zero():
    """amax / (6 * 448) underflows fp32 for a subnormal tensor: the scale must stay positive (found by hypothesis)."""
    x = torch.full((1, 16), 1.1e-42)
    assert float(quantize_nvfp4(x).tensor_scale) > 0
    assert torch.allclose(quantize_nvfp4(x).dequantize(torch.float64), x.double(), rtol=0.25, atol=0)
