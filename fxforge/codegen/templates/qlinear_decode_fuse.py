"""The fusions at the two ends of the 4-bit decode GEMM (`qlinear_decode`): an RMSNorm and per-token E4M3
prologue and a SwiGLU epilogue, so a quantized decoder layer launches what a dense one does (issue #13 item 3).

This module owns the jit helpers the decode kernel calls (`prologue_rows`, `swiglu_pairs`), the
row kernel `rms_norm_rows_kernel`, and `prologue`, the launcher's part that decides where x is prepared.

- SWIGLU: the [gate; up] weight of `concat_linears` has its rows interleaved [g0, u0, g1, u1, ...] by the
  `decode_layout` pass (a row permutation of the row-major payload, before the decode layout is made: group
  scales and zero points move with their rows; the two slices of the IR become step-2 slices, so the reference
  semantics hold). A BLOCK_N tile of the accumulator then holds BLOCK_N/2 whole (gate, up) pairs:
  `swiglu_pairs` splits them in registers and returns act(gate) * up (act: silu, or GeGLU's GeLU) with the output's column offsets and
  mask (N/2 columns). fp32 throughout, as the dense GEMM's SwiGLU epilogue (`gemm.py` SWIGLU). The pair's two
  halves are taken by a masked sum over the pair axis (register-local): `tl.split` spilled 8 bytes in the w4a8-fp
  group-32 kernel on sm_80 with Triton 3.9.
- RMSNorm (HAS_NORM): the dense GEMM normalises each A tile as it loads it; the decode kernel's K loop is not
  touched (its loads are tuned for the in-register dequantization), so before the loop each program writes
  rms_norm(x) of its (at most 16) rows into its own scratch rows, [programs, M, K] fp16 from the pool's
  workspace, waits at a barrier (its own writes, read back by its own threads: no race between programs) and
  points the K loop's x at them. The steps are the row kernel's and the dense prologue's (fp32 sum of
  squares, scale, round to x's dtype, times the norm weight, round). Prefill tiles (M > 16, grid over N of
  64-row tiles) would each write M x K: they get one `rms_norm_rows_kernel` launch instead.
- POST_NORM (Gemma2/3, OLMo2: the consuming GEMM computes a post-norm block's z = res + rms_norm(h, w), the dense
  GEMM's `gemm_prologue` step, `passes/norm_prologues.py`): x is h; a pass over h takes its rms, the next computes
  z tile by tile (`post_z`), takes z's rms (HAS_NORM: Gemma's norm of z) and writes z into this split's K range of
  the scratch rows (and, in the first column tile, into z's buffer for the next residual add); the last pass reads
  z back in place. Prefill: `post_norm_rows` writes z first (one launch), then the steps below run on z.
- E4M3 (QUANT_X, w4a8-fp at M <= 16, which runs as W4A16 on the codes' values): the same prologue then
  quantizes each row per token as `act_quant_kernel` does (amax pass, s = amax / 448, IEEE division, the
  integer encoder `f32_to_fp8e4m3`: the same codes, bit for bit) and stores the codes' fp16 values and the
  row scales (scratch the epilogue reads as `rs_ptr`): no act_quant launch and no host decode of the codes.
  Prefill keeps `quantize_activations`. The prologue's loops are longer than the K loop in SASS:
  `sass.main_loop` takes the loop that issues MMAs (the K loop's count is unchanged: 455 on sm_90, 3.6).
Decisions:
- Scratch per program, not one shared [M, K]: programs writing the same bytes would be a (benign) race;
  a decode step's x is 1-16 rows, so grid_n x M x K fp16 is a few hundred KB at most.
- Split-K (`qlinear_decode` SPLIT_K): every split of a tile computes the row's rms and amax over the whole K (the
  same loops, so the same scale and codes, bit for bit, as without splits) and writes only its own K tiles of
  the tile's scratch rows (disjoint bytes, read back by the same program), and its own row scales.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.decode import fp8e4m3_to_f32
from fxforge.codegen.pool import Workspace, scratch
from fxforge.codegen.templates.act_quant import f32_to_fp8e4m3, quantize_activations
from fxforge.codegen.templates.gemm import apply_activation
from fxforge.codegen.templates.gemm_prologue import (
    POST_NORM_ROWS,
    post_norm_rows,
    post_z,
    prologue_stats,
    rms_scale,
    row_rstd,
)
from fxforge.codegen.templates.split_k import split_range
from fxforge.errors import ShapeError
from fxforge.ir import formats
from fxforge.ir.optable import GATED_ACTIVATIONS
from fxforge.ir.weight_layouts import DECODE_ROWS

PREFILL_ROWS = 64  # rows per program of `rms_norm_rows_kernel`
E4M3_MAX: tl.constexpr = tl.constexpr(formats.get_format("f8e4m3").max_value)
# the prologue's QUANT: x to E4M3 codes (w4a8-fp), or bf16 x to fp16 by power-of-two row scales (`f16_row_scale`)
E4M3_CODES: tl.constexpr = tl.constexpr(1)
F16_SCALED: tl.constexpr = tl.constexpr(2)


@triton.jit
def _row_tile(x_ptr, stride_xm, g_ptr, rstd, offs_m, ks, mask, K, HAS_NORM: tl.constexpr, pres_ptr, pw_ptr, h_rstd,
              POST_NORM: tl.constexpr, z_ptr=None, z_rows=0, WRITE_Z: tl.constexpr = False, mean=None, nb_ptr=None,
              LAYER_NORM: tl.constexpr = False):
    """x's tile (rows offs_m, columns ks) as fp32, rms_norm'ed with the row kernel's steps and roundings (g_ptr None:
    weightless, NanoChat's: scale, one rounding; LAYER_NORM: layer_norm'ed about the rows' `mean`, weight g and bias
    nb each optional, in fp32 and rounded once, the layer_norm row kernel's steps). POST_NORM: x is h and the tile is
    first z = res + rms_norm(h, pw) (`gemm_prologue.post_z`; res rows of K contiguous elements), stored to z's rows
    with WRITE_Z below `z_rows`."""
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :], mask=mask, other=0.0)
    if POST_NORM:
        x = post_z(x, pres_ptr, pw_ptr, offs_m, ks, mask, K, 1, K, h_rstd)
        if WRITE_Z:
            z_mask = mask & (offs_m < z_rows)[:, None]
            tl.store(z_ptr + offs_m[:, None] * K + ks[None, :], x.to(z_ptr.dtype.element_ty), mask=z_mask)
    if HAS_NORM and LAYER_NORM:
        y = (x.to(tl.float32) - mean[:, None]) * rstd[:, None]
        if g_ptr is not None:
            y = y * tl.load(g_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)[None, :]
        if nb_ptr is not None:
            y += tl.load(nb_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)[None, :]
        x = y.to(x.dtype)
    elif HAS_NORM and g_ptr is None:
        x = (x.to(tl.float32) * rstd[:, None]).to(x.dtype)
    elif HAS_NORM:
        g = tl.load(g_ptr + ks, mask=ks < K, other=0.0)
        x = rms_scale(x, rstd, g.to(tl.float32), g_ptr.dtype.element_ty == tl.float32)  # fp32 g: one rounding
    return x.to(tl.float32)


@triton.jit
def prologue_rows(x_ptr, stride_xm, xn_ptr, rs_ptr, g_ptr, eps, offs_m, M, K, HAS_NORM: tl.constexpr,
                  QUANT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, k_per_split=1,
                  SPLIT_K: tl.constexpr = 1, pres_ptr=None, pw_ptr=None, post_eps=0.0, z_ptr=None, z_rows=0,
                  POST_NORM: tl.constexpr = False, WRITE_Z: tl.constexpr = False, STAGE_Z: tl.constexpr = True,
                  nb_ptr=None, LAYER_NORM: tl.constexpr = False):
    """xn[m, :] = rms_norm(x[m, :]) * g (HAS_NORM) for the rows offs_m < M (xn: rows of K contiguous elements);
    QUANT: then quantized per token to E4M3 as `act_quant_kernel` does (rs[m] = amax / 448, codes by the same
    integer encoder, bit-exact) and stored as the codes' fp16 values. Then a barrier: the caller's threads read
    the rows back (returned: x's pointer and row stride for the K loop, and the scales' pointer). SPLIT_K > 1:
    only this K split's tiles of xn are written (`split_range`); the row's rms and amax span the whole K.
    POST_NORM: x is h and the row is z = res + rms_norm(h, pw, post_eps) (res `pres_ptr`, contiguous rows; pw or
    res None: without it) before the steps above; WRITE_Z: z is stored to z_ptr's rows below `z_rows` as well (M in
    one column tile, else 0). STAGE_Z (fp16 xn): z is written into xn by the pass that takes its rms, and the last
    pass reads it back in place: recomputing z there (a residual load beside xn's store) cost the sm_90 K loop 3-20
    SASS instructions in ptxas' allocation; an E4M3 xn (`qlinear_decode_f8`) recomputes it. LAYER_NORM (not with
    POST_NORM): the norm is a LayerNorm (bias `nb_ptr`), its statistics the dense prologue's (`prologue_stats`)."""
    mask_m = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    k_lo, k_hi = 0, tl.cdiv(K, BLOCK_K)
    if SPLIT_K > 1:
        k_lo, k_hi = split_range(k_hi, k_per_split)
    rstd = tl.zeros((BLOCK_M,), dtype=tl.float32)
    h_rstd = rstd
    mean = rstd
    if POST_NORM:  # h's rms, then z tile by tile: its rms (the whole row), staged in this split's range of xn
        h_rstd = row_rstd(x_ptr, offs_m, mask_m, stride_xm, 1, K, post_eps, BLOCK_M, BLOCK_K)
        if HAS_NORM or STAGE_Z:
            z_lo, z_hi = k_lo, k_hi
            if HAS_NORM:
                z_lo, z_hi = 0, tl.cdiv(K, BLOCK_K)
            ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for k0 in range(z_lo, z_hi):
                ks = k0 * BLOCK_K + offs_k
                mask = mask_m[:, None] & (ks[None, :] < K)
                v = _row_tile(x_ptr, stride_xm, g_ptr, rstd, offs_m, ks, mask, K, False, pres_ptr, pw_ptr, h_rstd, True)
                ss += tl.sum(v * v, axis=1)
                if STAGE_Z:
                    mine = mask & ((ks >= k_lo * BLOCK_K) & (ks < k_hi * BLOCK_K))[None, :]  # this split's range
                    tl.store(xn_ptr + offs_m[:, None] * K + ks[None, :], v.to(xn_ptr.dtype.element_ty), mask=mine)
                    if WRITE_Z:
                        tl.store(z_ptr + offs_m[:, None] * K + ks[None, :], v.to(z_ptr.dtype.element_ty),
                                 mask=mine & (offs_m < z_rows)[:, None])
            if HAS_NORM:
                rstd = tl.rsqrt(ss / K + eps)
    elif HAS_NORM and LAYER_NORM:  # mean, then the centred squares
        _, mean, rstd = prologue_stats(x_ptr, None, None, offs_m, mask_m, stride_xm, 1, 0, 0, K, eps, 0.0, BLOCK_M,
                                       BLOCK_K, True, True, False)
    elif HAS_NORM:
        rstd = row_rstd(x_ptr, offs_m, mask_m, stride_xm, 1, K, eps, BLOCK_M, BLOCK_K)
    s = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
    if QUANT:
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, tl.cdiv(K, BLOCK_K)):
            ks = k0 * BLOCK_K + offs_k
            v = _row_tile(x_ptr, stride_xm, g_ptr, rstd, offs_m, ks, mask_m[:, None] & (ks[None, :] < K), K, HAS_NORM,
                          pres_ptr, pw_ptr, h_rstd, POST_NORM, mean=mean, nb_ptr=nb_ptr, LAYER_NORM=LAYER_NORM)
            amax = tl.maximum(amax, tl.max(tl.abs(v), axis=1))
        if QUANT == F16_SCALED:
            s = f16_row_scale(amax)
        else:
            s = tl.math.div_rn(amax, E4M3_MAX + tl.zeros_like(amax))
            s = tl.where(s > 0.0, s, 1.0)
        tl.store(rs_ptr + offs_m, s, mask=mask_m)
    if POST_NORM and STAGE_Z:  # the last pass reads z back from xn (each thread its own elements; a barrier anyway)
        tl.debug_barrier()
        x_ptr, stride_xm = xn_ptr, K
    if HAS_NORM or QUANT or not (POST_NORM and STAGE_Z):  # (z alone, staged: xn is done)
        for k0 in range(k_lo, k_hi):
            ks = k0 * BLOCK_K + offs_k
            mask = mask_m[:, None] & (ks[None, :] < K)
            v = _row_tile(x_ptr, stride_xm, g_ptr, rstd, offs_m, ks, mask, K, HAS_NORM, pres_ptr, pw_ptr, h_rstd,
                          POST_NORM and not STAGE_Z, z_ptr, z_rows, WRITE_Z and not STAGE_Z, mean, nb_ptr, LAYER_NORM)
            if QUANT == F16_SCALED:  # a power of two: exact
                v = v * (1.0 / s[:, None])
            elif QUANT:
                v = fp8e4m3_to_f32(f32_to_fp8e4m3(tl.math.div_rn(v, s[:, None] + tl.zeros_like(v))))
            tl.store(xn_ptr + offs_m[:, None] * K + ks[None, :], v.to(xn_ptr.dtype.element_ty), mask=mask)
    tl.debug_barrier()
    return xn_ptr, K, rs_ptr


