"""The fusions at the two ends of the 4-bit decode GEMM (`qlinear_decode`): an RMSNorm prologue and a SwiGLU
epilogue, so a quantized decoder layer launches what a dense one does (issue #13 item 3).

This module owns the jit helpers the decode kernel calls (`norm_rows`, `swiglu_pairs`), the row kernel
`rms_norm_rows_kernel` and its launcher `normed_rows` (the prologue of 64-row prefill tiles).

- SWIGLU: the [gate; up] weight of `concat_linears` has its rows interleaved [g0, u0, g1, u1, ...] by the
  `decode_layout` pass (a row permutation of the row-major payload, before the decode layout is made: group
  scales and zero points move with their rows; the two slices of the IR become step-2 slices, so the reference
  semantics hold). A BLOCK_N tile of the accumulator then holds BLOCK_N/2 whole (gate, up) pairs:
  `swiglu_pairs` splits them in registers and returns silu(gate) * up with the output's column offsets and
  mask (N/2 columns). fp32 throughout, as the dense GEMM's SwiGLU epilogue (`gemm.py` SWIGLU).
- RMSNorm (HAS_NORM, int4 only): the dense GEMM normalises each A tile as it loads it; the decode kernel's K
  loop is not touched (its loads are tuned for the in-register dequantization), so before the loop each
  program writes rms_norm(x) of its (at most 16) rows into its own scratch rows, [programs, M, K] fp16 from
  the pool's workspace, waits at a barrier (its own writes, read back by its own threads: no race between
  programs) and points the K loop's x at them. The steps are the row kernel's and the dense prologue's
  (fp32 sum of squares, scale, round to x's dtype, times the norm weight, round). Prefill tiles (M > 16,
  grid over N of 64-row tiles) would each write M x K: they get one `rms_norm_rows_kernel` launch instead.
Decisions:
- Scratch per program, not one shared [M, K]: programs writing the same bytes would be a (benign) race;
  a decode step's x is 1-16 rows, so grid_n x M x K fp16 is a few hundred KB at most.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.pool import Workspace, scratch
from fxforge.codegen.templates.gemm import row_rstd
from fxforge.errors import ShapeError

PREFILL_ROWS = 64  # rows per program of `rms_norm_rows_kernel`


@triton.jit
def norm_rows(x_ptr, stride_xm, xn_ptr, g_ptr, eps, offs_m, M, K, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """xn[m, :] = rms_norm(x[m, :]) * g for the rows offs_m < M (xn: rows of K contiguous elements)."""
    mask_m = offs_m < M
    rstd = row_rstd(x_ptr, offs_m, mask_m, stride_xm, 1, K, eps, BLOCK_M, BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        ks = k0 * BLOCK_K + offs_k
        mask = mask_m[:, None] & (ks[None, :] < K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)
        xn = (x * rstd[:, None]).to(xn_ptr.dtype.element_ty).to(tl.float32)  # the row kernel's two roundings
        tl.store(xn_ptr + offs_m[:, None] * K + ks[None, :], (xn * g[None, :]).to(xn_ptr.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_pairs(y, pid, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """y [BLOCK_M, BLOCK_N] over interleaved (gate, up) rows -> silu(gate) * up [BLOCK_M, BLOCK_N/2], its output
    columns (N/2 in all) and their mask."""
    gate, up = tl.split(tl.reshape(y, (BLOCK_M, BLOCK_N // 2, 2)))
    offs = pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    return gate * tl.sigmoid(gate) * up, offs, offs < N // 2


@triton.jit
def rms_norm_rows_kernel(x_ptr, stride_xm, xn_ptr, g_ptr, eps, M, K, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """`norm_rows` of BLOCK_M rows per program."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    norm_rows(x_ptr, stride_xm, xn_ptr, g_ptr, eps, offs_m, M, K, BLOCK_M, BLOCK_K)


def check_fusions(norm: tuple | None, swiglu: bool, n_rows: int, K: int, plain: bool, fp4: bool) -> None:
    """The fused operands of `qlinear_w4_decode`: a norm weight [K] (int4 only), an even row count and no bias or
    activation with swiglu (the epilogue replaces them)."""
    if norm is not None and (fp4 or tuple(norm[0].shape) != (K,)):
        raise ShapeError(f"qlinear_w4_decode norm: a weight of shape ({K},) and a w4a16-int4 weight (w4a8-fp "
                         f"quantizes x before the kernel); got {tuple(norm[0].shape)}, fp4={fp4}")
    if swiglu and (n_rows % 2 or not plain):
        raise ShapeError(f"qlinear_w4_decode swiglu needs interleaved [gate; up] rows (an even count, got {n_rows}) "
                         "and no bias or activation")


def normed_rows(x2d: torch.Tensor, norm: tuple[torch.Tensor, float], bk: int, ws: Workspace | None) -> torch.Tensor:
    """rms_norm(x2d) * weight [M, K] fp16 in workspace scratch (one launch): the prologue of prefill tiles."""
    M, K = x2d.shape
    (xn,) = scratch(ws, x2d.device, ((M, K), x2d.dtype))
    rms_norm_rows_kernel[(triton.cdiv(M, PREFILL_ROWS),)](
        x2d, x2d.stride(0), xn, norm[0].contiguous(), float(norm[1]), M, K, BLOCK_M=PREFILL_ROWS, BLOCK_K=bk)
    return xn
