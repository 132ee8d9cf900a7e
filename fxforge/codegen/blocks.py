"""Block sizes and launch parameters for the codegen templates: the ONE place they are chosen.

Every template launcher (and the build check) asks this module for its tile shape, so a later cost
model replaces these small heuristics without touching any kernel:
- `gemm_blocks(M, N, K, dtype, arch)` for `templates.gemm` (linear, matmul; decode shapes from the
  `DECODE_GEMM` table by M bucket, N, K and arch),
- `decode_split(tile, N, k_tiles, arch)`: split-K of the 4-bit decode GEMV, `templates.qlinear_decode.decode_blocks`'
  last step; `gemv_split` is the split rule both decode tables share (>= 2 CTAs per SM, `SM_COUNT`),
- `attention_blocks(Lq, Lk, D, dtype, masked)` for `templates.attention`,
- `row_blocks(n_cols)` for row-wise kernels (norms, softmax, pointwise rows).
Rules: tile dims are powers of two and at least 16 (the smallest `tl.dot` tile real GPUs accept),
clamped to the problem so tiny problems do not waste work. The limits were checked against ptxas for
sm_80 and sm_90 (`tests/codegen/test_build.py`): no register spills, shared memory within limits.
fp32 GEMMs use smaller tiles because fp32 dots run as exact fp32 FMA (no tf32), which costs registers.
"""

from __future__ import annotations

import torch


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _clamp_pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, next_pow2(n)))


def _itemsize(dtype) -> int:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return dtype.itemsize  # no tensor made: launchers run inside an allocation-free run()


# Streaming multiprocessors per architecture (the CTA count a decode GEMV should cover twice).
SM_COUNT = {80: 108, 86: 84, 89: 128, 90: 132, 100: 148, 120: 84}
# Decode-shaped GEMMs, one table: (largest M of the bucket, BLOCK_M, widest BLOCK_N, BLOCK_K cap, warps).
# M <= 16 is a GEMV in all but name: one 16-row tile, BLOCK_N shrunk (to 16 at the least) until the
# grid puts >= 2 CTAs on every SM, and a long BLOCK_K so each CTA streams its weight rows in few steps.
# When BLOCK_N = 16 still leaves fewer than 2 CTAs per SM (N = 512..2048: o_proj, down_proj), the M <= 16
# row splits K across SPLIT_K programs per tile (`templates.gemm`: fp32 partials, the tile's last split
# sums them in split order and runs the epilogue): each split keeps >= MIN_SPLIT_TILES BLOCK_K steps.
DECODE_GEMM = ((16, 16, 64, 128, 4), (64, 64, 64, 64, 4))
SPLIT_K_ROWS = 16  # the M bucket that splits K (a GEMV in all but name)
MAX_SPLIT_K, MIN_SPLIT_TILES = 16, 4


