"""In-register dequantization of one int32 word of a 4-bit decode layout (`fxforge.ir.weight_layouts`) into the 8
fp16 values it holds, for the decode GEMM (`qlinear_decode`): inline PTX for a GPU, portable integer ops for the
interpreter (the same values, bit for bit).

Decisions:
- int4 ("i4w"): the magic-number trick, 4 LOP3 + 1 SHF + 2 HSUB2 + 2 HFMA2 per word: q - z exactly.
- FP4 ("f4w"): E2M1 sign/magnitude bits placed into fp16 halves (value * 2^-14 exactly), 5 LOP3 + 4 shifts, or
  by byte permutes (3 LOP3 + 2 shifts + 4 PRMT, same values); `dequant_f4` picks one of `F4_SPELLINGS` by the
  kernel's SPELL. The spellings differ only in what ptxas makes of them: it tends to write a pair's second PRMT
  over its dying source and then move the result into the MMA's register quad (up to ~60 moves per K tile on
  mma.sync), so two spellings keep a source live instead (`_F4_PRMT_LIVE`, `_F4_PRMT_SHZ`); which one allocates
  best depends on the fragment layout and Triton (`qlinear_decode_config.f4_spelling`, measured). `_s`: times a
  group factor pair (4 HMUL2). A search over shift/rotate/PRMT placements of the codes found no 8-instruction FP4
  decode. `tests/codegen/test_qlinear_decode.py` checks each PTX body with a small emulator of its instructions
  against the layout (the FP4 bodies are assembled from named steps).
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
    16-bit outputs $0..$7 (the word is $8, a factor pair $9)."""
    unpack = [f"mov.b32 {{${2 * i}, ${2 * i + 1}}}, t{i};" for i in range(4)]
    return tl.constexpr("\n".join(["{", ".reg .b32 t0, t1, t2, t3, a, b, u;", *steps, *unpack, "}"]))


# E2M1 sign/magnitude bits into fp16 halves: 5 LOP3 + 4 shifts (t0..t3 = slots (0,1) .. (6,7))
_F4_LOP3 = ("lop3.b32 t0, $8, 0x8E008E00, 0, 0xC0;", "shl.b32 a, $8, 8;", "lop3.b32 t1, a, 0x8E008E00, 0, 0xC0;",
            "shr.u32 a, $8, 3;", "shl.b32 b, $8, 7;", "lop3.b32 u, a, b, 0x0E0E0E0E, 0xE4;",
            "lop3.b32 t2, u, 0x8E008E00, 0, 0xC0;", "shl.b32 a, u, 8;", "lop3.b32 t3, a, 0x8E008E00, 0, 0xC0;")
# the same values by byte permutes (3 LOP3 + 2 shifts + 4 PRMT): the 0x8E bytes of w masked once (a) and moved into
# the halves' high bytes (t0, t1); the other 4 codes' bits shifted into the same places (u), masked, moved (t2, t3)
_MASK_A = ("lop3.b32 a, $8, 0x8E8E8E8E, 0, 0xC0;",)
_PRMT_A = ("prmt.b32 t0, a, 0, 0x3414;", "prmt.b32 t1, a, 0, 0x2404;")
_SHIFT_U = ("shr.u32 b, $8, 3;", "shl.b32 u, $8, 7;", "lop3.b32 u, b, u, 0x0E0E0E0E, 0xE4;")
_MASK_U = ("lop3.b32 u, u, 0x8E8E8E8E, 0, 0xC0;",)
_PRMT_U = ("prmt.b32 t2, u, 0, 0x3414;", "prmt.b32 t3, u, 0, 0x2404;")
_F4_PRMT = (*_MASK_A, *_PRMT_A, *_SHIFT_U, *_MASK_U, *_PRMT_U)
# a kept live past its PRMTs (u's mask reads it as a don't-care operand): ptxas otherwise writes a pair's second
# PRMT over its dying source and moves it into the MMA's register quad
_F4_PRMT_LIVE = (*_MASK_A, *_SHIFT_U, *_PRMT_A, "lop3.b32 u, u, 0x8E8E8E8E, a, 0xC0;", *_PRMT_U)
# t2, t3's zero bytes the sign of b's top byte (b = w >> 3: always 0; prmt's sign-replicate selector 0xF)
_F4_PRMT_SHZ = (*_MASK_A, *_PRMT_A, *_SHIFT_U, *_MASK_U, "prmt.b32 t2, u, b, 0x3F1F;", "prmt.b32 t3, u, b, 0x2F0F;")
F4_PTX = _ptx(*_F4_LOP3)
F4P_PTX = _ptx(*_F4_PRMT)
F4PL_PTX = _ptx(*_F4_PRMT_LIVE)
F4PZ_PTX = _ptx(*_F4_PRMT_SHZ)
F4S_PTX = _ptx(*_F4_LOP3, *(f"mul.rn.f16x2 t{i}, t{i}, $9;" for i in range(4)))
# the FP4 spellings by `SPELL` (the decode kernel's constexpr; `qlinear_decode_config.f4_spelling` picks one per
# GPU and tile): the same values, register allocations that differ by up to ~60 moves per K tile
F4_SPELLINGS = ("F4_PTX", "F4P_PTX", "F4PL_PTX", "F4PZ_PTX")


@triton.jit
def _f4(w, BODY: tl.constexpr):
    return tl.inline_asm_elementwise(asm=BODY, constraints="=h,=h,=h,=h,=h,=h,=h,=h,r", args=[w],
                                     dtype=(tl.float16,) * 8, is_pure=True, pack=1)


@triton.jit
def dequant_f4(w, ASM: tl.constexpr, SPELL: tl.constexpr):
    """int32 words of an "f4w" layout -> 8 fp16 tensors (slot e = E2M1 value * 2^-14): by PTX spelling `SPELL`
    (an index into `F4_SPELLINGS`) on a GPU, by integer ops without (ASM False)."""
    if not ASM:
        return dequant_f4_portable(w)
    elif SPELL == 0:
        return _f4(w, F4_PTX)
    elif SPELL == 1:
        return _f4(w, F4P_PTX)
    elif SPELL == 2:
        return _f4(w, F4PL_PTX)
    else:
        return _f4(w, F4PZ_PTX)


@triton.jit
def dequant_f4s_asm(w, ss):
    """`dequant_f4_asm` times the group's factor (fp16x2 `ss`, 2^(14 - k)): E2M1 * 2^-k exactly, + 4 HMUL2."""
    return tl.inline_asm_elementwise(asm=F4S_PTX, constraints="=h,=h,=h,=h,=h,=h,=h,=h,r,r", args=[w, ss],
                                     dtype=(tl.float16,) * 8, is_pure=True, pack=1)


@triton.jit
def _f4_slot(w, MAG: tl.constexpr, SIGN: tl.constexpr):
    bits = (((w >> SIGN) & 1) << 15) | (((w >> MAG) & 7) << 9)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def dequant_f4_portable(w):
    """The same 8 fp16 tensors as `dequant_f4_asm`, by integer ops (bit positions: `weight_layouts._MAG/_SIGN`)."""
    return (_f4_slot(w, 9, 15), _f4_slot(w, 25, 31), _f4_slot(w, 1, 7), _f4_slot(w, 17, 23),
            _f4_slot(w, 12, 8), _f4_slot(w, 28, 24), _f4_slot(w, 4, 0), _f4_slot(w, 20, 16))
