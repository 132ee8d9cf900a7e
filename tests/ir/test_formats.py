"""Element formats: exhaustive decode/encode checks, ties-to-even, saturation, integer quantization, packing.

References are independent of fxforge.ir.formats: torch's float8 dtypes for fp8, the textbook
(-1)^s * 2^(e - bias) * (1 + m / 2^M) formula for fp4/fp6, and a brute-force nearest-value search.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxforge.ir.formats import (
    FORMATS,
    FP8_TORCH_DTYPES,
    decode_float,
    decode_fp8,
    dequantize_int,
    encode_float,
    encode_fp8,
    encode_minifloat,
    expand_groups,
    float_values,
    get_format,
    int_range,
    int_scales,
    pack_int4,
    pack_nibbles,
    quantize_int,
    unpack_int4,
    unpack_nibbles,
)

FLOATS = ["f8e4m3", "f8e5m2", "f6e2m3", "f6e3m2", "f4e2m1"]
SMALL_FLOATS = ["f6e2m3", "f6e3m2", "f4e2m1"]
# name -> (exp_bits, man_bits, bias), written out independently of the table
FIELDS = {"f8e4m3": (4, 3, 7), "f8e5m2": (5, 2, 15), "f6e2m3": (2, 3, 1), "f6e3m2": (3, 2, 3), "f4e2m1": (2, 1, 1)}
MAXES = {"f8e4m3": 448.0, "f8e5m2": 57344.0, "f6e2m3": 7.5, "f6e3m2": 28.0, "f4e2m1": 6.0}
SLOW = settings(max_examples=60, deadline=None, database=None)


def textbook(code: int, exp_bits: int, man_bits: int, bias: int) -> float:
    s = (code >> (exp_bits + man_bits)) & 1
    e = (code >> man_bits) & ((1 << exp_bits) - 1)
    m = code & ((1 << man_bits) - 1)
    mag = math.ldexp(m / 2**man_bits, 1 - bias) if e == 0 else math.ldexp(1 + m / 2**man_bits, e - bias)
    return -mag if s else mag


def all_codes(name: str) -> torch.Tensor:
    return torch.arange(1 << get_format(name).bits, dtype=torch.int32).to(torch.uint8)


def non_nan_codes(name: str) -> torch.Tensor:
    codes = all_codes(name)
    return codes[torch.isfinite(decode_float(codes, name))]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    nan = torch.isnan(b)
    return torch.equal(torch.isnan(a), nan) and torch.equal(a[~nan].view(torch.int32), b[~nan].view(torch.int32))


def float32_sweep(seed: int = 0) -> torch.Tensor:
    """Every float32 upper half-word, with low halves 0, 0x8000 and random: all binades and signs."""
    hi = torch.arange(1 << 16, dtype=torch.int64) << 16
    lo = torch.randint(0, 1 << 16, (1 << 16,), generator=torch.Generator().manual_seed(seed))
    bits = torch.cat([hi, hi | 0x8000, hi | lo])
    x = (bits - ((bits >> 31) << 32)).to(torch.int32).view(torch.float32)
    return x[~torch.isnan(x)]


def nearest_even_reference(x: torch.Tensor, name: str) -> torch.Tensor:
    """Brute force: the finite code nearest |x| (ties to the even code), with x's sign bit."""
    codes = non_nan_codes(name)
    half = 1 << (get_format(name).bits - 1)
    pos = codes[codes.to(torch.int64) < half]
    vals = torch.tensor([textbook(int(c), *FIELDS[name]) for c in pos], dtype=torch.float64)
    dist = (x.double().abs().clamp(max=MAXES[name]).unsqueeze(-1) - vals).abs()
    best = dist.min(-1, keepdim=True).values
    tied = dist == best
    odd = (pos.to(torch.int64) & 1).bool()
    pick = torch.where(tied & ~odd, 1, 0) * 2 + tied.to(torch.int64)  # even tie beats odd
    code = pos.to(torch.int64)[pick.argmax(-1)]
    return (code | (torch.signbit(x).to(torch.int64) * half)).to(torch.uint8)


# ---------------------------------------------------------------- table

