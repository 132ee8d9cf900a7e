"""Decode layouts of 4-bit quantized weights: codes pre-shuffled at compile time for in-register dequantization.

This module owns what `Quantized.layout` means for the payload, both ways: `to_decode_layout(weight)`
re-encodes a row-major 4-bit `#quantized` weight (w4a16-int4: layout "i4w{BK}"; w4a8-fp, FP4-E2M1 codes:
"f4w{BK}") into the layout the decode kernels (`fxforge.codegen.templates.qlinear_decode`) read, and
`codes_of(weight)` gives the row-major codes back, so `lowp_ops.decode_weight` (the reference semantics) is
exact for every layout.

Layout "i4w{BK}" (BK = 32, 64 or 128, the kernel's K tile; "i4w{BK}k4": the same for an MMA operand of
kWidth 4, which Triton 3.6 picks on sm_80 where 3.9 picks 2: slot e is column 32p + 16(e//4) + 4c +
2((e//2)%2) + e%2 instead):
- payload "words": int32 [N, Kp/8], Kp = K rounded up to BK (padding codes equal the row's zero point of
  the last group, so they decode to 0). Within each K tile of BK, word j = c * (BK/32) + p (c = 0..3,
  p = 0..BK/32-1) holds 8 codes in slots e = 0..7; slot e holds tile column
  k(e) = 32p + 16(e//4) + 8((e//2)%2) + 2c + (e%2), i.e. exactly the 8 weights one thread of an m16n8k16
  A fragment needs for two K16 steps, and sits at nibble position e//2 + 4(e%2): nibbles (0,4), (1,5),
  (2,6), (3,7) are fp16 pairs after `(w & 0x000F000F) | 0x64006400` (1024 + q in each half; the "magic
  number" trick of FasterTransformer/Marlin), `& 0x00F000F0` (1024 + 16q) and the same on `w >> 8`.
- payload "zz": int32 [N, G, 2]: fp16x2 bit pairs of (1024 + z) and of -(64 + z) per group, so one
  `sub.f16x2` / `fma.f16x2 (x, 1/16, -(64+z))` turns a pair into q - z (exact: small integers).
- payload "scale" (f16 [N, G]) and "zero" (uint8 [N, G]) stay as in the row-major layout; "scale32" holds
  the same scales as f32 (exact), so the kernel's loop converts nothing.
Layout "f4w{BK}" (w4a8-fp; "k4" likewise): the same words and slot -> column map, but a slot's 4 code bits
(sign s, magnitude e1 e0 m) are not a nibble, and half the word is XOR-encoded. With P = 0x8E8E8E8E (each byte's
bits 1-3 and 7) and M = 0x8E008E00, the word's P bits hold slots 0-3 as they are (z1 = w & P) and
z2 = ((w >> 3) ^ (w << 7)) & P (logical shifts) holds slots 4-7 at the same places; in z1 | z2-as-a-plain-word
(`f4_plain`) slot e's magnitude sits at bits MAG[e]..MAG[e]+2 and its sign at bit SIGN[e]. The fp16x2 pairs are
z1 & M (slots 0, 1), (z1 << 8) & M (2, 3), z2 & M (4, 5) and (z2 << 8) & M (6, 7): 8 instructions per 8 weights
(`qlinear_decode_dequant`: 2 shifts, and z2's XOR and mask one LOP3; a plain placement needs a select and a
mask there, 9). Each half is then s << 15 | (e1 e0 m) << 9, the fp16 whose value is exactly the E2M1 value times
2^-14 (E2M1's subnormal 0.5 lands on fp16's subnormal 2^-15); the 2^14 goes into the group factor. Payload:
"words", "scale" (s_max f32 [N, 1]) and "shift" (uint8 [N, G]) as row-major, "scale32" = 2^(14 - shift) f32
[N, G], the factor of a group's partial accumulator, and "s16" (the same factors in fp16) for groups narrower
than the tile (w4a8-fp's default 32: the K tile stays 128, and each word's fp16 pairs are multiplied by their
group's factor, one HMUL2 per pair, exact: powers of two).
Decided: the layout depends on BK (the thread/fragment mapping is per tile); BK divides the group, so a
tile reads one scale per row and the kernel scales its partial accumulator, not each weight.
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import Tensor

from fxforge.ir import formats

DECODE_ROWS = 16  # the most rows a decode-shaped linear has (the decode kernel's x tile: 16 columns of the MMA)
_LAYOUT = re.compile(r"^(i4|f4)w(32|64|128)(k4)?(x)?$|^f4w128e$")
FORMATS = {"i4": "i4", "f4": "f4e2m1"}  # layout prefix -> element format
FP4_BIAS = 14  # the f4w halves are E2M1 values times 2^-14
F8_BIAS = 6  # the f4w128e bytes are E2M1 values times 2^-6 as E4M3


def layout_params(layout: str) -> tuple[int, int, bool]:
    """(BK, kWidth, x-permuted) of a decode layout name ("i4w128" -> (128, 2, False), "f4w64k4x" -> (64, 4, True));
    ValueError else."""
    m = _LAYOUT.match(layout)
    if m is None:
        raise ValueError(f"unknown weight layout {layout!r}; known: i4w32, i4w64, i4w128 and f4w32, f4w64, f4w128, "
                         "each with an optional k4 then x suffix, and f4w128e")
    if fp8_operand(layout):
        return 128, 4, False
    return int(m.group(2)), 4 if m.group(3) else 2, bool(m.group(4))


def fp8_operand(layout: str | None) -> bool:
    """Whether a decode layout is the FP8-MMA one ("f4w128e": FP4 codes placed for E4M3 operand bytes, the sm_90
    decode kernel `qlinear_decode_f8`)."""
    return bool(layout) and layout.endswith("e")


def layout_format(layout: str) -> str:
    """The element format of a decode layout ("i4" or "f4e2m1")."""
    layout_params(layout)
    return FORMATS[layout[:2]]


def layout_name(bk: int, kw: int = 2, fmt: str = "i4", xperm: bool = False, fp8: bool = False) -> str:
    if fp8:
        return "f4w128e"
    prefix = next(k for k, v in FORMATS.items() if v == fmt)
    return f"{prefix}w{bk}" + ("k4" if kw == 4 else "") + ("x" if xperm else "")


def preferred_operand(arch: int | None, triton_version: tuple[int, int]) -> tuple[int, bool]:
    """(kWidth, x-permuted) of the decode layout to store for sm_`arch` with this Triton (None: no GPU known, the
    sm_90 choice). kWidth is what Triton gives the kernel's fp16 MMA operands (measured: 4 with Triton 3.6 on
    sm_80, 2 with 3.9 and on sm_90). x-permuted: the kernel reads x's K in an order that gives each thread its
    B-fragment pairs as contiguous halves; it removes ~120 register moves per iteration on sm_80 with 3.6 and
    ~40 instructions of the narrow-group FP4 loop on sm_90, but costs 3.9's ldmatrix on sm_80 (+19). Only speed
    depends on it: the kernel reads every layout correctly on any GPU (`benchmarks/qdecode_sass.py`)."""
    if arch is None or arch >= 90:
        return 2, True
    return (4, True) if triton_version < (3, 9) else (2, False)


def decode_tile(group: int, K: int) -> int | None:
    """The K tile (32..128) a decode layout of this group can use: a power of two dividing the group
    (group 0: the row), None when none >= 32 does (odd groups keep the row-major layout)."""
    if group == 0:
        return 128
    bk = 128
    while bk >= 32 and group % bk:
        bk //= 2
    return bk if bk >= 32 else None


def fp4_tile(group: int) -> int | None:
    """The K tile of an "f4w" layout: 128 whenever the group is a multiple of 32 (a word's 8 weights lie in one
    32-column block, so a group narrower than the tile scales the decoded weights, "s16"), else `decode_tile`'s."""
    return 128 if group % 32 == 0 else decode_tile(group, 0)


