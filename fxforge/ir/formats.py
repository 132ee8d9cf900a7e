"""Low-precision element formats: the format table, float encode/decode, integer quantization, nibble packing.

This module owns the bit-level meaning of every element format fxforge stores (block formats built from
them live in `fxforge.ir.block_formats`). Everything is plain torch on any device; nothing of fxforge is
imported. Codes are `uint8` tensors holding one code each in their low bits.

Formats (`FORMATS`, looked up with `get_format(name)`):
    f8e4m3 (E4M3FN, bias 7, max 448, only S.1111.111 is NaN, no inf)
    f8e5m2 (IEEE-like, bias 15, max 57344, exponent all ones = inf / NaN)
    f6e2m3 (bias 1, max 7.5), f6e3m2 (bias 3, max 28), f4e2m1 (bias 1, max 6): every code finite
    i8, i4: two's complement integers

Rounding rules (decided):
- Floats round to nearest, ties to even mantissa (the even *code*), and saturate: finite values beyond
  the largest finite value and +-inf encode as +-max (torch's fp8 cast does not saturate on every
  build; we clamp first, after which we are bit-exact with `x.to(torch.float8_*).view(torch.uint8)`).
  Subnormals are kept (no flush to zero).
- NaN: fp8 keeps NaN, encoded as the all-ones exponent and mantissa (0x7F) with the input's sign bit,
  as torch does. fp6/fp4 have no NaN code: NaN encodes as +0 (MX blocks carry NaN in the 0xFF scale).
- The sign is always kept: -0.0 and negative values that round to zero encode as the negative-zero
  code (0x80 fp8, 0x20 fp6, 0x08 fp4), which decodes to -0.0. So encode(decode(c)) == c for every
  code except NaNs and e5m2's +-inf (which saturate to +-max).
- Arithmetic is exact: inputs are widened to float64 (exact for fp32/fp16/bf16 inputs; float64
  inputs are rounded once, directly to the target), and every scaling is by a power of two.
- Integers: symmetric quantization uses the restricted signed range +-(2^(b-1) - 1) (i8 +-127,
  i4 +-7, so -128/-8 never appear) and returns int8; asymmetric uses [0, 2^b - 1] with an integer
  zero point and returns uint8. q = clamp(round_half_even(x / s) + zp), with x / s in float32.
- Packing: two 4-bit values per byte along the last axis, element 2i in the low nibble and element
  2i+1 in the high nibble (the last axis must be even). int4 values are stored as two's complement
  nibbles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch
from torch import Tensor

Specials = Literal["none", "fn", "ieee"]


@dataclass(frozen=True)
class Format:
    """One element format.

    `specials` (floats): "none" = every code finite, "fn" = only all-ones exponent+mantissa is NaN,
    "ieee" = all-ones exponent is inf (mantissa 0) or NaN. `emax` is the exponent of the largest
    binade (floor(log2(max_value))) for floats; for ints it is OCP MX's 0 (an MX int element is a
    fixed-point number with an implicit scale 2^-(bits-2), e.g. INT8 = s1.6).
    """

    name: str
    bits: int
    kind: Literal["float", "int"]
    exp_bits: int
    man_bits: int
    bias: int
    max_value: float
    emax: int
    specials: Specials = "none"

    @property
    def nan_code(self) -> int | None:
        """Magnitude code of NaN (sign bit clear), or None when the format has no NaN."""
        return None if self.specials == "none" else (1 << (self.bits - 1)) - 1

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (floats)."""
        return 2.0 ** (1 - self.bias - self.man_bits)


def minifloat_max(exp_bits: int, man_bits: int, bias: int, specials: Specials = "none") -> float:
    """Largest finite value of a sign/exponent/mantissa format."""
    top_exp = (1 << exp_bits) - 1 - (1 if specials == "ieee" else 0)
    top_man = (1 << man_bits) - 1 - (1 if specials == "fn" else 0)
    return (1.0 + top_man / (1 << man_bits)) * 2.0 ** (top_exp - bias)


def _float_format(name: str, exp_bits: int, man_bits: int, bias: int, specials: Specials) -> Format:
    top = minifloat_max(exp_bits, man_bits, bias, specials)
    emax = int(torch.tensor(top, dtype=torch.float64).log2().floor().item())
    return Format(name, 1 + exp_bits + man_bits, "float", exp_bits, man_bits, bias, top, emax, specials)


