"""One K tile of the 4-bit decode GEMM (`qlinear_decode`, whose module notes say how and why): x's tile in the
MMA's column order, the tile's words decoded into the MMA's A operand, the group scales. The kernel's K loop runs
`k_tile` UNROLL times an iteration; `tile_parts` splits the iteration's group factors among its tiles."""

from __future__ import annotations

import triton
import triton.language as tl

from fxforge.codegen.templates.qlinear_decode_dequant import (
    dequant_asm,
    dequant_f4,
    dequant_f4_portable,
    dequant_f4s_asm,
    dequant_portable,
)
from fxforge.codegen.templates.qlinear_decode_fuse import block_factors, group_factors, quarters


@triton.jit
def _operand(v, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, KW: tl.constexpr):
    """The MMA's A operand [BLOCK_N, BLOCK_K] from a word tile's 8 decoded slots (`v`, each [BLOCK_N, BLOCK_K / 8]):
    slot e of word j = c * (BLOCK_K/32) + p is tile column 32p + 16(e//4) + 8((e//2)%2) + 2c + e%2 (kWidth 4:
    32p + 16(e//4) + 4c + 2((e//2)%2) + e%2); `weight_layouts` put each thread's weights there, so the permute only
    names the mapping."""
    v0, v1, v2, v3, v4, v5, v6, v7 = v
    h = tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))
    h = tl.reshape(h, (BLOCK_N, 4, BLOCK_K // 32, 2, 2, 2))
    if KW == 2:
        h = tl.permute(h, (0, 2, 3, 4, 1, 5))
    else:
        h = tl.permute(h, (0, 2, 3, 1, 4, 5))
    return tl.reshape(h, (BLOCK_N, BLOCK_K))


@triton.jit
def _x_perm(a, XP: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """x^T tile [BLOCK_K, BLOCK_M] in the MMA's column order of an x-permuted layout (`weight_layouts._x_order`)."""
    if XP == 4:  # MMA column 32p + 16h + 4t + 2s + j is x's true column 32p + 8t + 4s + 2h + j
        a = tl.reshape(tl.permute(tl.reshape(a, (BLOCK_K // 32, 4, 2, 2, 2, BLOCK_M)), (0, 3, 1, 2, 4, 5)),
                       (BLOCK_K, BLOCK_M))
    elif XP == 2:  # MMA column 16q + 8h + 2t + j is true column 16q + 4t + 2h + j
        a = tl.reshape(tl.permute(tl.reshape(a, (BLOCK_K // 16, 4, 2, 2, BLOCK_M)), (0, 2, 1, 3, 4)),
                       (BLOCK_K, BLOCK_M))
    return a


@triton.jit
def _x_tile(x_ptr, a_off, block_of, offs_k, k_left, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, XP: tl.constexpr,
            PACK: tl.constexpr, EVEN_K: tl.constexpr):
    """x^T's K tile at x_ptr (`k_left` columns of K left; PACK: each column's own K block, `block_of`)."""
    if PACK and EVEN_K:
        a = tl.load(x_ptr + a_off, mask=block_of, other=0.0)
    elif PACK:
        a = tl.load(x_ptr + a_off, mask=block_of & (offs_k[:, None] < k_left), other=0.0)
    elif EVEN_K:
        a = tl.load(x_ptr + a_off)
    else:
        a = tl.load(x_ptr + a_off, mask=offs_k[:, None] < k_left, other=0.0)
    return _x_perm(a, XP, BLOCK_K, BLOCK_M)


@triton.jit
def _block_dot(acc, w, x_ptr, x_off, k_left, f, ASM: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_M: tl.constexpr, KW: tl.constexpr, XP: tl.constexpr, EVEN_K: tl.constexpr):
    """acc + (one 32-wide K block's words w [BLOCK_N, 4], decoded) @ (its x columns) * its group factor f [BLOCK_N]."""
    if EVEN_K:
        x = tl.load(x_ptr + x_off)
    else:
        x = tl.load(x_ptr + x_off, mask=tl.arange(0, 32)[:, None] < k_left, other=0.0)
    h = _operand(dequant_f4(w, ASM), BLOCK_N, 32, KW)
    return acc + tl.dot(h, _x_perm(x, XP, 32, BLOCK_M).to(tl.float16)) * f[:, None]


@triton.jit
def _block_dots(acc, w, x_ptr, x_off, s_row, k0, K, GROUP: tl.constexpr, ASM: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, KW: tl.constexpr, XP: tl.constexpr, EVEN_K: tl.constexpr,
                VEC_F: tl.constexpr):
    """acc + the K tile at k0 for groups narrower than it: each 32-wide K block (the words j = 4c + p of block p) is
    decoded and multiplied on its own, its product scaled by the block's group factor (an FFMA per accumulator
    element: BLOCK_M / 32 per weight) instead of each decoded pair (an HMUL2 per 2 weights). The factors load as
    [BLOCK_N, 4] once per tile."""
    f0, f1, f2, f3 = block_factors(s_row, k0, K, GROUP, BLOCK_N, not EVEN_K, VEC_F)
    w0, w1, w2, w3 = quarters(w, BLOCK_N, 4)
    k_left = K - k0
    acc = _block_dot(acc, w0, x_ptr, x_off, k_left, f0, ASM, BLOCK_N, BLOCK_M, KW, XP, EVEN_K)
    acc = _block_dot(acc, w1, x_ptr + 32, x_off, k_left - 32, f1, ASM, BLOCK_N, BLOCK_M, KW, XP, EVEN_K)
    acc = _block_dot(acc, w2, x_ptr + 64, x_off, k_left - 64, f2, ASM, BLOCK_N, BLOCK_M, KW, XP, EVEN_K)
    return _block_dot(acc, w3, x_ptr + 96, x_off, k_left - 96, f3, ASM, BLOCK_N, BLOCK_M, KW, XP, EVEN_K)


@triton.jit
def tile_parts(f, UNROLL: tl.constexpr):
    """An iteration's block factors [BLOCK_N, UNROLL * C] as its UNROLL tiles' [BLOCK_N, C], by register splits."""
    n: tl.constexpr = f.shape[0]
    c: tl.constexpr = f.shape[1] // UNROLL
    if UNROLL == 1:
        parts = (f,)
    elif UNROLL == 2:
        parts = tl.split(tl.permute(tl.reshape(f, (n, 2, c)), (0, 2, 1)))
    else:
        lo, hi = tl.split(tl.reshape(tl.permute(tl.reshape(f, (n, 4, c)), (0, 2, 1)), (n, c, 2, 2)))  # tile 2a + b
        f0, f2 = tl.split(lo)
        f1, f3 = tl.split(hi)
        parts = (f0, f1, f2, f3)
    return parts


@triton.jit
def k_tile(acc, t, fb, a_ptr, a_off, x_off, block_of, offs_k, w_ptr, w_off, zz_ptr, s_ptr, s_row, rows_n, stride_zn,
            stride_sn, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, KW: tl.constexpr,
            XP: tl.constexpr, GROUP: tl.constexpr, EVEN_K: tl.constexpr, ASM: tl.constexpr, FP4: tl.constexpr,
            WORD_FACTORS: tl.constexpr, PACK: tl.constexpr, BLOCK_DOTS: tl.constexpr, VEC_F: tl.constexpr):
    """acc + K tile t's product (module notes: the tile's words decoded, scaled per group, multiplied); WORD_FACTORS:
    `fb` [BLOCK_N, BLOCK_K / 32] are the tile's block factors, multiplied into the decoded weights."""
    w = tl.load(w_ptr + t * (BLOCK_K // 8) + w_off)
    if BLOCK_DOTS:  # groups narrower than the tile on 8 x columns: an MMA per 32-wide K block (module notes)
        acc = _block_dots(acc, w, a_ptr + t * BLOCK_K, x_off, s_row, t * BLOCK_K, K, GROUP, ASM, BLOCK_N,
                          BLOCK_M, KW, XP, EVEN_K, VEC_F)
    else:  # (one return: Triton's compiler would also generate the statements after an early one)
        acc = _tile_mma(acc, w, t, fb, a_ptr, a_off, block_of, offs_k, zz_ptr, s_ptr, s_row, rows_n, stride_zn,
                        stride_sn, K, BLOCK_N, BLOCK_K, BLOCK_M, KW, XP, GROUP, EVEN_K, ASM, FP4, WORD_FACTORS, PACK,
                        VEC_F)
    return acc


@triton.jit
def _tile_mma(acc, w, t, fb, a_ptr, a_off, block_of, offs_k, zz_ptr, s_ptr, s_row, rows_n, stride_zn, stride_sn, K,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, KW: tl.constexpr, XP: tl.constexpr,
              GROUP: tl.constexpr, EVEN_K: tl.constexpr, ASM: tl.constexpr, FP4: tl.constexpr,
              WORD_FACTORS: tl.constexpr, PACK: tl.constexpr, VEC_F: tl.constexpr):
    """`k_tile` on the whole tile: its words `w` decoded (group factors on them, WORD_FACTORS), one MMA, the tile's
    scales (or PACK's per-column factors) on the product."""
    g = (t * BLOCK_K) // GROUP
    a = _x_tile(a_ptr + t * BLOCK_K, a_off, block_of, offs_k, K - t * BLOCK_K, BLOCK_K, BLOCK_M, XP, PACK, EVEN_K)
    if WORD_FACTORS:  # groups narrower than the tile: each word's factor (word j = 4c + p: block p's) on its weights
        f = tl.reshape(tl.broadcast_to(fb[:, None, :], (BLOCK_N, 4, BLOCK_K // 32)), (BLOCK_N, BLOCK_K // 8))
        if ASM:
            v0, v1, v2, v3, v4, v5, v6, v7 = dequant_f4s_asm(w, f)
        else:
            v0, v1, v2, v3, v4, v5, v6, v7 = dequant_f4_portable(w)
            v0, v1, v2, v3, v4, v5, v6, v7 = v0 * f, v1 * f, v2 * f, v3 * f, v4 * f, v5 * f, v6 * f, v7 * f
    elif FP4:
        v0, v1, v2, v3, v4, v5, v6, v7 = dequant_f4(w, ASM)
    else:
        zz = tl.broadcast_to(tl.load(zz_ptr + rows_n * stride_zn + 2 * g)[:, None], w.shape)
        if ASM:
            zz16 = tl.broadcast_to(tl.load(zz_ptr + rows_n * stride_zn + 2 * g + 1)[:, None], w.shape)
            v0, v1, v2, v3, v4, v5, v6, v7 = dequant_asm(w, zz, zz16)
        else:
            v0, v1, v2, v3, v4, v5, v6, v7 = dequant_portable(w, zz)
    h = _operand((v0, v1, v2, v3, v4, v5, v6, v7), BLOCK_N, BLOCK_K, KW)
    if PACK:  # column c holds K block c % 4's partial sum: its group factor per row
        f = group_factors(s_row, t * BLOCK_K, K, GROUP, BLOCK_N, BLOCK_K, not EVEN_K, VEC_F)
        d = tl.reshape(tl.dot(h, a.to(tl.float16)), (BLOCK_N, BLOCK_M // 4, 4))
        acc += tl.reshape(d * f[:, None, :], (BLOCK_N, BLOCK_M))
    elif WORD_FACTORS:
        acc = tl.dot(h, a.to(tl.float16), acc)
    else:
        s = tl.load(s_ptr + rows_n * stride_sn + g)
        acc += tl.dot(h, a.to(tl.float16)) * s[:, None]
    return acc