def test_table_has_every_format_with_its_constants() -> None:
    assert set(FORMATS) == {"f8e4m3", "f8e5m2", "f6e2m3", "f6e3m2", "f4e2m1", "i8", "i4"}
    for name, (e, m, b) in FIELDS.items():
        f = get_format(name)
        assert (f.kind, f.exp_bits, f.man_bits, f.bias, f.bits) == ("float", e, m, b, 1 + e + m)
        assert f.max_value == MAXES[name] and f.emax == math.floor(math.log2(MAXES[name]))
    assert [get_format(n).emax for n in FLOATS] == [8, 15, 2, 4, 2]
    assert (get_format("i8").bits, get_format("i8").kind, get_format("i4").max_value) == (8, "int", 7.0)
    with pytest.raises(ValueError, match="known formats"):
        get_format("f3e1m1")
    with pytest.raises(ValueError):
        encode_fp8(torch.zeros(1), "f4e2m1")


def test_fp4_values_are_the_ocp_table() -> None:
    vals = float_values("f4e2m1").tolist()
    assert vals[:8] == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert vals[8:] == [-v for v in vals[:8]]
    assert float_values("f6e2m3").max().item() == 7.5 and float_values("f6e3m2").max().item() == 28.0


# ---------------------------------------------------------------- exhaustive decode

@pytest.mark.parametrize("name", list(FP8_TORCH_DTYPES))
def test_fp8_decode_every_code_matches_torch(name: str) -> None:
    codes = all_codes(name)
    assert same_bits(decode_fp8(codes, name), codes.view(FP8_TORCH_DTYPES[name]).float())


@pytest.mark.parametrize("name", SMALL_FLOATS)
def test_small_float_decode_every_code_matches_textbook(name: str) -> None:
    codes = all_codes(name)
    want = torch.tensor([textbook(int(c), *FIELDS[name]) for c in codes], dtype=torch.float32)
    assert same_bits(decode_float(codes, name), want)


# ---------------------------------------------------------------- encode

@pytest.mark.parametrize("name", FLOATS)
def test_encode_decode_round_trip_every_finite_code(name: str) -> None:
    codes = non_nan_codes(name)
    assert torch.equal(encode_float(decode_float(codes, name), name), codes)
    neg_zero = 1 << (get_format(name).bits - 1)
    assert encode_float(torch.tensor([-0.0, 0.0]), name).tolist() == [neg_zero, 0]


@pytest.mark.parametrize("name", FLOATS)
def test_ties_round_to_even_code(name: str) -> None:
    codes = non_nan_codes(name)
    half = 1 << (get_format(name).bits - 1)
    pos = codes[codes.to(torch.int64) < half].to(torch.int64)
    vals = decode_float(pos, name).double()
    order = vals.argsort()
    pos, vals = pos[order], vals[order]
    mid = (vals[:-1] + vals[1:]) / 2  # exact in float64
    even = torch.where(pos[:-1] % 2 == 0, pos[:-1], pos[1:])
    assert torch.equal(encode_float(mid, name).to(torch.int64), even)
    assert torch.equal(encode_float(-mid, name).to(torch.int64), even | half)
    below = torch.nextafter(mid, torch.zeros_like(mid))
    above = torch.nextafter(mid, torch.full_like(mid, math.inf))
    assert torch.equal(encode_float(below, name).to(torch.int64), pos[:-1])
    assert torch.equal(encode_float(above, name).to(torch.int64), pos[1:])


@pytest.mark.parametrize("name", list(FP8_TORCH_DTYPES))
def test_fp8_ties_match_torch(name: str) -> None:
    vals = decode_fp8(non_nan_codes(name), name).double().unique()
    vals = vals[torch.isfinite(vals)]
    mid = ((vals[:-1] + vals[1:]) / 2).float()
    assert torch.equal(encode_fp8(mid, name), mid.to(FP8_TORCH_DTYPES[name]).view(torch.uint8))


@pytest.mark.parametrize("name", FLOATS)
def test_saturation_and_nan(name: str) -> None:
    f = get_format(name)
    top = int(encode_float(torch.tensor([f.max_value]), name))
    big = torch.tensor([f.max_value * 1.0001, f.max_value * 2, 1e30, math.inf, 3.0e38])
    half = 1 << (f.bits - 1)
    assert encode_float(big, name).tolist() == [top] * 5
    assert encode_float(-big, name).tolist() == [top | half] * 5
    assert decode_float(torch.tensor([top]), name).item() == MAXES[name]
    nan = encode_float(torch.tensor([math.nan, -math.nan]), name).tolist()
    if name in FP8_TORCH_DTYPES:
        assert nan == [0x7F, 0xFF] and torch.isnan(decode_fp8(torch.tensor(nan), name)).all()
    else:
        assert nan == [0, 0]


