"""Batched matmul template: `bmm_kernel` and its launcher `matmul` (torch.matmul with a scale).

out[b, M, N] = scale * A[b, M, K] @ B[b, K, N] over two batch axes (i0, i1) taken from program id axis 1;
a broadcast batch axis has stride 0, so broadcasting never copies. Tile shape from
`fxforge.codegen.blocks.gemm_blocks`, dot operand handling as `templates.gemm` (split from it: one job
per module). `out=`: the result's storage (a planned buffer of the generated `run()`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.blocks import gemm_blocks
from fxforge.codegen.pool import out_tensor
from fxforge.codegen.templates.gemm import dot_options, tile_coords
from fxforge.errors import ShapeError


@triton.jit
def bmm_kernel(
    a_ptr, b_ptr, out_ptr,
    M, N, K, B1,
    stride_a0, stride_a1, stride_am, stride_ak,
    stride_b0, stride_b1, stride_bk, stride_bn,
    stride_o0, stride_o1, stride_om, stride_on,
    scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """out[i0, i1] = scale * A[i0, i1] @ B[i0, i1] for batch index i0 * B1 + i1 = program_id(1)."""
    pid_m, pid_n = tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_b = tl.program_id(1).to(tl.int64)
    i0 = pid_b // B1
    i1 = pid_b % B1
    a_ptr += i0 * stride_a0 + i1 * stride_a1
    b_ptr += i0 * stride_b0 + i1 * stride_b1
    out_ptr += i0 * stride_o0 + i1 * stride_o1

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    y = acc * scale
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _as_4d(t: torch.Tensor, batch: tuple[int, ...]) -> torch.Tensor:
    """t [..., R, C] expanded to `batch` and shaped [B0, B1, R, C] (stride 0 on broadcast axes)."""
    t = t.expand(*batch, *t.shape[-2:])
    if len(batch) == 0:
        return t[None, None]
    if len(batch) == 1:
        return t[None]
    if len(batch) == 2:
        return t
    return t.reshape(-1, *t.shape[-3:])  # collapses leading batch axes (copies only if it must)


def matmul(a: torch.Tensor, b: torch.Tensor, *, scale: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """scale * torch.matmul(a, b) for a [..., M, K], b [..., K, N] (rank >= 2, batch dims broadcast);
    `out`: the result's storage (contiguous), else allocated."""
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul needs a [..., M, K] and b [..., K, N]; got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ShapeError(f"matmul operands must share a dtype, got {a.dtype} and {b.dtype}; cast one first")
    try:
        batch = tuple(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except RuntimeError as e:
        raise ShapeError(f"batch dims of {tuple(a.shape)} and {tuple(b.shape)} do not broadcast") from e
    M, K = a.shape[-2:]
    N = b.shape[-1]
    out = out_tensor(out, (*batch, M, N), a.dtype, a.device, "matmul")
    if out.numel() == 0:
        return out
    a4, b4, o4 = _as_4d(a, batch), _as_4d(b, batch), out.view(-1, *out.shape[-3:]) if len(batch) > 2 else _as_4d(out, batch)
    B0, B1 = a4.shape[:2]
    cfg = gemm_blocks(M, N, K, a.dtype)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]), B0 * B1)
    bmm_kernel[grid](
        a4, b4, o4,
        M, N, K, B1,
        *a4.stride(), *b4.stride(), *o4.stride(),
        float(scale),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=8,
        **dot_options(a.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out
