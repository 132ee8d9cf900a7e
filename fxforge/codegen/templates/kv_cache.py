"""Triton decode of compressed KV-cache rows (`fxforge.ir.kv_ops` layouts), for the attention kernels of
the decode runtime (issue #13) to read a bfp4 / bfp8 / fp8 / int8 cache in registers.

    vals = kv_dequant(codes_ptr, scales_ptr, rows, offs_d, mask, stride_c, stride_s, FORMAT, BLOCK)   # @triton.jit
    x = kv_unpack(packed)        # launcher of kv_unpack_kernel: the whole tensor, == kv_ops.unpack_kv

`kv_dequant` returns fp32 [ROWS, D] for row indices `rows` [ROWS] and channels `offs_d` [D]: codes at
codes_ptr + row * stride_c + byte(d), one scale per BLOCK channels at scales_ptr + row * stride_s + d // BLOCK.
Formats: bfp4 (int4 nibbles, low first, x E8M0), bfp8 (int8 x E8M0), fp8 (E4M3 x E8M0), int8 (int8 x fp16 scale:
pass the scales as an fp16 pointer). Bit for bit `unpack_kv` (every value and scale is exact in fp32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.decode import e8m0_to_f32, fp8e4m3_to_f32
from fxforge.ir.kv_ops import KVPacked


@triton.jit
def kv_dequant(codes_ptr, scales_ptr, rows, offs_d, mask, stride_c, stride_s, FORMAT: tl.constexpr, BLOCK: tl.constexpr):
    """fp32 values [ROWS, D] of compressed K/V rows (see the module docstring)."""
    r = rows[:, None]
    d = offs_d[None, :]
    if FORMAT == "bfp4":
        b = tl.load(codes_ptr + r * stride_c + d // 2, mask=mask, other=0).to(tl.int32) & 0xFF
        q = (((b >> ((d % 2) * 4)) & 0xF) ^ 8) - 8
        v = q.to(tl.float32)
    else:
        c = tl.load(codes_ptr + r * stride_c + d, mask=mask, other=0).to(tl.int32) & 0xFF
        if FORMAT == "fp8":
            v = fp8e4m3_to_f32(c)
        else:
            v = ((c ^ 128) - 128).to(tl.float32)
    s = tl.load(scales_ptr + r * stride_s + d // BLOCK, mask=mask, other=0)
    if FORMAT == "int8":
        scale = s.to(tl.float32)
    else:
        scale = e8m0_to_f32(s)
    return v * scale


@triton.jit
def kv_unpack_kernel(codes_ptr, scales_ptr, out_ptr, R, stride_c, stride_s, stride_o,
                     D: tl.constexpr, FORMAT: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, D)
    mask = (rows[:, None] < R) & (offs_d[None, :] < D)
    v = kv_dequant(codes_ptr, scales_ptr, rows, offs_d, mask, stride_c, stride_s, FORMAT, BLOCK)
    tl.store(out_ptr + rows[:, None] * stride_o + offs_d[None, :], v, mask=mask)


def kv_unpack(p: KVPacked) -> torch.Tensor:
    """float32 values of a compressed K/V tensor, decoded by `kv_dequant` (head_dim a power of two)."""
    d = p.shape[-1]
    codes = p.codes.reshape(-1, p.codes.shape[-1])
    scales = p.scales.reshape(-1, p.scales.shape[-1])
    out = torch.empty(codes.shape[0], d, dtype=torch.float32, device=codes.device)
    rows = 16
    kv_unpack_kernel[(triton.cdiv(codes.shape[0], rows),)](
        codes, scales, out, codes.shape[0], codes.stride(0), scales.stride(0), out.stride(0),
        D=d, FORMAT=p.format, BLOCK=p.block, ROWS=rows)
    return out.reshape(p.shape)