def test_e4m3_saturates_between_max_and_nan() -> None:
    x = torch.tensor([464.0, 479.9, 480.0, 500.0, -464.0])
    assert encode_fp8(x, "f8e4m3").tolist() == [0x7E, 0x7E, 0x7E, 0x7E, 0xFE]
    assert encode_fp8(torch.tensor([61440.0, 1e9]), "f8e5m2").tolist() == [0x7B, 0x7B]


@pytest.mark.parametrize("name", list(FP8_TORCH_DTYPES))
def test_fp8_encode_matches_torch_over_float32_sweep(name: str) -> None:
    x = float32_sweep()
    m = get_format(name).max_value
    want = x.clamp(-m, m).to(FP8_TORCH_DTYPES[name]).view(torch.uint8)
    assert torch.equal(encode_fp8(x, name), want)


@pytest.mark.parametrize("name", SMALL_FLOATS)
def test_small_float_encode_matches_brute_force_nearest_even(name: str) -> None:
    x = float32_sweep(1)
    x = x[x.abs() <= 4 * MAXES[name]]
    assert torch.equal(encode_float(x, name), nearest_even_reference(x, name))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_encode_accepts_other_input_dtypes(dtype: torch.dtype) -> None:
    x = float32_sweep(2)[::97].clamp(-1e4, 1e4).to(dtype)
    want = x.double().clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    if dtype != torch.float64:  # fp16/bf16 widen exactly; compare with torch's single rounding
        assert torch.equal(encode_fp8(x, "f8e4m3"), want)
    assert torch.equal(encode_float(x, "f4e2m1"), nearest_even_reference(x.double(), "f4e2m1"))


def test_generic_encoder_accepts_custom_max_and_nan_code() -> None:
    # E4M3FN through the generic entry point: max 448, NaN magnitude code 0x7F
    x = torch.tensor([1000.0, math.nan, -0.001953125])
    assert encode_minifloat(x, 4, 3, 7, max_value=448.0, nan_code=0x7F).tolist() == [0x7E, 0x7F, 0x81]


# ---------------------------------------------------------------- integers

def test_int_ranges() -> None:
    assert int_range(8, True) == (-127, 127) and int_range(8, False) == (0, 255)
    assert int_range(4, True) == (-7, 7) and int_range(4, False) == (0, 15)
    with pytest.raises(ValueError):
        int_range(9, True)


@st.composite
def grouped_tensor(draw: st.DrawFn) -> tuple[torch.Tensor, int, int | None]:
    rows, groups = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    group = draw(st.sampled_from([None, 1, 2, 8, 32]))
    axis = draw(st.sampled_from([0, 1, -1]))
    n = groups * (group or draw(st.integers(1, 16)))
    shape = [rows, n] if axis in (1, -1) else [n, rows]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    mag = 10.0 ** draw(st.integers(-6, 6))
    x = torch.randn(shape, generator=g) * mag + draw(st.floats(-2, 2)) * mag
    return x, axis, group


@given(grouped_tensor(), st.sampled_from([4, 8]))
@SLOW
def test_symmetric_int_error_bound_and_round_trip(case, bits: int) -> None:
    x, axis, group = case
    scale, zero = int_scales(x, bits=bits, axis=axis, group_size=group, symmetric=True)
    assert zero is None
    q = quantize_int(x, scale, bits=bits, axis=axis, group_size=group)
    qmin, qmax = int_range(bits, True)
    assert q.dtype == torch.int8 and int(q.min()) >= qmin and int(q.max()) <= qmax
    s = expand_groups(scale, x, axis, group)
    err = (x - dequantize_int(q, scale, axis=axis, group_size=group)).abs()
    assert bool((err <= s / 2 * (1 + 1e-5)).all())
    again = quantize_int(dequantize_int(q, scale, axis=axis, group_size=group), scale, bits=bits,
                         axis=axis, group_size=group)
    assert torch.equal(again, q)