def _int_format(name: str, bits: int) -> Format:
    return Format(name, bits, "int", 0, bits - 1, 0, float((1 << (bits - 1)) - 1), 0)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        _float_format("f8e4m3", 4, 3, 7, "fn"),
        _float_format("f8e5m2", 5, 2, 15, "ieee"),
        _float_format("f6e2m3", 2, 3, 1, "none"),
        _float_format("f6e3m2", 3, 2, 3, "none"),
        _float_format("f4e2m1", 2, 1, 1, "none"),
        _int_format("i8", 8),
        _int_format("i4", 4),
    )
}

FP8_TORCH_DTYPES: dict[str, torch.dtype] = {
    "f8e4m3": torch.float8_e4m3fn,
    "f8e5m2": torch.float8_e5m2,
}


def get_format(fmt: Format | str) -> Format:
    """The `Format` for a name (or the format itself); ValueError names the known formats."""
    if isinstance(fmt, Format):
        return fmt
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}") from None


def _float_fmt(fmt: Format | str, allowed: tuple[str, ...] | None = None) -> Format:
    f = get_format(fmt)
    if f.kind != "float" or (allowed is not None and f.name not in allowed):
        names = allowed or tuple(n for n, g in FORMATS.items() if g.kind == "float")
        raise ValueError(f"format {f.name!r} cannot be used here; pass one of {', '.join(names)}")
    return f


# ---------------------------------------------------------------- floats

def encode_minifloat(
    x: Tensor,
    exp_bits: int,
    man_bits: int,
    bias: int,
    *,
    max_value: float | None = None,
    nan_code: int | None = None,
) -> Tensor:
    """Encode `x` as sign/exponent/mantissa codes (uint8), saturating round-to-nearest-even.

    `max_value` defaults to the all-ones code's value (formats without inf/NaN); `nan_code` is the
    magnitude code NaN gets (sign kept), None encodes NaN as +0.
    """
    if max_value is None:
        max_value = minifloat_max(exp_bits, man_bits, bias)
    xd = x.to(torch.float64)
    nan = torch.isnan(xd)
    mag = torch.nan_to_num(xd.abs(), nan=0.0).clamp(max=max_value)
    emin = 1 - bias
    _, e = torch.frexp(mag)  # mag = f * 2^e, f in [0.5, 1); floor(log2(mag)) = e - 1
    binade = torch.where(mag > 0, e.to(torch.int64) - 1, emin).clamp(min=emin)  # subnormals: emin
    steps = torch.round(torch.ldexp(mag, (man_bits - binade).to(torch.float64)))  # RNE, exact
    code = ((binade - emin) << man_bits) + steps.to(torch.int64)  # carries roll into the exponent
    code = code | (torch.signbit(xd).to(torch.int64) << (exp_bits + man_bits))
    if nan_code is None:
        code = torch.where(nan, 0, code)
    else:
        code = torch.where(nan, (code & (1 << (exp_bits + man_bits))) | nan_code, code)
    return code.to(torch.uint8)


def decode_minifloat(
    codes: Tensor, exp_bits: int, man_bits: int, bias: int, *, specials: Specials = "none"
) -> Tensor:
    """Decode sign/exponent/mantissa codes to float32 (exact; -0 code gives -0.0).

    Formats of at most 8 bits decode by a 256-entry table (built once by the arithmetic below): the
    reference evaluator decodes every quantized weight on every call, and GPTQ per column.
    """
    if 1 + exp_bits + man_bits <= 8:
        table = _decode_table(exp_bits, man_bits, bias, specials).to(codes.device)
        return table[codes.to(torch.int64) & 0xFF]
    return _decode_arith(codes, exp_bits, man_bits, bias, specials)


@cache
def _decode_table(exp_bits: int, man_bits: int, bias: int, specials: Specials) -> Tensor:
    return _decode_arith(torch.arange(256), exp_bits, man_bits, bias, specials)