def split_steps(k_tiles: int, splits: int, unit: int = 1) -> tuple[int, int]:
    """(K steps per split, splits launched) for `splits` wanted: balanced, none empty (launched <= wanted), the
    steps per split a multiple of `unit` (the 4-bit decode kernel's splits start on a quantization group).
    The GEMM launchers and the tables all count this way."""
    per = -(-k_tiles // max(1, min(splits, k_tiles)))
    per = -(-per // unit) * unit
    return per, -(-k_tiles // per)


def split_k(tiles: int, k_tiles: int, ctas: int, min_steps: int = MIN_SPLIT_TILES) -> int:
    """Splits of a K loop of `k_tiles` steps so that `tiles` output tiles make >= `ctas` programs (1: none
    needed, or K too short for `min_steps` steps a split); the smallest balanced count that reaches
    it (or the cap)."""
    cap = min(MAX_SPLIT_K, k_tiles // min_steps)
    need = min(-(-ctas // max(tiles, 1)), cap)
    if tiles >= ctas or need <= 1:
        return 1
    return next((n for s in range(need, cap + 1) if (n := split_steps(k_tiles, s)[1]) >= need), need)


def gemv_ctas(arch: int) -> int:
    """The programs a decode GEMV should launch on sm_`arch`: two per SM."""
    return 2 * SM_COUNT.get(arch, 132)


def gemv_split(tiles: int, k_tiles: int, arch: int | None, min_steps: int = MIN_SPLIT_TILES) -> int:
    """K splits of an M <= 16 GEMM of `tiles` output tiles and `k_tiles` K steps on sm_`arch` (`split_k` towards
    `gemv_ctas`); 1 without an arch (the interpreter: tests force splits)."""
    return 1 if arch is None else split_k(tiles, k_tiles, gemv_ctas(arch), min_steps)


# The 4-bit decode GEMV (`templates.qlinear_decode`): its K steps are 128 wide (the layout's tile, 64 bytes of a
# weight row); a split keeps >= 2 of them. The tile is the kernel's own choice (`decode_blocks`): halving it to
# make room for more splits cost more per weight than the splits save (Triton 3.6, sm_90, int4 g128, 4096 x 4096:
# 256 x 16 on 4 warps 1.91-1.96 per weight; 128 x 16 on 4 warps 2.20, on 2 warps 3.38), so where even the most
# splits cannot give 2 CTAs per SM (that tile: 16 tiles x 16 splits = 256 CTAs on 132 SMs) the most are taken.
DECODE_SPLIT_STEPS = 2


def decode_split(tile: dict, N: int, k_tiles: int, arch: int | None) -> dict:
    """`tile` (the 4-bit decode kernel's config at M <= 16: one program row, BLOCK_N rows per program, UNROLL K steps
    an iteration) with SPLIT_K for a weight of N rows and `k_tiles` K steps (`gemv_split`, >= DECODE_SPLIT_STEPS
    steps a split), counted in iterations: each split a multiple of UNROLL steps."""
    unit = tile["UNROLL"]
    steps = max(1, -(-DECODE_SPLIT_STEPS // unit))
    return dict(tile, SPLIT_K=gemv_split(-(-N // tile["BLOCK_N"]), k_tiles // unit, arch, steps))


def decode_gemm_blocks(M: int, N: int, K: int, arch: int) -> dict | None:
    """The decode table's config for a 16-bit GEMM of M <= 64 rows on `arch` (sm number), else None."""
    for m_max, bm, bn_max, bk_cap, warps in DECODE_GEMM:
        if M <= m_max:
            bn, ctas = bn_max, gemv_ctas(arch)
            while bn > 16 and -(-N // bn) * -(-M // bm) < ctas:
                bn //= 2
            bk = _clamp_pow2(K, 16, bk_cap)
            split = gemv_split(-(-N // bn) * -(-M // bm), -(-K // bk), arch) if m_max <= SPLIT_K_ROWS else 1
            return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=4 if K >= 4 * bk else 2,
                        SPLIT_K=split)
    return None


def gemm_blocks(M: int, N: int, K: int, dtype, arch: int | None = None) -> dict:
    """Tile shape and launch parameters for a GEMM out[M, N] = A[M, K] @ B[K, N] of element `dtype`.

    `arch` (sm number, e.g. 90): the GPU the kernel runs on; a 16-bit GEMM of few rows then takes the
    decode table (`decode_gemm_blocks`, split-K included). None (the interpreter, or unknown) keeps the
    general rule, whose bigger tiles also keep interpreted programs few, and one split.
    Returns dict(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT_K).
    """
    wide = _itemsize(dtype) >= 4
    decode = decode_gemm_blocks(M, N, K, arch) if arch is not None and not wide else None
    if decode is not None:
        return decode
    if wide:  # exact fp32 (FMA) dot: keep the accumulator and operand tiles small
        bm, bn, bk = _clamp_pow2(M, 16, 64), _clamp_pow2(N, 16, 64), _clamp_pow2(K, 16, 32)
    else:  # a 16-row tile takes BLOCK_N <= 64: at 128 the erf-GELU epilogue spilled 8 B on sm_80
        bm, bk = _clamp_pow2(M, 16, 128), _clamp_pow2(K, 16, 64)
        bn = _clamp_pow2(N, 16, 64 if bm <= 16 else 128)
    num_warps = 8 if (wide and bm * bn >= 64 * 64) or bm * bn >= 128 * 128 else 4
    num_stages = 3 if K > bk else 2
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=num_warps, num_stages=num_stages, SPLIT_K=1)


def attention_blocks(Lq: int, Lk: int, D: int, dtype, masked: bool = False, dv: int | None = None) -> dict:
    """Tile shape for flash attention: queries per program, keys per step, padded head dim.

    `masked`: the kernel also loads a [BLOCK_M, BLOCK_N] mask tile (bool or additive).
    Returns dict(BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, num_warps, num_stages). BLOCK_D is D rounded up to a
    power of two (>= 16), BLOCK_DV v's head dim `dv` (default D) likewise; the kernel masks the padding. The
    tile caps read the wider of the two.
    Spill limits measured with ptxas (`tests/codegen/test_build.py`'s size sweep, Triton 3.6 and 3.9):
    a masked 16-bit attention takes BLOCK_N 32 (at 64 the mask tile spilled 8 B at D=128 on sm_90 with
    3.6, and 64-208 B at D=16/24 on sm_80). fp32 (a correctness path: fast attention runs in 16 bits) takes
    16 queries x 16 keys on 8 warps, 2 stages, at every head dim: spill-free at D=16..128 with every mask
    kind, causal or not, on sm_80 and sm_90 with both Triton 3.6.0 and 3.9.0 (spill stores read from ptxas).
    On 4 warps every stage count spilled 4-16 B somewhere (D=16 masked on sm_80, D=32/48 on one version
    or the other); 32x32, 32x16 and 16x32 tiles spilled 8-808 B.
    """
    bd, bdv = _clamp_pow2(D, 16, 256), _clamp_pow2(dv or D, 16, 256)
    wide = _itemsize(dtype) >= 4
    cap_m = 16 if wide else 64 if max(bd, bdv) > 64 else 128
    cap_n = 16 if wide else 32 if masked else 64
    bm = _clamp_pow2(Lq, 16, cap_m)
    bn = _clamp_pow2(Lk, 16, cap_n)
    num_warps = 8 if wide or ((bm >= 128 or max(bd, bdv) > 64) and bm * bn >= 64 * 32) else 4
    num_stages = 2
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DV=bdv, num_warps=num_warps, num_stages=num_stages)


def decode_attention_blocks(programs: int, group: int, Lk: int, D: int, dtype, arch: int | None,
                            masked: bool = False, dv: int | None = None) -> dict:
    """Flash-decoding (`templates.decode_attention`): `programs` = batch * kv heads, `group` query heads per kv head
    packed as the tile's rows. Returns dict(BLOCK_G, BLOCK_N, BLOCK_D, BLOCK_DV, splits, num_warps, num_stages)
    (BLOCK_DV: v's head dim `dv`, default D; the caps read the wider): splits of >= 256 keys until programs * splits
    covers the SMs twice (1 without an arch: the interpreter). fp32 keeps 16-key tiles (as fp32 attention: larger
    tiles spilled); 16-bit tiles hold at most 8192 keys x head dims, 4096 with a mask tile (64 keys spilled 4-12 B
    at a masked D=128 on sm_80 with Triton 3.6, 72-128 B at D=256 (Gemma2), 44 B at an unmasked D=256); D=256 on 8
    warps on sm_80 (on 4, 16 keys still spilled 4 B with Triton 3.9, which caps sm_80 at 168 registers) and 4 on
    sm_90 (8 spilled 20 B with 3.6)."""
    wide = _itemsize(dtype) >= 4
    bd, bdv = _clamp_pow2(D, 16, 256), _clamp_pow2(dv or D, 16, 256)
    wider = max(bd, bdv)
    bn = 16 if wide else max(16, min(64, 8192 // wider // (2 if masked else 1)))  # keys x head dim capped (spills)
    splits = 1
    if arch is not None:
        want = -(-2 * SM_COUNT.get(arch, 132) // max(programs, 1))
        splits = max(1, min(want, -(-Lk // 256)))
    return dict(BLOCK_G=_clamp_pow2(group, 16, 64), BLOCK_N=bn, BLOCK_D=bd, BLOCK_DV=bdv, splits=splits,
                num_warps=8 if wider >= 256 and (arch or 90) < 90 else 4, num_stages=2)


def row_blocks(n_cols: int) -> dict:
    """Launch parameters for a kernel that handles one row of `n_cols` elements per program.

    Returns dict(BLOCK=next power of two >= n_cols (>= 16), num_warps). Rows wider than 65536
    elements should loop over column tiles of BLOCK=65536 instead.
    """
    block = _clamp_pow2(n_cols, 16, 65536)
    num_warps = 1 if block <= 256 else 2 if block <= 1024 else 4 if block <= 4096 else 8 if block <= 16384 else 16
    return dict(BLOCK=block, num_warps=num_warps)


def qlinear_blocks(M: int, N: int, K: int, group: int = 0, dot: str = "fp16") -> dict:
    """Tile shape for the quantized GEMMs of `templates.qlinear` (weights decoded in the K loop).

    `group` is the weight's effective group along K (0: per output channel); `dot` the operand type
    of the kernel's `tl.dot` ("fp32", "fp16", "bf16", "int8", "fp8"). BLOCK_K is a power of two that
    divides the group when one of at least the dot's minimum K exists (so one K tile sees one scale
    per output channel); otherwise the kernel gathers a scale per element. 8-bit dots need BLOCK_K >= 32.
    Returns dict(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages).
    """
    wide = dot == "fp32"
    k_min = 32 if dot in ("int8", "fp8") else 16
    k_cap = 32 if wide else 128 if dot in ("int8", "fp8") else 64
    bm = _clamp_pow2(M, 16, 64 if wide else 128)
    bn = _clamp_pow2(N, 16, 64 if wide else 128)
    bk = _clamp_pow2(K, k_min, k_cap)
    if group > 0:
        g_pow2 = group & -group  # largest power of two dividing the group
        if g_pow2 >= k_min:
            bk = min(bk, g_pow2)
    num_warps = 8 if (wide and bm * bn >= 64 * 64) or bm * bn >= 128 * 128 else 4
    num_stages = 3 if K > bk else 2
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=num_warps, num_stages=num_stages)


def swiglu_blocks(cfg: dict) -> dict:
    """Blocks of the SwiGLU GEMM (`gemm_kernel` SWIGLU, two fp32 accumulators) from `gemm_blocks`' choice for
    its output: a tile over 128 x 64 halves BLOCK_N, so both accumulators take the registers one did
    (128 x 128 x 2 spilled 244 bytes per thread on sm_80). No split-K: SiLU needs the whole sums (and the
    gate/up GEMM is 2x as wide as the hidden size: it fills the GPU without)."""
    cfg = dict(cfg, SPLIT_K=1)
    if cfg["BLOCK_M"] * cfg["BLOCK_N"] > 128 * 64:
        return dict(cfg, BLOCK_N=cfg["BLOCK_N"] // 2)
    return cfg
