"""Is there an FP4 (E2M1) decode of one int32 word into four fp16x2 registers in 7 instructions or fewer? (issue #13:
the sm_80 w4a8-fp group-32 batch 9-16 cell; `qlinear_decode_dequant`.)

Each output register holds two halves whose bits 15 (sign) and 11..9 (magnitude) carry a code and whose other bits
are zero: out_k = M & f_k(w) with M = 0x8E008E00, the last instruction of each output a LOP3 with M (4 of them). The
codes may be stored in any bits of w (the layout is chosen at compile time), also XOR-encoded (shifts, funnels,
rotates and LOP3's XOR are linear over GF(2): a layout is the inverse of an invertible 32 x 32 bit matrix). Searched:
- `linear`: two shift-type values v1, v2 (shl / shr / rotate of w by 1..31) and four masked XORs of {w, v1, v2}:
  a 6-instruction decode exists iff some choice has a 32 x 32 matrix of full rank over GF(2);
- `tiling`: three shift-type instructions (shl / shr / rotate, and funnel shifts of two earlier values, which give
  each output bit its own source) and four masks, each output bit one stored bit: a 7-instruction decode exists iff
  the four values' M bits read 32 distinct stored bits.
Both find none. 8-instruction decodes exist (`eight`): the codes' bits z1 = w & P and z2 = P & ((w >> a) ^ (w << b))
with P = 0x8E8E8E8E (two shifts, two LOP3s) read all 32 stored bits for (a, b) = (2, 1), (3, 2), (3, 7), (4, 3), and
four byte permutes place z1's and z2's bytes into the halves' high bytes: one instruction fewer than the plain
placement's 9 (the select of w >> 3 and w << 7 and its mask are one LOP3 as an XOR). Session 19 built (3, 7): the "f4w"
layouts are XOR-encoded that way (`weight_layouts._f4_xor`). FP4 placement then costs 1 per weight, beside the group
factor's 0.5 (one HMUL2 per decoded pair at 16 columns) and the MMA's 0.25; the cell reaches 1.94 with 4 K tiles an
iteration (loads and addresses paid once per 4 tiles).

    python benchmarks/fp4_decode_search.py
"""

from __future__ import annotations

import itertools

import numpy as np

M = 0x8E008E00
SLOTS = [p for p in range(32) if M >> p & 1]
W = tuple(range(32))  # a value: for each bit, the stored bit it reads (-1: zero)


def shifts(x: tuple) -> list[tuple]:
    out = []
    for s in range(1, 32):
        out += [tuple(x[p - s] if p >= s else -1 for p in range(32)), tuple(x[p + s] if p + s < 32 else -1
                                                                          for p in range(32)),
                tuple(x[(p - s) % 32] for p in range(32))]
    return out


def funnels(a: tuple, b: tuple) -> list[tuple]:
    """shf.r (b:a) >> s and shf.l ((b:a) << s) >> 32 for s in 1..31."""
    return [v for s in range(1, 32) for v in (tuple(a[p + s] if p + s < 32 else b[p + s - 32] for p in range(32)),
                                              tuple(b[p - s] if p >= s else a[p - s + 32] for p in range(32)))]


def _matrix(v: tuple) -> np.ndarray:
    m = np.zeros((8, 32), np.uint8)
    for i, p in enumerate(SLOTS):
        if v[p] >= 0:
            m[i, v[p]] = 1
    return m


def _rank(a: np.ndarray) -> int:
    a, r = a.copy(), 0
    for c in range(a.shape[1]):
        pivot = next((i for i in range(r, a.shape[0]) if a[i, c]), None)
        if pivot is None:
            continue
        a[[r, pivot]] = a[[pivot, r]]
        for i in range(a.shape[0]):
            if i != r and a[i, c]:
                a[i] ^= a[r]
        r += 1
    return r


def linear() -> int:
    found, one = 0, _matrix(W)
    for v1, v2 in itertools.combinations(shifts(W), 2):
        a, b = _matrix(v1), _matrix(v2)
        options = [one, a, b, one ^ a, one ^ b, a ^ b]
        found += sum(_rank(np.concatenate(pick)) == 32 for pick in itertools.combinations(options, 4))
    return found


def tiling() -> int:
    def slots(v: tuple) -> set | None:
        s = {v[p] for p in SLOTS}
        return None if -1 in s or len(s) < 8 else s

    found, base, of_w = 0, slots(W), shifts(W)
    for v1 in of_w:
        s1 = slots(v1)
        if s1 is None or s1 & base:
            continue
        for v2 in of_w + shifts(v1) + funnels(W, v1) + funnels(v1, W):
            s2 = slots(v2)
            if s2 is None or s2 & (base | s1):
                continue
            vals = (W, v1, v2)
            for v3 in [x for v in vals for x in shifts(v)] + [x for a in vals for b in vals if a is not b
                                                               for x in funnels(a, b)]:
                s3 = slots(v3)
                found += s3 is not None and not s3 & (base | s1 | s2)
    return found


def eight() -> list[tuple[int, int]]:
    """(a, b) for which w & P and P & ((w >> a) ^ (w << b)) together read all 32 stored bits (P = 0x8E8E8E8E)."""
    bits = [p for p in range(32) if 0x8E8E8E8E >> p & 1]

    def rows(sources) -> np.ndarray:
        m = np.zeros((16, 32), np.uint8)
        for i, p in enumerate(bits):
            for q in sources(p):
                if 0 <= q < 32:
                    m[i, q] ^= 1
        return m

    z1 = rows(lambda p: [p])
    return [(a, b) for a in range(1, 32) for b in range(1, 32)
            if _rank(np.concatenate([z1, rows(lambda p: [p + a, p - b])])) == 32]


if __name__ == "__main__":
    print(f"6-instruction GF(2)-linear decodes (2 shifts + 4 masked XORs): {linear()}")
    print(f"7-instruction single-bit decodes (3 shift/rotate/funnel + 4 masks): {tiling()}")
    print(f"8-instruction byte-permute decodes, (a, b) of z2 = P & ((w >> a) ^ (w << b)): {eight()}")