@given(grouped_tensor(), st.sampled_from([4, 8]))
@SLOW
def test_asymmetric_int_error_bound_and_round_trip(case, bits: int) -> None:
    x, axis, group = case
    scale, zero = int_scales(x, bits=bits, axis=axis, group_size=group, symmetric=False)
    q = quantize_int(x, scale, zero, bits=bits, axis=axis, group_size=group)
    assert q.dtype == torch.uint8 and int(q.max()) <= (1 << bits) - 1
    deq = dequantize_int(q, scale, zero, axis=axis, group_size=group)
    s = expand_groups(scale, x, axis, group)
    assert bool(((x - deq).abs() <= s / 2 * (1 + 1e-5) + 1e-6 * x.abs()).all())
    again = quantize_int(deq, scale, zero, bits=bits, axis=axis, group_size=group)
    assert torch.equal(again, q)


def test_int_rounding_ties_to_even_and_saturation() -> None:
    scale = torch.tensor([0.25])
    x = torch.tensor([0.125, 0.375, -0.125, -0.375, 100.0, -100.0])
    assert quantize_int(x, scale, bits=8).tolist() == [0, 2, 0, -2, 127, -127]
    assert quantize_int(x, scale, bits=4).tolist() == [0, 2, 0, -2, 7, -7]
    zp = torch.tensor([8])
    assert quantize_int(x, scale, zp, bits=4).tolist() == [8, 10, 8, 6, 15, 0]


def test_per_group_scales_apply_to_their_group() -> None:
    x = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    scale = torch.tensor([[1.0, 10.0]])
    assert quantize_int(x, scale, group_size=2).tolist() == [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match="multiple of group_size"):
        quantize_int(torch.zeros(1, 5), scale, group_size=2)
    with pytest.raises(ValueError, match="does not match"):
        quantize_int(x, torch.ones(1, 3), group_size=2)


def test_zero_groups_get_unit_scale() -> None:
    scale, zero = int_scales(torch.zeros(2, 8), symmetric=False)
    assert torch.equal(scale, torch.ones(2, 1)) and torch.equal(zero, torch.zeros(2, 1, dtype=torch.int32))


# ---------------------------------------------------------------- packing

def test_nibble_layout_is_low_first() -> None:
    assert pack_nibbles(torch.tensor([1, 2, 0xF, 0])).tolist() == [0x21, 0x0F]
    assert pack_int4(torch.tensor([-1, 7, -8, 0], dtype=torch.int8)).tolist() == [0x7F, 0x08]
    assert unpack_int4(torch.tensor([0x8F], dtype=torch.uint8)).tolist() == [-1, -8]
    with pytest.raises(ValueError, match="odd"):
        pack_nibbles(torch.zeros(3, dtype=torch.uint8))


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(0, 2**31), st.booleans())
@SLOW
def test_int4_pack_round_trip(lead: list[int], seed: int, signed: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-8, 8) if signed else (0, 16)
    q = torch.randint(lo, hi, (*lead, 2 * lead[-1]), generator=g).to(torch.int8 if signed else torch.uint8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == q.shape[-1] // 2
    assert torch.equal(unpack_int4(packed, signed=signed), q)


@given(st.integers(1, 8), st.integers(0, 2**31))
@SLOW
def test_fp4_code_pack_round_trip(n: int, seed: int) -> None:
    x = torch.randn(3, 2 * n, generator=torch.Generator().manual_seed(seed)) * 4
    codes = encode_float(x, "f4e2m1")
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)


@pytest.mark.parametrize("name", list(FP8_TORCH_DTYPES))
def test_fp8_fast_cast_equals_the_arithmetic_encoder(name: str) -> None:
    """encode_float's torch-cast path and the generic arithmetic agree on every float32 of the sweep."""
    from fxforge.ir.formats import encode_minifloat

    f = get_format(name)
    x = float32_sweep()
    slow = encode_minifloat(x, f.exp_bits, f.man_bits, f.bias, max_value=f.max_value, nan_code=f.nan_code)
    assert torch.equal(encode_float(x, name), slow)


@pytest.mark.parametrize("name", [n for n in FP8_TORCH_DTYPES] + list(SMALL_FLOATS))
def test_decode_table_equals_the_arithmetic_decoder(name: str) -> None:
    from fxforge.ir.formats import _decode_arith

    f = get_format(name)
    codes = torch.arange(1 << f.bits, dtype=torch.uint8).reshape(-1, 2)
    got = decode_float(codes, name)
    want = _decode_arith(codes, f.exp_bits, f.man_bits, f.bias, f.specials)
    assert got.shape == codes.shape and torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
    assert torch.equal(torch.signbit(got), torch.signbit(want))