def _decode_arith(codes: Tensor, exp_bits: int, man_bits: int, bias: int, specials: Specials) -> Tensor:
    c = codes.to(torch.int64)
    m = c & ((1 << man_bits) - 1)
    e = (c >> man_bits) & ((1 << exp_bits) - 1)
    negative = ((c >> (exp_bits + man_bits)) & 1).bool()
    significand = torch.where(e > 0, m + (1 << man_bits), m).to(torch.float64)
    exponent = torch.clamp(e - bias, min=1 - bias) - man_bits
    mag = torch.ldexp(significand, exponent.to(torch.float64))
    top = e == (1 << exp_bits) - 1
    if specials == "fn":
        mag = torch.where(top & (m == (1 << man_bits) - 1), torch.nan, mag)
    elif specials == "ieee":
        mag = torch.where(top, torch.where(m == 0, torch.inf, torch.nan), mag)
    return torch.where(negative, -mag, mag).to(torch.float32)


def encode_float(x: Tensor, fmt: Format | str) -> Tensor:
    """Encode `x` in a float format of the table (saturating RNE, see the module docstring).

    FP8 from float32/16 without NaN takes torch's own cast after clamping to +-max (RNE, bit-identical to
    the arithmetic below: tests/ir/test_formats.py checks both on every code and on random ties).
    """
    f = _float_fmt(fmt)
    dtype = FP8_TORCH_DTYPES.get(f.name)
    if dtype is not None and x.dtype in (torch.float32, torch.float16, torch.bfloat16) and not torch.isnan(x).any():
        return x.float().clamp(-f.max_value, f.max_value).to(dtype).view(torch.uint8)
    return encode_minifloat(
        x, f.exp_bits, f.man_bits, f.bias, max_value=f.max_value, nan_code=f.nan_code
    )


def decode_float(codes: Tensor, fmt: Format | str) -> Tensor:
    """Decode codes of a float format of the table to float32."""
    f = _float_fmt(fmt)
    return decode_minifloat(codes, f.exp_bits, f.man_bits, f.bias, specials=f.specials)


def encode_fp8(x: Tensor, fmt: Format | str = "f8e4m3") -> Tensor:
    """FP8 (f8e4m3 / f8e5m2) codes of `x`, bit-exact with torch's cast after clamping to +-max."""
    return encode_float(x, _float_fmt(fmt, tuple(FP8_TORCH_DTYPES)))


def decode_fp8(codes: Tensor, fmt: Format | str = "f8e4m3") -> Tensor:
    """float32 values of FP8 codes (same as `codes.view(torch.float8_*).float()`)."""
    return decode_float(codes, _float_fmt(fmt, tuple(FP8_TORCH_DTYPES)))


def float_values(fmt: Format | str) -> Tensor:
    """float32 value of every code 0 .. 2^bits - 1 of a float format (index = code)."""
    f = _float_fmt(fmt)
    return decode_float(torch.arange(1 << f.bits, dtype=torch.uint8), f)


# ---------------------------------------------------------------- integers