@triton.jit
def swiglu_pairs(y, pid, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GATE: tl.constexpr = "silu"):
    """y [BLOCK_M, BLOCK_N] over interleaved (gate, up) rows -> act(gate) * up [BLOCK_M, BLOCK_N/2], act = GATE (a
    gated activation, `ir.optable.GATED_ACTIVATIONS`), its output columns (N/2 in all) and their mask."""
    pairs = tl.reshape(y, (BLOCK_M, BLOCK_N // 2, 2))
    first = (tl.arange(0, 2) == 0)[None, None, :]
    gate, up = tl.sum(tl.where(first, pairs, 0.0), axis=2), tl.sum(tl.where(first, 0.0, pairs), axis=2)
    offs = pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    return apply_activation(gate, GATE) * up, offs, offs < N // 2


@triton.jit
def f16_row_scale(amax):
    """A bf16 row's power-of-two scale into fp16 (F16_SCALED): 2^(e - 14) for amax in [2^e, 2^(e+1)), so the row
    divided by it stays under 2^15 (fp16's max is 65504) and every element >= amax * 2^-28 is exact in fp16; 1
    for a zero (or subnormal) row. The exponent is read from amax's bits, not a rounded log2."""
    e = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    s = ((e - 14 + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(e > -100, s, 1.0)


@triton.jit
def rms_norm_rows_kernel(x_ptr, stride_xm, xn_ptr, rs_ptr, g_ptr, eps, M, K, BLOCK_M: tl.constexpr,
                         BLOCK_K: tl.constexpr, HAS_NORM: tl.constexpr = True, QUANT: tl.constexpr = 0, nb_ptr=None,
                         LAYER_NORM: tl.constexpr = False):
    """`prologue_rows` of BLOCK_M rows per program: the norm (LAYER_NORM: a LayerNorm), and (QUANT F16_SCALED) bf16
    rows to scaled fp16."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    prologue_rows(x_ptr, stride_xm, xn_ptr, rs_ptr, g_ptr, eps, offs_m, M, K, HAS_NORM, QUANT, BLOCK_M, BLOCK_K,
                  nb_ptr=nb_ptr, LAYER_NORM=LAYER_NORM)


def check_fusions(norm: tuple | None, swiglu: bool, n_rows: int, K: int, plain: bool, gate: str = "silu",
                  layer: bool = False, nb: torch.Tensor | None = None, post: bool = False) -> None:
    """The fused operands of `qlinear_w4_decode`: a norm weight [K] (`layer`: a LayerNorm's, its bias `nb` too; not
    after a post-norm step), an even row count and no bias or activation with swiglu (the epilogue replaces them), a
    gated activation `gate`."""
    if gate not in GATED_ACTIVATIONS:
        raise ShapeError(f"qlinear_w4_decode: unknown gated activation gate={gate!r}; use one of {GATED_ACTIVATIONS}")
    if norm is not None and norm[0] is not None and tuple(norm[0].shape) != (K,):
        raise ShapeError(f"qlinear_w4_decode norm weight must have shape ({K},), got {tuple(norm[0].shape)}")
    if layer and ((nb is not None and tuple(nb.shape) != (K,)) or post):
        raise ShapeError(f"qlinear_w4_decode layer_norm takes a bias of shape ({K},) or None, and no post_norm")
    if swiglu and (n_rows % 2 or not plain):
        raise ShapeError(f"qlinear_w4_decode swiglu needs interleaved [gate; up] rows (an even count, got {n_rows}) "
                         "and no bias or activation")


def quant_mode(fp4: bool, bf16: bool) -> int:
    """The prologue's QUANT for an FP4 scheme's x (E4M3 codes) or bf16 x (fp16 rows scaled by powers of two)."""
    return E4M3_CODES.value if fp4 else F16_SCALED.value if bf16 else 0


_PLAIN = dict(norm_ptr=None, xn_ptr=None, eps=0.0, HAS_NORM=False, QUANT_X=0)


def prologue(x2d: torch.Tensor, norm: tuple[torch.Tensor, float] | None, fp4: bool, programs: int, bk: int,
             ws: Workspace | None, splits: int = 1, more: tuple = (), fp8: bool = False,
             post: tuple | None = None, z: torch.Tensor | None = None, layer: bool = False,
             nb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict, list[torch.Tensor]]:
    """(x as the K loop's kernel argument, the per-token scales (w4a8-fp's, or bf16 x's; None without them), the
    prologue's kernel arguments, the caller's `more` scratch). M <= 16: the kernel normalises (`norm`) and quantizes
    (`fp4`; bf16 x: scales to fp16, F16_SCALED) x itself into per-tile scratch rows ([programs, M, K] fp16, each of
    the `splits` K splits of a tile writing its own K range, and [programs * splits, M] scales) taken from the
    workspace in one take with `more` ((shape, dtype) specs: split-K's partials; M <= 16 only). Prefill: one
    row-kernel launch for the norm (and bf16's scaling), then `quantize_activations` for FP4 (the codes' values in
    fp16; `fp8`: the codes as E4M3 bytes, at any M, for `qlinear_decode_f8`). `post=(res, w, eps)`: x is h and the
    GEMM's input z = res + rms_norm(h, w) (the post-norm step, `check_post_norm`), written to `z` [M, K]
    (contiguous) if given: in the kernel at M <= 16 (z by the first column tile), else `post_norm_rows` first.
    `layer`: `norm` is a LayerNorm, its bias `nb` (weight and bias each optional)."""
    M, K = x2d.shape
    ln = dict(nb_ptr=nb.contiguous() if nb is not None else None, LAYER_NORM=True) if layer else {}
    quant = quant_mode(fp4, x2d.dtype == torch.bfloat16)
    scaled = quant == F16_SCALED.value
    if M <= DECODE_ROWS:
        if norm is None and not quant and post is None:
            return x2d, None, _PLAIN, scratch(ws, x2d.device, *more) if more else []
        xn, rs, *extra = scratch(ws, x2d.device, ((programs, M, K), torch.float8_e4m3fn if fp8 else torch.float16),
                                 ((programs * splits, M), torch.float32), *more)
        return x2d, rs if quant else None, dict(
            norm_ptr=norm[0].contiguous() if norm and norm[0] is not None else None, xn_ptr=xn, eps=float(norm[1]) if norm else 0.0,
            HAS_NORM=norm is not None, QUANT_X=quant, **_post_args(post, z, M, K), **ln), extra
    if more or splits > 1:
        raise ShapeError(f"the decode prologue splits K at M <= {DECODE_ROWS} rows only (got {M})")
    rows = norm is not None or scaled  # a row-kernel launch: the norm, bf16 to scaled fp16
    specs = ([((M, K), x2d.dtype)] if post is not None and z is None else []) + (
        [((M, K), torch.float16 if scaled else x2d.dtype), ((M,), torch.float32)] if rows else [])
    taken = scratch(ws, x2d.device, *specs) if specs else []
    if post is not None:  # z once per row (the dense GEMM's prefill step), then the steps below on z
        z = z if z is not None else taken.pop(0)
        res, pw = (post[0].reshape(M, K).contiguous() if post[0] is not None else None), post[1]
        post_norm_rows[(triton.cdiv(M, POST_NORM_ROWS["BLOCK_M"]),)](
            x2d, res, pw.contiguous() if pw is not None else None, z, M, K, x2d.stride(0), 1, K, 1, K, float(post[2]),
            BLOCK_M=POST_NORM_ROWS["BLOCK_M"], BLOCK_K=POST_NORM_ROWS["BLOCK_K"], num_warps=POST_NORM_ROWS["num_warps"])
        x2d = z
    rs = None
    if rows:
        xn, rs = taken
        rms_norm_rows_kernel[(triton.cdiv(M, PREFILL_ROWS),)](
            x2d, x2d.stride(0), xn, rs, norm[0].contiguous() if norm and norm[0] is not None else None,
            float(norm[1]) if norm else 0.0, M, K, BLOCK_M=PREFILL_ROWS, BLOCK_K=bk, HAS_NORM=norm is not None,
            QUANT=quant if scaled else 0, **ln)
        x2d, rs = xn, rs if scaled else None
    if fp4:
        codes, rs = quantize_activations(x2d, "f8e4m3")
        x2d = codes.view(torch.float8_e4m3fn) if fp8 else formats.decode_fp8(codes, "f8e4m3").to(torch.float16)
    return x2d, rs, _PLAIN, []


def _post_args(post: tuple | None, z: torch.Tensor | None, M: int, K: int) -> dict:
    """The post-norm step's kernel arguments at M <= 16 (none without it: the kernels' defaults)."""
    if post is None:
        return {}
    res, pw, eps = post
    res = res.reshape(M, K).contiguous() if res is not None else None
    return dict(pres_ptr=res, pw_ptr=pw.contiguous() if pw is not None else None, post_eps=float(eps),
                z_ptr=z, POST_NORM=True, WRITE_Z=z is not None)


def check_post_norm(post: tuple | None, x: torch.Tensor, keep_z: bool) -> None:
    """`post_norm=(res, w, eps)`: a residual of x's shape and dtype and a weight [K], each or None; `keep_z` needs it."""
    if keep_z and post is None:
        raise ShapeError("qlinear_w4_decode keep_z stores the post-norm residual z: it needs post_norm=(res, weight, eps)")
    if post is None:
        return
    res, pw, _ = post
    K = x.shape[-1]
    if (res is not None and (res.shape != x.shape or res.dtype != x.dtype)) or (pw is not None and tuple(pw.shape) != (K,)):
        raise ShapeError(f"qlinear_w4_decode post_norm needs a residual of x's shape {tuple(x.shape)} and dtype, "
                         f"and a weight ({K},), each or None")


@triton.jit
def k_window(a_ptr, w_ptr, zz_ptr, s_ptr, K, k_per_split, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
             FP4: tl.constexpr, UNROLL: tl.constexpr = 1):
    """A K split's window (grid axis 1; `k_per_split` K steps, whole groups, a multiple of UNROLL): x, the weight
    words, zero points (int4: a pair per group; FP4's factors: one) and group scales advanced to its first column, and
    its width. The K loop's code on the window is the unsplit kernel's (its induction variable starts at 0: a runtime
    start cost ~11 SASS instructions per iteration in address arithmetic, FP4 group 32 on sm_90). UNROLL > 1: the
    start written as whole iterations of UNROLL tiles, so Triton proves the factors' pointer aligned to an iteration's
    vector (16-byte loads; the decode kernel passes it where it loads its factors so: elsewhere ptxas allocated
    one tile worse with it, 32 B of spill on sm_80 with Triton 3.6)."""
    k0 = tl.program_id(1) * (k_per_split // UNROLL) * (UNROLL * BLOCK_K)
    g0 = k0 // GROUP
    return (a_ptr + k0, w_ptr + k0 // 8, zz_ptr + (1 if FP4 else 2) * g0, s_ptr + g0,
            tl.minimum(K, k0 + k_per_split * BLOCK_K) - k0)


@triton.jit
def decode_epilogue(acc, pid, offs_m, offs_n, mask_n, rows_n, M, N, out_ptr, bias_ptr, res_ptr, rs_ptr, cs_ptr,
                    stride_om, stride_rm, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP4: tl.constexpr,
                    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, SWIGLU: tl.constexpr, GATE: tl.constexpr,
                    HAS_RESIDUAL: tl.constexpr, act_p0=0.0, act_p1=0.0, act_p2=0.0, act_p3=0.0,
                    ROW_SCALE: tl.constexpr = False):
    """The 4-bit decode kernels' epilogue (`qlinear_decode`, `qlinear_decode_f8`) on their fp32 accumulator out^T
    [BLOCK_N, BLOCK_M]: scales, bias, activation (xielu: its learned scalars act_p*, run-time, as the dense GEMM's),
    SwiGLU, residual, store. ROW_SCALE: x's rows were divided by the scales at rs_ptr (bf16 x as fp16)."""
    y = tl.trans(acc)  # [BLOCK_M, BLOCK_N]
    if FP4 or ROW_SCALE:  # W4A8: x was E4M3 codes times a per-token scale (bf16 x: fp16 times a power of two)
        y = y * tl.load(rs_ptr + offs_m, mask=offs_m < M, other=0.0)[:, None]
    if FP4:  # W times s_max per row
        y = y * tl.load(cs_ptr + rows_n)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y = apply_activation(y, ACTIVATION, act_p0, act_p1, act_p2, act_p3)
    if SWIGLU:  # rows [g0, u0, g1, u1, ...]: BLOCK_N / 2 outputs act(g) * u of N / 2, act = GATE (a string: Triton
        y, offs_n, mask_n = swiglu_pairs(y, pid, N, BLOCK_M, BLOCK_N, GATE)  # 3.6 refuses one as an `if` test)
    mask = (offs_m < M)[:, None] & mask_n[None, :]
    if HAS_RESIDUAL:
        y += tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def quarters(v, BLOCK_N: tl.constexpr, C: tl.constexpr):
    """[BLOCK_N, 4 * C] (column 4c + p) as p = 0..3's [BLOCK_N, C] ([BLOCK_N] at C = 1), by register splits: a
    128-wide K tile's 4 blocks of 32 in the 4-bit decode kernels (words j = 4c + p, or a row's 4 group factors)."""
    if C == 1:
        e, o = tl.split(tl.reshape(v, (BLOCK_N, 2, 2)))
    else:
        e, o = tl.split(tl.reshape(v, (BLOCK_N, C, 2, 2)))
    v0, v2 = tl.split(e)
    v1, v3 = tl.split(o)
    return v0, v1, v2, v3


@triton.jit
def group_factors(s_row, k0, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  CLAMP: tl.constexpr, VECTOR: tl.constexpr):
    """The group factors [BLOCK_N, BLOCK_K / 32] of the K tile at k0's blocks of 32, from each row's factors `s_row`
    [BLOCK_N, 1]; CLAMP: blocks past K (zero codes: any group's factor will do) read the last group's. VECTOR (a
    group dividing the tile): one contiguous [BLOCK_N, BLOCK_K / GROUP] load per row, broadcast in registers,
    instead of a gather of each block's group, whose index Triton cannot prove contiguous; which one builds
    shorter depends on the GPU, the Triton and the tile (`qlinear_decode_config.vector_factors`)."""
    vector: tl.constexpr = VECTOR and BLOCK_K % GROUP == 0
    if vector:
        blk = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
    else:
        blk = (k0 + 32 * tl.arange(0, BLOCK_K // 32)) // GROUP
    if CLAMP:
        blk = tl.minimum(blk, (K - 1) // GROUP)
    f = tl.load(s_row + blk[None, :])
    if vector:
        f = tl.reshape(tl.broadcast_to(f[:, :, None], (BLOCK_N, BLOCK_K // GROUP, GROUP // 32)),
                       (BLOCK_N, BLOCK_K // 32))
    return f


@triton.jit
def block_factors(s_row, k0, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, CLAMP: tl.constexpr,
                  VECTOR: tl.constexpr = True):
    """A 128-wide tile's `group_factors` as its 4 blocks' [BLOCK_N] vectors."""
    return quarters(group_factors(s_row, k0, K, GROUP, BLOCK_N, 128, CLAMP, VECTOR), BLOCK_N, 1)
