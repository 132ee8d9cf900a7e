"""Triton encode and decode of compressed KV-cache rows (`fxforge.ir.kv_ops` layouts), for the kernels of
the decode runtime to write and read a bfp4 / bfp8 / fp8 / int8 cache in registers.

    vals = kv_dequant(codes_ptr, scales_ptr, rows, offs_d, mask, stride_c, stride_s, FORMAT, BLOCK)   # @triton.jit
    x = kv_unpack(packed)        # launcher of kv_unpack_kernel: the whole tensor, == kv_ops.unpack_kv
    vals = kv_decode_tile(rows, mask_n, D, BLOCK_D, FORMAT, BLOCK, CODE_BYTES)   # @triton.jit: [N, BLOCK_D] of N rows
    kv_encode(row_ptr, y_even, y_odd, nb_mask, FORMAT, BLOCK, CODE_BYTES)   # @triton.jit: one row written
    x = kv_unpack_rows(cache, format, block, head_dim, dtype)   # whole packed cache, == kv_ops.unpack_kv_rows

`kv_dequant` returns fp32 [ROWS, D] for row indices `rows` [ROWS] and channels `offs_d` [D]: codes at
codes_ptr + row * stride_c + byte(d), one scale per BLOCK channels at scales_ptr + row * stride_s + d // BLOCK.
Formats: bfp4 (int4 nibbles, low first, x E8M0), bfp8 (int8 x E8M0), fp8 (E4M3 x E8M0), int8 (int8 x fp16 scale:
pass the scales as an fp16 pointer). Bit for bit `unpack_kv` (every value and scale is exact in fp32).

Packed rows (`kv_ops.kv_row_layout`: codes, then scales at byte CODE_BYTES of the row): `kv_decode_tile`
reads whole rows (attention transposes its K tile); `kv_encode` writes one token's row from its fp32
values split into even and odd channels, [NB, BLOCK / 2] each (channel nb * BLOCK + 2 j and + 1): a
block is one tile row, so its amax is one reduction, and bfp4's byte (low nibble = even channel) is
one OR. Bit for bit `pack_kv_rows` (tests/codegen/test_kv_cache_kernels.py):
- shared exponents from the fp32 bits of amax: e = floor(log2 amax) - SHIFT + (mantissa > THRESH) is
  the "noclip" rule exactly (bfp4: amax <= 7 * 2^e; bfp8: 127; fp8: amax / 2^e <= 448), zero and
  subnormal amax give -127 as the clamp does; 2^-e is built from bits, so the scaling is exact;
- round half to even by the 1.5 * 2^23 trick (|v| < 2^22 here); no libdevice (the interpreter lacks it);
- int8: the fp16 scale is fp16(div_rn(amax, 127)): a correctly rounded fp32 quotient rounds to the same
  fp16 as the reference's float64 one (the quotient is never within an fp32 half-ulp of an fp16 tie);
- a block with a NaN or inf stores zeros and the NaN scale (E8M0 0xFF, fp16 0x7E00), as pack_kv does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.decode import e8m0_to_f32, fp8e4m3_to_f32
from fxforge.ir.kv_ops import KVPacked, kv_row_layout

RNE_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: (v + M) - M rounds v half to even for |v| < 2^22


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


@triton.jit
def kv_decode_tile(rows, mask_n, D: tl.constexpr, BLOCK_D: tl.constexpr, FORMAT: tl.constexpr, BLOCK: tl.constexpr,
                   CODE_BYTES: tl.constexpr):
    """fp32 [N, BLOCK_D] values of N packed rows (`rows`: [N, 1] uint8 pointers to the row starts, `mask_n`
    [N, 1]): each row's code bytes and block scales loaded once, bfp4 nibbles split and interleaved, and
    the scales broadcast over their blocks by a reshape (one load per byte and scale, not per element:
    decoding per element took 255 registers and spilled in decode attention on sm_90)."""
    if FORMAT == "bfp4":
        j = tl.arange(0, BLOCK_D // 2)[None, :]
        b = tl.load(rows + j, mask=mask_n & (j < D // 2), other=0).to(tl.int32)
        v = tl.interleave((((b & 0xF) ^ 8) - 8).to(tl.float32), ((((b >> 4) & 0xF) ^ 8) - 8).to(tl.float32))
    else:
        d = tl.arange(0, BLOCK_D)[None, :]
        c = tl.load(rows + d, mask=mask_n & (d < D), other=0).to(tl.int32) & 0xFF
        if FORMAT == "fp8":
            v = fp8e4m3_to_f32(c)
        else:
            v = ((c ^ 128) - 128).to(tl.float32)
    nb = tl.arange(0, BLOCK_D // BLOCK)[None, :]
    ms = mask_n & (nb < D // BLOCK)
    if FORMAT == "int8":
        lo = tl.load(rows + CODE_BYTES + 2 * nb, mask=ms, other=0).to(tl.int32) & 0xFF
        hi = tl.load(rows + CODE_BYTES + 2 * nb + 1, mask=ms, other=0).to(tl.int32) & 0xFF
        scale = (lo | (hi << 8)).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        scale = e8m0_to_f32(tl.load(rows + CODE_BYTES + nb, mask=ms, other=0))
    n: tl.constexpr = v.shape[0]
    v = tl.reshape(v, (n, BLOCK_D // BLOCK, BLOCK)) * scale[:, :, None]
    return tl.reshape(v, (n, BLOCK_D))


@triton.jit
def _rne(v):
    return (v + RNE_MAGIC) - RNE_MAGIC


@triton.jit
def _pow2(e):
    """2^e as fp32 for integer tensors e in [-126, 127]."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _e4m3_codes(v):
    """E4M3FN codes (int32) of fp32 values with |v| <= 448, round half to even (sign kept for -0)."""
    bits = v.to(tl.int32, bitcast=True)
    mag = tl.abs(v)
    binade = tl.maximum(((mag.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    steps = _rne(mag * _pow2(3 - binade)).to(tl.int32)
    return (((binade + 6) << 3) + steps) | ((bits >> 24) & 0x80)


@triton.jit
def _store_codes(row_ptr, ce, co, lanes, m, FORMAT: tl.constexpr, BLOCK: tl.constexpr):
    """Element codes of even/odd channels ([NB, BLOCK/2] each) into the row's code bytes."""
    if FORMAT == "bfp4":
        byte = (ce & 0xF) | ((co & 0xF) << 4)
        tl.store(row_ptr + lanes, byte.to(tl.uint8), mask=m)
    else:
        tl.store(row_ptr + 2 * lanes, (ce & 0xFF).to(tl.uint8), mask=m)
        tl.store(row_ptr + 2 * lanes + 1, (co & 0xFF).to(tl.uint8), mask=m)


@triton.jit
def kv_encode(row_ptr, ye, yo, nb_mask, FORMAT: tl.constexpr, BLOCK: tl.constexpr, CODE_BYTES: tl.constexpr):
    """Write one packed row at `row_ptr` from the even/odd channel values ye, yo [NB, BLOCK // 2] (fp32);
    nb_mask [NB] says which blocks exist (NB padded to a power of two)."""
    nb = tl.arange(0, ye.shape[0])
    lanes = nb[:, None] * (BLOCK // 2) + tl.arange(0, BLOCK // 2)[None, :]
    m = nb_mask[:, None] & (lanes >= 0)
    fin = ((ye == ye) & (tl.abs(ye) < float("inf")) & (yo == yo) & (tl.abs(yo) < float("inf"))) | (~m)
    fin_b = tl.min(fin.to(tl.int32), axis=1) == 1
    ye = tl.where(fin_b[:, None], ye, 0.0)
    yo = tl.where(fin_b[:, None], yo, 0.0)
    amax = tl.maximum(tl.max(tl.abs(ye), axis=1), tl.max(tl.abs(yo), axis=1))
    sp = row_ptr + CODE_BYTES
    if FORMAT == "int8":
        s16 = tl.math.div_rn(amax, 127.0).to(tl.float16)
        s16 = tl.where(s16 > 0, s16, 1.0).to(tl.float16)  # an underflowed (or zero) scale is stored as 1
        s = s16.to(tl.float32)[:, None]
        ce = tl.minimum(tl.maximum(_rne(tl.math.div_rn(ye, s)), -127.0), 127.0).to(tl.int32)
        co = tl.minimum(tl.maximum(_rne(tl.math.div_rn(yo, s)), -127.0), 127.0).to(tl.int32)
        sbits = tl.where(fin_b, s16.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF, 0x7E00)
        tl.store(sp + 2 * nb, (sbits & 0xFF).to(tl.uint8), mask=nb_mask)
        tl.store(sp + 2 * nb + 1, (sbits >> 8).to(tl.uint8), mask=nb_mask)
    else:
        # noclip: e = floor(log2 amax) - shift + (mantissa > thresh), i.e. amax <= qmax * 2^e, smallest such e
        if FORMAT == "bfp4":
            shift, thresh, qmax = 2, 0x600000, 7.0  # mantissa > 1.75 = 7 / 4
        elif FORMAT == "bfp8":
            shift, thresh, qmax = 6, 0x7E0000, 127.0  # mantissa > 127 / 64
        else:
            shift, thresh, qmax = 8, 0x600000, 448.0  # fp8: amax / 2^e <= 448 = 1.75 * 2^8
        abits = amax.to(tl.int32, bitcast=True)
        ebits = (abits >> 23) & 0xFF
        e = ebits - 127 - shift + ((abits & 0x7FFFFF) > thresh).to(tl.int32)
        e = tl.minimum(tl.where(ebits == 0, -127, tl.maximum(e, -127)), 127)
        inv = _pow2(-e)[:, None]  # exact: -e in [-126, 127]
        if FORMAT == "fp8":
            ce = _e4m3_codes(ye * inv)
            co = _e4m3_codes(yo * inv)
        else:
            ce = tl.minimum(tl.maximum(_rne(ye * inv), -qmax), qmax).to(tl.int32)
            co = tl.minimum(tl.maximum(_rne(yo * inv), -qmax), qmax).to(tl.int32)
        tl.store(sp + nb, tl.where(fin_b, e + 127, 255).to(tl.uint8), mask=nb_mask)
    _store_codes(row_ptr, ce, co, lanes, m, FORMAT, BLOCK)


@triton.jit
def kv_rows_unpack_kernel(cache_ptr, out_ptr, R, stride_r, stride_o, D: tl.constexpr, BLOCK_D: tl.constexpr,
                          FORMAT: tl.constexpr, BLOCK: tl.constexpr, CODE_BYTES: tl.constexpr, ROWS: tl.constexpr):
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    v = kv_decode_tile(cache_ptr + rows * stride_r, rows < R, D, BLOCK_D, FORMAT, BLOCK, CODE_BYTES)
    offs_d = tl.arange(0, BLOCK_D)[None, :]
    tl.store(out_ptr + rows * stride_o + offs_d, v.to(out_ptr.dtype.element_ty), mask=(rows < R) & (offs_d < D))


def kv_unpack_rows(cache: torch.Tensor, fmt: str, block: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The values [..., head_dim] in `dtype` of packed cache rows [..., row_bytes], decoded by `kv_decode_tile`."""
    code, total = kv_row_layout(fmt, block, head_dim)
    rows = cache.reshape(-1, total)  # a view for a contiguous cache
    out = torch.empty(rows.shape[0], head_dim, dtype=dtype, device=cache.device)
    n = 16
    if rows.shape[0]:
        kv_rows_unpack_kernel[(triton.cdiv(rows.shape[0], n),)](
            rows, out, rows.shape[0], rows.stride(0), out.stride(0), D=head_dim,
            BLOCK_D=triton.next_power_of_2(head_dim), FORMAT=fmt, BLOCK=block, CODE_BYTES=code, ROWS=n)
    return out.reshape(*cache.shape[:-1], head_dim)
