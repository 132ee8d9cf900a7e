"""In-register dequantization of one int32 word of a 4-bit decode layout (`fxforge.ir.weight_layouts`) into the 8
fp16 values it holds, for the decode GEMM (`qlinear_decode`): inline PTX for a GPU, portable integer ops for the
interpreter (the same values, bit for bit).

Decisions:
- int4 ("i4w"): the magic-number trick, 4 LOP3 + 1 SHF + 2 HSUB2 + 2 HFMA2 per word: q - z exactly.
- FP4 ("f4w"): E2M1 sign/magnitude bits placed into fp16 halves (value * 2^-14 exactly) by byte permutes, 2 LOP3
  + 2 shifts + 4 PRMT per word (`dequant_f4`); times a group factor, 5 LOP3 + 3 shifts + 4 HMUL2
  (`dequant_f4s_asm`). The layout XOR-encodes half the word so that one LOP3 is XOR and mask at once (8
  instructions per word; a plain placement needed 9); `benchmarks/fp4_decode_search.py` finds no 7.
  Tried before the XOR layout: four PTX spellings of the same values, picked per GPU and Triton, that only changed
  ptxas' register moves; with it the PRMT form is best or within 0.04 per weight of the best everywhere measured
  (benchmarks/results/qdecode_sass-2026-12-02-s19-*).
`tests/codegen/test_qlinear_decode.py` checks each PTX body with a small emulator of its instructions against the
layout.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dequant_asm(w, zz, zz16):
    """int32 words -> 8 fp16 tensors (slots 0..7 = q - z) by LOP3/HSUB2/HFMA2 on fp16 pairs."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 t0, t1, t2, t3, s, m;
        mov.b32 m, 0x2C002C00;
        lop3.b32 t0, $8, 0x000F000F, 0x64006400, 0xEA;
        lop3.b32 t1, $8, 0x00F000F0, 0x64006400, 0xEA;
        shr.u32 s, $8, 8;
        lop3.b32 t2, s, 0x000F000F, 0x64006400, 0xEA;
        lop3.b32 t3, s, 0x00F000F0, 0x64006400, 0xEA;
        sub.f16x2 t0, t0, $9;
        fma.rn.f16x2 t1, t1, m, $10;
        sub.f16x2 t2, t2, $9;
        fma.rn.f16x2 t3, t3, m, $10;
        mov.b32 {$0, $1}, t0;
        mov.b32 {$2, $3}, t1;
        mov.b32 {$4, $5}, t2;
        mov.b32 {$6, $7}, t3;
        }""",
        constraints="=h,=h,=h,=h,=h,=h,=h,=h,r,r,r", args=[w, zz, zz16], dtype=(tl.float16,) * 8, is_pure=True, pack=1)


@triton.jit
def _slot(w, z, NIBBLE: tl.constexpr):
    return (((w >> (4 * NIBBLE)) & 0xF) - z).to(tl.float16)


@triton.jit
def dequant_portable(w, zz):
    """The same 8 fp16 tensors as `dequant_asm`, by integer ops (z from the low half of zz: 1024 + z)."""
    z = (zz & 0xFFFF) - 0x6400
    return (_slot(w, z, 0), _slot(w, z, 4), _slot(w, z, 1), _slot(w, z, 5),
            _slot(w, z, 2), _slot(w, z, 6), _slot(w, z, 3), _slot(w, z, 7))


def _ptx(*steps: str) -> tl.constexpr:
    """An inline-asm body: the FP4 registers, `steps` (PTX lines), then the four fp16x2 results unpacked into the 8
    16-bit outputs $0..$7 (the word is $8, a group factor $9)."""
    unpack = [f"mov.b32 {{${2 * i}, ${2 * i + 1}}}, t{i};" for i in range(4)]
    return tl.constexpr("\n".join(["{", ".reg .b32 t0, t1, t2, t3, a, b, u, f;", *steps, *unpack, "}"]))


# E2M1 sign/magnitude bits into fp16 halves (`weight_layouts`' "f4w": z1 = w & P, z2 = ((w >> 3) ^ (w << 7)) & P,
# P = 0x8E8E8E8E): 5 LOP3 + 3 shifts (t0..t3 = slots (0,1) .. (6,7)); z2's XOR and its mask are one LOP3 (LUT 0x28:
# (a ^ b) & c)
_F4_LOP3 = ("lop3.b32 t0, $8, 0x8E008E00, 0, 0xC0;", "shl.b32 a, $8, 8;", "lop3.b32 t1, a, 0x8E008E00, 0, 0xC0;",
            "shr.u32 a, $8, 3;", "shl.b32 b, $8, 7;", "lop3.b32 t2, a, b, 0x8E008E00, 0x28;",
            "lop3.b32 u, a, b, 0x008E008E, 0x28;", "shl.b32 t3, u, 8;")
# the same values by byte permutes (2 LOP3 + 2 shifts + 4 PRMT): z1 (a) and z2 (u) masked once each and their
# bytes moved into the halves' high bytes. The decode without group factors: on mma.sync it allocates better than
# the LOP3 form (fewer register moves into the MMA's quads: measured, 4096 x 4096, 0.02-0.2 per weight)
_F4_PRMT = ("lop3.b32 a, $8, 0x8E8E8E8E, 0, 0xC0;", "prmt.b32 t0, a, 0, 0x3414;", "prmt.b32 t1, a, 0, 0x2404;",
            "shr.u32 b, $8, 3;", "shl.b32 u, $8, 7;", "lop3.b32 u, b, u, 0x8E8E8E8E, 0x28;",
            "prmt.b32 t2, u, 0, 0x3414;", "prmt.b32 t3, u, 0, 0x2404;")
F4P_PTX = _ptx(*_F4_PRMT)
# times the group factor ($9, one fp16: ptxas reads it as both halves, `.H0_H0`)
F4S_PTX = _ptx("mov.b32 f, {$9, $9};", *_F4_LOP3, *(f"mul.rn.f16x2 t{i}, t{i}, f;" for i in range(4)))
F4_BODIES = ("F4P_PTX", "F4S_PTX")  # (the tests emulate each)


@triton.jit
def dequant_f4(w, ASM: tl.constexpr):
    """int32 words of an "f4w" layout -> 8 fp16 tensors (slot e = E2M1 value * 2^-14): by PTX on a GPU, by integer
    ops without (ASM False)."""
    if ASM:
        v = tl.inline_asm_elementwise(asm=F4P_PTX, constraints="=h,=h,=h,=h,=h,=h,=h,=h,r", args=[w],
                                      dtype=(tl.float16,) * 8, is_pure=True, pack=1)
    else:
        v = dequant_f4_portable(w)
    return v


@triton.jit
def dequant_f4s_asm(w, f):
    """`dequant_f4`'s values times the group's factor (fp16 `f`, 2^(14 - k)): E2M1 * 2^-k exactly, + 4 HMUL2."""
    return tl.inline_asm_elementwise(asm=F4S_PTX, constraints="=h,=h,=h,=h,=h,=h,=h,=h,r,h", args=[w, f],
                                     dtype=(tl.float16,) * 8, is_pure=True, pack=1)


@triton.jit
def _f4_slot(z, MAG: tl.constexpr, SIGN: tl.constexpr):
    bits = (((z >> SIGN) & 1) << 15) | (((z >> MAG) & 7) << 9)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def dequant_f4_portable(w):
    """The same 8 fp16 tensors as `dequant_f4`'s PTX, by integer ops: z1 = w's bits, z2 = (w >> 3) ^ (w << 7) (logical
    shifts) at the same places (bit positions: `weight_layouts._MAG/_SIGN`)."""
    u = w.to(tl.uint32, bitcast=True)
    z2 = ((u >> 3) ^ (u << 7)).to(tl.int32, bitcast=True)
    return (_f4_slot(w, 9, 15), _f4_slot(w, 25, 31), _f4_slot(w, 1, 7), _f4_slot(w, 17, 23),
            _f4_slot(z2, 9, 15), _f4_slot(z2, 25, 31), _f4_slot(z2, 1, 7), _f4_slot(z2, 17, 23))
