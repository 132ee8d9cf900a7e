"""The block-scaled qlinear kernel (MX: mxfp8 / mxfp6 / mxfp4 / mxint8, and NVFP4): weights decoded and
activations quantized per block, both in registers, in one GEMM.

    qlinear_block(x, weight, scheme, bias, activation=, residual=, out_dtype=)

The reference it matches is `fxforge.ir.lowp_ops.qlinear_ref` with act_format = the block format:
activations quantize-dequantized per block of K (`block_formats.fake_quant_block`, rule "noclip"), times
`decode_weight(weight)` (the `#blockfp` codec of `fxforge.ir.block_weights`).

How (one K step = one block, BLOCK_K = the format's block: 32 for MX, 16 for NVFP4):
- activations: the [BLOCK_M, BLOCK_K] tile of x is loaded as fp32, each row's block amax gives its
  scale (MX: 2^(floor(log2 amax) - emax), one more when amax / 2^e would clip; NVFP4: the E4M3 value
  of amax / 6 / ts rounded to nearest-even, the next E4M3 value when it would clip, ts the per-token
  second-level scale the launcher computes as amax_row / (6 * 448)), and the scaled values are rounded
  to the element format (`round_to_element`: round-half-even on the fp32 significand by adding and
  subtracting a power of two, saturating at the format's max) — the element values, unscaled.
- weights: packed codes are gathered per element (`load_codes`: byte k * BITS / 8, shift k * BITS % 8,
  a second byte for 6-bit codes that straddle two) and decoded (`fxforge.codegen.decode`); the block
  scale codes give one scale per output channel (E8M0, or E4M3 x the tensor scale).
- `tl.dot` on the element values in fp16 (every value of every element format is exact in fp16, and
  their products are exact in fp32), fp32 accumulation, then acc += dot * s_a[m] * s_w[n] per block.
  The scale multiply is per block, so nothing larger than an element value enters the dot.
Decided: NaN blocks are not supported here (a weight has none: the codec refuses them; a NaN activation
propagates through amax into the whole row's result, as the reference's NaN scale does).
Layout: the payload's codes [N, K * BITS / 8] row-major and scales [N, K / block] are what sm_100's
native MX MMA reads (block scales along K), so a `tl.dot_scaled` path can replace the decode later.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.blocks import qlinear_blocks
from fxforge.codegen.decode import e8m0_to_f32, fp8e4m3_to_f32, minifloat_to_f32
from fxforge.codegen.templates.gemm import ACTIVATIONS, apply_activation, epilogue_operands, tile_offsets
from fxforge.errors import ShapeError
from fxforge.ir import block_formats as bf
from fxforge.ir.formats import get_format
from fxforge.ir.schemes import get_scheme
from fxforge.ir.types import BlockFP

_SPECIALS = {"none": 0, "fn": 1, "ieee": 2}


def element_params(fmt: str) -> dict:
    """The kernel constexprs of a block format's element ("nvfp4" or an MX format name)."""
    element = "f4e2m1" if fmt == "nvfp4" else bf.get_mx_format(fmt).element
    f = get_format(element)
    return dict(BITS=f.bits, EXP_BITS=f.exp_bits, MAN_BITS=f.man_bits, BIAS=f.bias, SPECIALS=_SPECIALS.get(f.specials, 0),
                ELEM_MAX=bf.element_max(element), EMAX=f.emax, IS_INT=f.kind == "int", NVFP4=fmt == "nvfp4")


@triton.jit
def _pow2(e):
    """2^e (int32 e in [-149, 127]) as exact fp32: normal bits, or a subnormal built by a shift."""
    normal = ((e + 127) << 23).to(tl.float32, bitcast=True)
    sub = (tl.full(e.shape, 1, tl.int32) << tl.maximum(e + 149, 0)).to(tl.float32, bitcast=True)
    return tl.where(e >= -126, normal, sub)


@triton.jit
def _floor_log2(a):
    """floor(log2(a)) of positive fp32 a (normal or subnormal), int32: subnormals are scaled by 2^64 first."""
    sub = a < 1.1754943508222875e-38  # 2^-126 (literals below it would be typed fp64 on Triton 3.6)
    bits = tl.where(sub, a * 18446744073709551616.0, a).to(tl.int32, bitcast=True)
    return ((bits >> 23) & 0xFF) - 127 - tl.where(sub, 64, 0)