def _slot_columns(bk: int, kw: int, xperm: bool = False, fp8: bool = False) -> Tensor:
    """[bk/8, 8] tile column of each (word, slot) for an MMA operand of kWidth `kw` (2 or 4); `xperm`: the true K
    column of the MMA's column (the kernel reads x in that order, `_x_order`); `fp8`: the "f4w128e" map (word j =
    4q + g, slot e = 4h + b: column 32g + 16h + 4q + b, the bytes thread q of a wgmma E4M3 A fragment holds for
    K block g)."""
    if fp8:
        j, e = torch.arange(16)[:, None], torch.arange(8)[None, :]
        return 32 * (j % 4) + 16 * (e // 4) + 4 * (j // 4) + e % 4
    p_n = bk // 32
    j = torch.arange(bk // 8)
    c, p = (j // p_n)[:, None], (j % p_n)[:, None]
    e = torch.arange(8)[None, :]
    if kw == 4:  # a thread holds 4 consecutive columns per K16 step
        cols = 32 * p + 16 * (e // 4) + 4 * c + 2 * ((e // 2) % 2) + (e % 2)
    else:
        cols = 32 * p + 16 * (e // 4) + 8 * ((e // 2) % 2) + 2 * c + (e % 2)
    return _x_order(cols, kw) if xperm else cols


def _x_order(col: Tensor, kw: int) -> Tensor:
    """True K column of MMA column `col` in an x-permuted layout: a thread's B-fragment halves (b0, b1) of an MMA
    are contiguous in x. kWidth 4: MMA column 32p + 16h + 4t + 2s + j (b_h of K16 step s of thread t) is true
    column 32p + 8t + 4s + 2h + j; kWidth 2: 16q + 8h + 2t + j is 16q + 4t + 2h + j."""
    if kw == 4:
        p, r = col // 32, col % 32
        return 32 * p + 8 * ((r // 4) % 4) + 4 * ((r // 2) % 2) + 2 * (r // 16) + r % 2
    q, r = col // 16, col % 16
    return 16 * q + 4 * ((r // 2) % 4) + 2 * (r // 8) + r % 2


_NIBBLE = [e // 2 + 4 * (e % 2) for e in range(8)]
# word bit of code bit b (0..3) of slot e: int4 nibbles; fp4 magnitude bits MAG[e].. and sign bit SIGN[e]
_MAG, _SIGN = (9, 25, 1, 17, 12, 28, 4, 20), (15, 31, 7, 23, 8, 24, 0, 16)
BIT_POSITIONS = {
    "i4": torch.tensor([[4 * _NIBBLE[e] + b for b in range(4)] for e in range(8)]),
    "f4e2m1": torch.tensor([[_MAG[e], _MAG[e] + 1, _MAG[e] + 2, _SIGN[e]] for e in range(8)]),
    # "f4w128e": slot 4h + b in byte b; h = 0 at E4M3's bits (m 2, e0 3, e1 4, sign 7): `w & 0x9C9C9C9C`; h = 1 at
    # bits 0, 1, 6, 5: `((w & 0x23232323) << 2) | ((w >> 2) & 0x10101010)` (`qlinear_decode_f8`)
    "f4e2m1e": torch.tensor([[8 * b + p for p in ((2, 3, 4, 7), (0, 1, 6, 5))[e // 4]] for e in range(8)
                             for b in [e % 4]]),
}


_P = 0x8E8E8E8E  # the f4w word's directly placed bits (each byte's 1-3 and 7)


def _f4_xor(plain: Tensor) -> Tensor:
    """An "f4w" word (int64 holding 32 bits) from its plain placement (slots 4-7 at P's complement, where
    ((plain >> 3) & 0x0E0E0E0E) | ((plain << 7) & 0x80808080) moves them onto P): the word w with the same P bits
    whose ((w >> 3) ^ (w << 7)) & P is that. Solved bit by bit: w's bits 4, 5 of byte j are slot bits XOR z1's
    bits 2, 3 of byte j - 1; bit 6 XOR bit 4 of byte j - 1 (just solved); bit 0 XOR z1's bit 2 of byte j + 1."""
    z1 = plain & _P
    z2 = ((plain >> 3) & 0x0E0E0E0E) | ((plain << 7) & 0x80808080)
    a = ((z2 & 0x06060606) << 3) ^ ((z1 & 0x000C0C0C) << 10)
    b = ((z2 & 0x08080808) << 3) ^ ((a & 0x00101010) << 10)
    c = ((z2 & 0x80808080) >> 7) ^ ((z1 & 0x04040400) >> 10)
    return z1 | a | b | c


def f4_plain(words: Tensor) -> Tensor:
    """The plain placement (`BIT_POSITIONS["f4e2m1"]`) of "f4w" words (int64 holding 32 bits): `_f4_xor` undone."""
    w = words & 0xFFFFFFFF
    z2 = ((w >> 3) ^ (w << 7)) & _P
    return (w & _P) | ((z2 & 0x0E0E0E0E) << 3) | ((z2 & 0x80808080) >> 7)


def shuffle_words(codes: Tensor, bk: int, pad_code: Tensor, kw: int = 2, fmt: str = "i4", xperm: bool = False,
                  fp8: bool = False) -> Tensor:
    """Row-major codes [N, K] (uint8 0..15) -> int32 words [N, Kp/8] of the decode layout of `fmt` with tile
    `bk` (`fp8`: "f4w128e"); `pad_code` [N] fills the columns past K."""
    n, k = codes.shape
    kp = -(-k // bk) * bk
    full = pad_code.to(torch.int64)[:, None].expand(n, kp).clone()
    full[:, :k] = codes.to(torch.int64)
    tiles = full.reshape(n, kp // bk, bk)[:, :, _slot_columns(bk, kw, xperm, fp8)]  # [N, T, bk/8, 8]
    bits = (tiles[..., None] >> torch.arange(4)) & 1  # [N, T, bk/8, 8, 4]
    words = (bits << BIT_POSITIONS[fmt + ("e" if fp8 else "")]).sum((-1, -2))  # disjoint bits: the sum is an OR
    if fmt == "f4e2m1" and not fp8:
        words = _f4_xor(words)
    return _wrap_i32(words).reshape(n, kp // 8)


def _wrap_i32(v: Tensor) -> Tensor:
    """int64 values in [0, 2^32) -> the int32 with the same bits."""
    return (v - ((v >> 31) << 32)).to(torch.int32)


def unshuffle_words(words: Tensor, k: int, bk: int, kw: int = 2, fmt: str = "i4", xperm: bool = False,
                    fp8: bool = False) -> Tensor:
    """int32 words of a decode layout -> row-major codes [N, k] (uint8)."""
    n = words.shape[0]
    w = words.to(torch.int64) & 0xFFFFFFFF
    if fmt == "f4e2m1" and not fp8:
        w = f4_plain(w)
    w = w.reshape(n, -1, bk // 8, 1, 1)
    slots = (((w >> BIT_POSITIONS[fmt + ("e" if fp8 else "")]) & 1) << torch.arange(4)).sum(-1)  # [N, T, bk/8, 8]
    out = torch.empty(n, w.shape[1], bk, dtype=torch.int64)
    out[:, :, _slot_columns(bk, kw, xperm, fp8)] = slots
    return out.reshape(n, -1)[:, :k].to(torch.uint8)


def _f16_bits(x: Tensor) -> Tensor:
    return x.to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF


def zero_pairs(zero: Tensor) -> Tensor:
    """uint8 zero points [N, G] -> int32 [N, G, 2]: fp16x2 bits of (1024 + z) and of -(64 + z)."""
    z = zero.to(torch.float32)
    pairs = torch.stack([_f16_bits(1024 + z), _f16_bits(-(64 + z))], -1)
    return _wrap_i32(pairs * 0x10001)


def to_decode_layout(weight, bk: int | None = None, kw: int = 2, xperm: bool = False, fp8: bool = False):
    """A w4a16-int4 or w4a8-fp `Weight` in its decode layout ("i4w{bk}" / "f4w{bk}", +"k4" for kw=4, +"x" x-permuted; bk:
    `decode_tile` by default; `fp8`: "f4w128e" for a w4a8-fp weight whose groups are multiples of 32, else ignored); the
    weight itself when it already has that layout. ValueError when the group admits no decode tile or the weight is
    of another scheme."""
    enc, p = weight.encoding, weight.payload
    int4 = enc.format == "i4" and enc.zero_point
    if not int4 and not (enc.format == "f4e2m1" and "shift" in p):
        raise ValueError(f"decode layouts hold w4a16-int4 (asymmetric int4) or w4a8-fp (FP4 codes with pow2 group "
                         f"shifts) weights, not {enc!r}")
    codes = codes_of(weight)
    n, k = codes.shape
    fp8 = fp8 and not int4 and enc.group % 32 == 0
    bk = 128 if fp8 else bk or (decode_tile(enc.group, k) if int4 else fp4_tile(enc.group))
    if bk is None or (enc.group and enc.group % bk and (int4 or enc.group % 32)):
        raise ValueError(f"group {enc.group} has no power-of-two K tile >= 32 dividing it; keep the row-major layout")
    name = layout_name(bk, kw, enc.format, xperm, fp8)
    if enc.layout == name:
        return weight
    if int4:
        zero = p["zero"]
        payload = {"words": shuffle_words(codes, bk, zero[:, -1], kw, xperm=xperm), "zz": zero_pairs(zero), "scale": p["scale"],
                   "zero": zero, "scale32": p["scale"].to(torch.float32).contiguous()}
    else:  # fp4: code 0 is +0; a group's factor 2^(14 - k) (f4w128e: 2^(6 - k); exact in f32: k <= 8)
        shift = p["shift"]
        factor = torch.ldexp(torch.ones(shift.shape), (F8_BIAS if fp8 else FP4_BIAS) - shift.to(torch.int32))
        payload = {"words": shuffle_words(codes, bk, torch.zeros(n, dtype=torch.uint8), kw, "f4e2m1", xperm, fp8),
                   "scale": p["scale"], "shift": shift, "scale32": factor.contiguous()}
        if not fp8:  # the fp16 kernel's factors for groups narrower than the tile
            payload["s16"] = factor.to(torch.float16).contiguous()
    return type(weight)(weight.data, dataclasses.replace(enc, layout=name), payload)


def codes_of(weight) -> Tensor:
    """Row-major codes [N, K] (one per element, uint8) of a 4-bit weight in any layout."""
    enc, p = weight.encoding, weight.payload
    if not enc.layout:
        return formats.unpack_nibbles(p["codes"])
    bk, kw, xperm = layout_params(enc.layout)
    return unshuffle_words(p["words"], weight.data.shape[1], bk, kw, layout_format(enc.layout), xperm,
                           fp8_operand(enc.layout))
