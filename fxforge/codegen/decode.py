"""Triton device helpers that decode packed low-precision codes to fp32 in registers.

GEMM kernels call these `@triton.jit` functions after loading packed weights. They mirror
`fxforge.ir.formats` / `fxforge.ir.block_formats` bit for bit (the tests compare every code):
- 4-bit packing: element 2i in the low nibble, 2i+1 in the high nibble of a byte.
- int4 nibbles are two's complement: sign extension is (v ^ 8) - 8.
- Float codes (fp8 E4M3FN / E5M2, fp6 E2M3 / E3M2, fp4 E2M1) decode by integer bit manipulation:
  normals are rebuilt as fp32 bit patterns, subnormals as mantissa * 2^(1 - bias - man_bits) (exact),
  the sign is OR-ed in as a bit (so the negative-zero code gives -0.0). E4M3FN's S.1111.111 is NaN;
  E5M2's all-ones exponent is +-inf (mantissa 0) or NaN. No fp8 casts (the interpreter gets them
  wrong), no libdevice.
- E8M0 scales: 2^(e - 127) built as fp32 bits; e = 0 is the fp32 subnormal 2^-127, e = 255 is NaN.
Codes may be loaded as any integer type; they are widened to int32 first (uint8 zero-extends).
Only portable `tl` operations are used, so the helpers build on triton 3.6 and 3.9.
"""

from __future__ import annotations

import triton
import triton.language as tl

FP32_NAN_BITS: tl.constexpr = tl.constexpr(0x7FC00000)
FP32_INF_BITS: tl.constexpr = tl.constexpr(0x7F800000)

# `specials` argument of `minifloat_to_f32`, as in fxforge.ir.formats.Format.specials
SPECIALS_NONE = 0
SPECIALS_FN = 1
SPECIALS_IEEE = 2


@triton.jit
def unpack_nibbles(packed):
    """(low, high) nibbles of each byte as int32 in 0..15."""
    p = packed.to(tl.int32) & 0xFF
    return p & 0xF, (p >> 4) & 0xF


@triton.jit
def sign_extend_int4(v):
    """int32 nibble 0..15 -> signed int4 value -8..7."""
    return (v ^ 8) - 8


@triton.jit
def unpack_int4(packed):
    """(low, high) signed int4 values (int32) of each byte."""
    lo, hi = unpack_nibbles(packed)
    return sign_extend_int4(lo), sign_extend_int4(hi)


@triton.jit
def interleave_nibbles(packed):
    """Packed bytes [..., K/2] -> nibbles [..., K] (int32 0..15) in logical order along the last axis."""
    lo, hi = unpack_nibbles(packed)
    pair = tl.join(lo, hi)  # tl.interleave, spelled with core ops so it runs in any interpreter setup
    return tl.reshape(pair, pair.shape[:-2] + [2 * pair.shape[-2]])


@triton.jit
def minifloat_to_f32(
    code,
    EXP_BITS: tl.constexpr,
    MAN_BITS: tl.constexpr,
    BIAS: tl.constexpr,
    SPECIALS: tl.constexpr,
):
    """Sign/exponent/mantissa code (in the low 1 + EXP_BITS + MAN_BITS bits) -> fp32."""
    c = code.to(tl.int32)
    m = c & ((1 << MAN_BITS) - 1)
    e = (c >> MAN_BITS) & ((1 << EXP_BITS) - 1)
    sign = ((c >> (EXP_BITS + MAN_BITS)) & 1) << 31
    normal = ((e + (127 - BIAS)) << 23) | (m << (23 - MAN_BITS))
    # 2^(1 - BIAS - MAN_BITS) as fp32 bits: the value of one subnormal mantissa step
    step = (m * 0 + (128 - BIAS - MAN_BITS)) << 23
    subnormal = m.to(tl.float32) * step.to(tl.float32, bitcast=True)
    bits = tl.where(e == 0, subnormal.to(tl.int32, bitcast=True), normal) | sign
    top = e == ((1 << EXP_BITS) - 1)
    if SPECIALS == 1:
        bits = tl.where(top & (m == ((1 << MAN_BITS) - 1)), FP32_NAN_BITS, bits)
    if SPECIALS == 2:
        bits = tl.where(top, tl.where(m == 0, FP32_INF_BITS | sign, FP32_NAN_BITS), bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def fp8e4m3_to_f32(code):
    """FP8 E4M3FN code -> fp32 (0x7F / 0xFF are NaN)."""
    return minifloat_to_f32(code, 4, 3, 7, 1)


@triton.jit
def fp8e5m2_to_f32(code):
    """FP8 E5M2 code -> fp32 (with +-inf and NaN)."""
    return minifloat_to_f32(code, 5, 2, 15, 2)


@triton.jit
def fp6e2m3_to_f32(code):
    """FP6 E2M3 code (low 6 bits) -> fp32."""
    return minifloat_to_f32(code, 2, 3, 1, 0)


@triton.jit
def fp6e3m2_to_f32(code):
    """FP6 E3M2 code (low 6 bits) -> fp32."""
    return minifloat_to_f32(code, 3, 2, 3, 0)


@triton.jit
def fp4e2m1_to_f32(code):
    """FP4 E2M1 code (low 4 bits) -> fp32: +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}."""
    return minifloat_to_f32(code, 2, 1, 1, 0)


@triton.jit
def e8m0_to_f32(code):
    """E8M0 scale code -> fp32 2^(code - 127); 0 -> 2^-127 (subnormal), 255 -> NaN."""
    e = code.to(tl.int32) & 0xFF
    bits = tl.where(e == 0, 0x00400000, e << 23)
    bits = tl.where(e == 255, FP32_NAN_BITS, bits)
    return bits.to(tl.float32, bitcast=True)