@triton.jit
def round_to_element(v, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, ELEM_MAX: tl.constexpr, IS_INT: tl.constexpr):
    """fp32 v (already divided by its block scale) rounded half-to-even to the element format's value
    grid and saturated at +-ELEM_MAX; ints are MX fixed point (grid 2^-6 for INT8)."""
    a = tl.abs(v)
    if IS_INT:
        quantum = tl.full(a.shape, 0.015625, tl.float32)
    else:
        e = tl.maximum(_floor_log2(tl.maximum(a, 1e-30)), 1 - BIAS)  # subnormals share the lowest binade
        quantum = _pow2(e - MAN_BITS)
    big = quantum * 12582912.0  # 1.5 * 2^23 quanta: adding and subtracting rounds to a multiple, ties to even
    r = ((a + big) - big)
    r = tl.minimum(r, ELEM_MAX)
    return tl.where(v < 0, -r, r)


@triton.jit
def load_codes(row_ptrs, k, mask, BITS: tl.constexpr):
    """Element codes (int32) at positions k of rows packed BITS per code (4: two per byte, low nibble
    first; 6: four per three bytes little-endian; 8: one per byte)."""
    bit = k * BITS
    b0 = tl.load(row_ptrs + bit // 8, mask=mask, other=0).to(tl.int32) & 0xFF
    if BITS == 6:
        b1 = tl.load(row_ptrs + bit // 8 + 1, mask=mask & (bit % 8 > 2), other=0).to(tl.int32) & 0xFF
        return ((b0 | (b1 << 8)) >> (bit % 8)) & 0x3F
    elif BITS == 4:
        return (b0 >> (bit % 8)) & 0xF
    else:
        return b0


@triton.jit
def _decode(c, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, SPECIALS: tl.constexpr,
            IS_INT: tl.constexpr):
    if IS_INT:
        return ((c ^ 128) - 128).to(tl.float32) * 0.015625
    return minifloat_to_f32(c, EXP_BITS, MAN_BITS, BIAS, SPECIALS)


@triton.jit
def _act_block(a, ts, EMAX: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, ELEM_MAX: tl.constexpr,
               IS_INT: tl.constexpr, NVFP4: tl.constexpr):
    """(element values [BM, BK], scale [BM]) of an fp32 activation tile, one block per row (rule noclip)."""
    amax = tl.max(tl.abs(a), axis=1)
    if NVFP4:
        s = round_to_element(amax / 6.0 / ts, 3, 7, 448.0, False)  # E4M3, round half even
        es = tl.maximum(_floor_log2(tl.where(s > 0, s, 0.001953125)), -6)  # E4M3's binades start at 2^-6
        s = tl.where(amax > 6.0 * (s * ts), tl.minimum(s + _pow2(es - 3), 448.0), s)
        scale = s * ts
        safe = tl.where(scale > 0, scale, 1.0)
        el = tl.where(scale[:, None] > 0, round_to_element(a / safe[:, None], MAN_BITS, BIAS, ELEM_MAX, IS_INT), 0.0)
    else:
        e = tl.where(amax > 0, _floor_log2(tl.where(amax > 0, amax, 1.0)) - EMAX, -127)
        e = tl.where(amax * _pow2(-e) > ELEM_MAX, e + 1, e)
        e = tl.minimum(tl.maximum(e, -127), 127)
        scale = _pow2(e)
        el = round_to_element(a * _pow2(-e)[:, None], MAN_BITS, BIAS, ELEM_MAX, IS_INT)
    return el, scale


@triton.jit
def qlinear_block_kernel(
    a_ptr, a_ts_ptr, w_ptr, ws_ptr, w_ts_ptr, out_ptr, bias_ptr, res_ptr,
    M, N, K,
    stride_am, stride_ak, stride_wn, stride_sn, stride_om, stride_on, stride_rm, stride_rn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BITS: tl.constexpr, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr,
    SPECIALS: tl.constexpr, ELEM_MAX: tl.constexpr, EMAX: tl.constexpr, IS_INT: tl.constexpr, NVFP4: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    """out = epilogue(sum over K blocks of dot(elem_a, elem_w^T) * s_a[m] * s_w[n]); see the module docstring."""
    offs_m, offs_n, offs_k, mask_m, mask_n = tile_offsets(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_rows = w_ptr + offs_n[:, None] * stride_wn
    ts_a = tl.full((BLOCK_M,), 1.0, tl.float32)
    ts_w = 1.0
    if NVFP4:
        ts_a = tl.load(a_ts_ptr + offs_m, mask=mask_m, other=1.0)
        ts_w = tl.load(w_ts_ptr)
    w_mask = mask_n[:, None] & (offs_k[None, :] < BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, K // BLOCK_K):  # the launcher checks that the block divides K
        a = tl.load(a_ptrs, mask=mask_m[:, None], other=0.0).to(tl.float32)
        el_a, s_a = _act_block(a, ts_a, EMAX, MAN_BITS, BIAS, ELEM_MAX, IS_INT, NVFP4)
        codes = load_codes(w_rows, kb * BLOCK_K + offs_k[None, :], w_mask, BITS)
        el_w = _decode(codes, EXP_BITS, MAN_BITS, BIAS, SPECIALS, IS_INT)
        sc = tl.load(ws_ptr + offs_n * stride_sn + kb, mask=mask_n, other=0)
        if NVFP4:
            s_w = fp8e4m3_to_f32(sc) * ts_w
        else:
            s_w = e8m0_to_f32(sc)
        part = tl.dot(el_a.to(tl.float16), tl.trans(el_w.to(tl.float16)))
        acc += part * s_a[:, None] * s_w[None, :]
        a_ptrs += BLOCK_K * stride_ak
    y = acc
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y = apply_activation(y, ACTIVATION)
    if HAS_RESIDUAL:
        y += tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :] * stride_rn, mask=mask,
                     other=0.0).to(tl.float32)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
             y.to(out_ptr.dtype.element_ty), mask=mask)


def check_block_operands(x: torch.Tensor, weight, scheme: str, activation: str) -> tuple[int, int]:
    """(N, K) after checking that the weight, input and activation fit the block scheme (ShapeError naming the fix)."""
    sc = get_scheme(scheme)
    enc = weight.encoding
    if not sc.block or not isinstance(enc, BlockFP) or enc.format != sc.weight_format or enc.perm is not None:
        raise ShapeError(f"qlinear {scheme}: weight encoding {enc!r} is not a {sc.weight_format} #blockfp weight; "
                         f"encode it with encode_weight(w, {scheme!r})")
    if activation not in ACTIVATIONS:
        raise ShapeError(f"unknown activation {activation!r}; use one of {ACTIVATIONS}")
    N, K = weight.data.shape
    if x.dim() < 1 or x.shape[-1] != K:
        raise ShapeError(f"qlinear: input {tuple(x.shape)} does not fit weight [{N}, {K}] (expects [..., {K}])")
    if K % sc.block:
        raise ShapeError(f"qlinear {scheme}: K={K} is not a multiple of the block size {sc.block}")
    return N, K


def block_launch_config(scheme: str, M: int, N: int, K: int) -> dict:
    """Tile shape: BLOCK_K is the scheme's block (one scale per row / column per K step)."""
    cfg = dict(qlinear_blocks(M, N, K, 0, "fp16"))
    cfg["BLOCK_M"], cfg["BLOCK_N"] = min(cfg["BLOCK_M"], 64), min(cfg["BLOCK_N"], 64)  # fp32 decode temporaries
    cfg["BLOCK_K"] = get_scheme(scheme).block
    # 64x64 tiles: 8 warps (4 spilled 8 B on sm_80 with Triton 3.6 for mxfp8; 8 use ~95 registers)
    cfg["num_warps"] = 8 if cfg["BLOCK_M"] * cfg["BLOCK_N"] >= 64 * 64 else 4
    return cfg


def qlinear_block(x: torch.Tensor, weight, scheme: str, bias: torch.Tensor | None = None, *,
                  activation: str = "none", residual: torch.Tensor | None = None,
                  out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """activation(qlinear_ref(x, weight, bias)) + residual for a block scheme, in one kernel."""
    N, K = check_block_operands(x, weight, scheme, activation)
    p = weight.payload
    lead = tuple(x.shape[:-1])
    x2d = x.reshape(-1, K)
    M = x2d.shape[0]
    out = torch.empty((M, N), dtype=out_dtype or x.dtype, device=x.device)
    bias, residual, _ = epilogue_operands(lead, N, bias=bias, residual=residual)
    if M == 0 or N == 0:
        return out.reshape(*lead, N)
    nv = scheme == "nvfp4"
    ts_a = bf.nvfp4_row_scale(x2d.float()).reshape(M).contiguous() if nv else out
    ts_w = p["tensor_scale"].reshape(1).float() if nv else out
    codes, scales = p["codes"], p["scales"]
    res = residual if residual is not None else out
    cfg = block_launch_config(scheme, M, N, K)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    qlinear_block_kernel[grid](
        x2d, ts_a, codes, scales, ts_w, out, bias if bias is not None else out, res, M, N, K,
        x2d.stride(0), x2d.stride(1), codes.stride(0), scales.stride(0), out.stride(0), out.stride(1),
        res.stride(0), res.stride(1),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=8,
        **element_params(get_scheme(scheme).weight_format),
        HAS_BIAS=bias is not None, ACTIVATION=activation, HAS_RESIDUAL=residual is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out.reshape(*lead, N)
