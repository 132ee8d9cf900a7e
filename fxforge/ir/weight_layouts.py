"""Decode layouts of 4-bit quantized weights: codes pre-shuffled at compile time for in-register dequantization.

This module owns what `Quantized.layout` means for the payload, both ways: `to_decode_layout(weight)`
re-encodes a row-major int4 `#quantized` weight (w4a16-int4) into the layout the decode kernels
(`fxforge.codegen.templates.qlinear_decode`) read, and `codes_of(weight)` gives the row-major codes back,
so `lowp_ops.decode_weight` (the reference semantics) is exact for either layout.

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
_LAYOUT = re.compile(r"^i4w(32|64|128)(k4)?$")


def layout_params(layout: str) -> tuple[int, int]:
    """(BK, kWidth) of a decode layout name ("i4w128" -> (128, 2), "i4w64k4" -> (64, 4)); ValueError else."""
    m = _LAYOUT.match(layout)
    if m is None:
        raise ValueError(f"unknown weight layout {layout!r}; known: i4w32, i4w64, i4w128, each with a k4 suffix")
    return int(m.group(1)), 4 if m.group(2) else 2


def layout_name(bk: int, kw: int = 2) -> str:
    return f"i4w{bk}" + ("k4" if kw == 4 else "")


def preferred_kwidth(arch: int | None, triton_version: tuple[int, int]) -> int:
    """The kWidth Triton gives the decode kernel's fp16 MMA operands (measured: 4 with Triton 3.6 on sm_80, 2 with
    3.9 and on sm_90), i.e. which layout ("i4w{BK}" or "i4w{BK}k4") to store for sm_`arch` (None: no GPU known,
    2). Only speed depends on it: the kernel reads either layout correctly on any GPU."""
    return 4 if arch is not None and arch < 90 and triton_version < (3, 9) else 2


def decode_tile(group: int, K: int) -> int | None:
    """The K tile (32..128) a decode layout of this group can use: a power of two dividing the group
    (group 0: the row), None when none >= 32 does (odd groups keep the row-major layout)."""
    if group == 0:
        return 128
    bk = 128
    while bk >= 32 and group % bk:
        bk //= 2
    return bk if bk >= 32 else None


def _slot_columns(bk: int, kw: int) -> Tensor:
    """[bk/8, 8] tile column of each (word, slot) for an MMA operand of kWidth `kw` (2 or 4)."""
    p_n = bk // 32
    j = torch.arange(bk // 8)
    c, p = (j // p_n)[:, None], (j % p_n)[:, None]
    e = torch.arange(8)[None, :]
    if kw == 4:  # a thread holds 4 consecutive columns per K16 step
        return 32 * p + 16 * (e // 4) + 4 * c + 2 * ((e // 2) % 2) + (e % 2)
    return 32 * p + 16 * (e // 4) + 8 * ((e // 2) % 2) + 2 * c + (e % 2)


_NIBBLE = torch.tensor([e // 2 + 4 * (e % 2) for e in range(8)])


def shuffle_words(codes: Tensor, bk: int, pad_code: Tensor, kw: int = 2) -> Tensor:
    """Row-major codes [N, K] (uint8 0..15) -> int32 words [N, Kp/8] of layout "i4w{bk}"; `pad_code` [N]
    fills the columns past K."""
    n, k = codes.shape
    kp = -(-k // bk) * bk
    full = pad_code.to(torch.int64)[:, None].expand(n, kp).clone()
    full[:, :k] = codes.to(torch.int64)
    tiles = full.reshape(n, kp // bk, bk)[:, :, _slot_columns(bk, kw)]  # [N, T, bk/8, 8]
    words = (tiles << (4 * _NIBBLE)).sum(-1)  # disjoint nibbles: the sum is an OR
    return _wrap_i32(words).reshape(n, kp // 8)


def _wrap_i32(v: Tensor) -> Tensor:
    """int64 values in [0, 2^32) -> the int32 with the same bits."""
    return (v - ((v >> 31) << 32)).to(torch.int32)


def unshuffle_words(words: Tensor, k: int, bk: int, kw: int = 2) -> Tensor:
    """int32 words of layout "i4w{bk}" -> row-major codes [N, k] (uint8)."""
    n = words.shape[0]
    w = words.to(torch.int64) & 0xFFFFFFFF
    w = w.reshape(n, -1, bk // 8, 1)
    slots = (w >> (4 * _NIBBLE)) & 0xF  # [N, T, bk/8, 8]
    out = torch.empty(n, w.shape[1], bk, dtype=torch.int64)
    out[:, :, _slot_columns(bk, kw)] = slots
    return out.reshape(n, -1)[:, :k].to(torch.uint8)


def _f16_bits(x: Tensor) -> Tensor:
    return x.to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF


def zero_pairs(zero: Tensor) -> Tensor:
    """uint8 zero points [N, G] -> int32 [N, G, 2]: fp16x2 bits of (1024 + z) and of -(64 + z)."""
    z = zero.to(torch.float32)
    pairs = torch.stack([_f16_bits(1024 + z), _f16_bits(-(64 + z))], -1)
    return _wrap_i32(pairs * 0x10001)


def to_decode_layout(weight, bk: int | None = None, kw: int = 2):
    """A w4a16-int4 `Weight` in layout "i4w{bk}" (+"k4" for kw=4; bk: `decode_tile` by default); the weight itself when
    it already has that layout. ValueError when the group admits no decode tile or the weight is not int4."""
    enc, p = weight.encoding, weight.payload
    if enc.format != "i4" or not enc.zero_point:
        raise ValueError(f"decode layouts hold asymmetric int4 weights (w4a16-int4), not {enc!r}")
    codes = codes_of(weight)
    n, k = codes.shape
    bk = bk or decode_tile(enc.group, k)
    if bk is None or (enc.group and enc.group % bk):
        raise ValueError(f"group {enc.group} has no power-of-two K tile >= 32 dividing it; keep the row-major layout")
    if enc.layout == layout_name(bk, kw):
        return weight
    zero = p["zero"]
    payload = {"words": shuffle_words(codes, bk, zero[:, -1], kw), "zz": zero_pairs(zero), "scale": p["scale"],
               "zero": zero, "scale32": p["scale"].to(torch.float32).contiguous()}
    return type(weight)(weight.data, dataclasses.replace(enc, layout=layout_name(bk, kw)), payload)


def codes_of(weight) -> Tensor:
    """Row-major codes [N, K] (one per element, uint8) of a 4-bit weight in any layout."""
    enc, p = weight.encoding, weight.payload
    if not enc.layout:
        return formats.unpack_nibbles(p["codes"])
    return unshuffle_words(p["words"], weight.data.shape[1], *layout_params(enc.layout))