def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax): symmetric +-(2^(b-1) - 1), asymmetric [0, 2^b - 1]."""
    if not 2 <= bits <= 8:
        raise ValueError(f"integer bits must be in 2..8, got {bits}")
    if symmetric:
        return -((1 << (bits - 1)) - 1), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def expand_groups(t: Tensor, like: Tensor, axis: int, group_size: int | None) -> Tensor:
    """Per-group tensor `t` (the size of `axis` divided by `group_size`) repeated to broadcast with `like`.

    With `group_size=None` `t` must already broadcast against `like` (per-tensor, per-channel).
    """
    if group_size is None:
        return t
    axis = axis % like.dim()
    n = like.shape[axis]
    if group_size <= 0 or n % group_size:
        raise ValueError(f"axis {axis} has size {n}, not a multiple of group_size={group_size}; pad it")
    if t.dim() != like.dim() or t.shape[axis] != n // group_size:
        raise ValueError(
            f"per-group tensor of shape {tuple(t.shape)} does not match {tuple(like.shape)} with "
            f"group_size={group_size} on axis {axis}: expected size {n // group_size} on that axis"
        )
    return t.repeat_interleave(group_size, dim=axis)


def _group_view(x: Tensor, axis: int, group_size: int | None) -> Tensor:
    """`x` with `axis` moved last and split into [..., n_groups, group]."""
    xt = x.movedim(axis, -1)
    g = xt.shape[-1] if group_size is None else group_size
    if g <= 0 or xt.shape[-1] % g:
        raise ValueError(f"axis size {xt.shape[-1]} is not a multiple of group_size={g}; pad it")
    return xt.reshape(*xt.shape[:-1], xt.shape[-1] // g, g)


def int_scales(
    x: Tensor, *, bits: int = 8, axis: int = -1, group_size: int | None = None, symmetric: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Min/max scales (and zero points if asymmetric), one per group along `axis` (all of it if None).

    Shapes are x's with `axis` reduced to n_groups. Symmetric: s = amax / qmax. Asymmetric: the range
    is widened to include 0, s = (max - min) / (2^b - 1), zp = clamp(round(-min / s)). Groups with a
    zero range get s = 1 so nothing divides by zero.
    """
    qmin, qmax = int_range(bits, symmetric)
    xg = _group_view(x.to(torch.float32), axis, group_size)
    if symmetric:
        scale = _nonzero(xg.abs().amax(-1) / qmax)
        return scale.movedim(-1, axis), None
    lo, hi = xg.amin(-1).clamp(max=0), xg.amax(-1).clamp(min=0)
    scale = _nonzero((hi - lo) / (qmax - qmin))
    zero = torch.clamp(torch.round(-lo / scale), qmin, qmax).to(torch.int32)
    return scale.movedim(-1, axis), zero.movedim(-1, axis)


def _nonzero(scale: Tensor) -> Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_int(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor | None = None,
    *,
    bits: int = 8,
    axis: int = -1,
    group_size: int | None = None,
) -> Tensor:
    """Integer codes of `x`: symmetric (int8 result) when `zero_point` is None, else asymmetric (uint8).

    `scale`/`zero_point` are per group along `axis` (see `expand_groups`).
    """
    qmin, qmax = int_range(bits, zero_point is None)
    s = expand_groups(scale.to(torch.float32), x, axis, group_size)
    q = torch.round(x.to(torch.float32) / s)
    if zero_point is not None:
        q = q + expand_groups(zero_point, x, axis, group_size).to(torch.float32)
    q = q.clamp(qmin, qmax)
    return q.to(torch.int8 if zero_point is None else torch.uint8)


def dequantize_int(
    q: Tensor,
    scale: Tensor,
    zero_point: Tensor | None = None,
    *,
    axis: int = -1,
    group_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(q - zp) * scale, with per-group `scale`/`zero_point` as in `quantize_int`."""
    v = q.to(torch.float32)
    if zero_point is not None:
        v = v - expand_groups(zero_point, q, axis, group_size).to(torch.float32)
    return (v * expand_groups(scale.to(torch.float32), q, axis, group_size)).to(dtype)


# ---------------------------------------------------------------- 4-bit packing

def pack_nibbles(codes: Tensor) -> Tensor:
    """Pack 4-bit codes two per byte along the last axis: element 2i low nibble, 2i+1 high nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"last axis has odd size {codes.shape[-1]}; pad it to an even size to pack 4-bit")
    c = codes.to(torch.int16) & 0xF
    return (c[..., 0::2] | (c[..., 1::2] << 4)).to(torch.uint8)


def unpack_nibbles(packed: Tensor) -> Tensor:
    """Inverse of `pack_nibbles`: uint8 codes 0..15, last axis doubled."""
    p = packed.to(torch.int16)
    pair = torch.stack((p & 0xF, (p >> 4) & 0xF), dim=-1)
    return pair.reshape(*packed.shape[:-1], 2 * packed.shape[-1]).to(torch.uint8)


def pack_int4(q: Tensor) -> Tensor:
    """Pack int4 values (signed -8..7 or unsigned 0..15) as two's complement nibbles, two per byte."""
    return pack_nibbles(q)


def unpack_int4(packed: Tensor, *, signed: bool = True) -> Tensor:
    """Unpack int4 nibbles: sign-extended int8 (-8..7) if `signed`, else uint8 0..15."""
    u = unpack_nibbles(packed)
    if not signed:
        return u
    return ((u.to(torch.int16) ^ 8) - 8).to(torch.int8)
