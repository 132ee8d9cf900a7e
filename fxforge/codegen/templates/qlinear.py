"""Quantized linear kernels: GEMMs that decode packed weights tile by tile, in registers.

This module owns the Triton kernels behind `qlinear` (the IR op of `fxforge.ir.lowp_ops`) and their
launcher `qlinear(x, weight, scheme, bias, lorc=, activation=, residual=, out_dtype=)`. The reference
they match is `fxforge.ir.lowp_ops.qlinear_ref` on `decode_weight(weight)`; the payload layouts are
`encode_weight`'s. No kernel ever writes a dequantized weight to memory: each K step loads the packed
codes of a [BLOCK_N, BLOCK_K] weight tile, decodes them with the helpers of `fxforge.codegen.decode`
and feeds the tile to `tl.dot`.

Kernels (one per scheme; all share `_epilogue`, which reuses the dense template's `apply_activation`
and `tile_offsets`, and `keep_rows`: FFN-skip keep flags, HAS_KEEP, as in `gemm.py`):
- activations of the A8 schemes are quantized per token first (`act_quant.py`).
- `qlinear_w8a8_int8_kernel`: int8 x int8 -> int32 `tl.dot`; epilogue acc * s_tok[m] * s_w[n].
- `qlinear_w8a8_fp8_kernel`: E4M3 codes for both operands. FP8_DOT=False (default, interpreter,
  sm_80): both decoded by bit operations to fp32 and cast to fp16 (every E4M3 value is exact in fp16,
  and products of 4-bit significands are exact, so this is as exact as an fp32 dot) -> fp16 tensor-core
  dot, fp32 accumulation. FP8_DOT=True (sm_89+/sm_90): uint8 codes bitcast to `tl.float8e4nv`, fp8
  `tl.dot` (wgmma on sm_90) with `max_num_imprecise_acc=BLOCK_K`, i.e. the fp22 tensor-core
  accumulator is promoted into fp32 after every K tile (Triton's sm_90 default never promotes).
- `qlinear_w4a16_int4_kernel`: nibbles unpacked (`interleave_nibbles`), w = (q - z) * s per group
  (f16 scales, uint8 zero points), dot in DOT: "fp32" (fp32 activations, exact ieee dot), "fp16"
  (fp16 activations; the dequantized weight is rounded to fp16, the usual W4A16 path), "bf16"
  (bf16 activations on a GPU; under the interpreter bf16 becomes "fp32", its bf16 math is wrong).
- `qlinear_w4a8_fp_kernel`: FP4-E2M1 codes decoded and multiplied by 2^-k (k = the group's shift,
  2^-k built as fp32 exponent bits: exact); the result is exactly an E4M3 value (lowp_ops clamps k at
  8), so FP8_DOT=True re-encodes it with the same integer encoder and runs an fp8 dot, and the default
  path casts it to fp16 (exact) for an fp16 dot against the decoded activation codes. Epilogue:
  acc * s_tok[m] * s_max[n].
Group scales: BLOCK_K comes from `blocks.qlinear_blocks` and divides the group whenever a power of two
>= the dot's minimum K does, so one K tile reads one scale per output channel (`GROUP % BLOCK_K == 0`);
otherwise the kernels gather one scale per element (any group works, slower). A group that does not
divide K leaves the last group partial (`fxforge.ir.lowp_ops`): group k // GROUP of element k, elements
k >= K masked to zero, i.e. a zero-padded K, the reference's semantics.
Epilogue (registers, one store): y = acc * row_scale * col_scale -> += LoRC addend -> += bias ->
activation -> += residual -> cast to the output dtype (default x.dtype, as the reference).
LoRC (U [out, r], V [in, r]): the correction (xq @ V) @ U^T is two small torch matmuls on the
quantize-dequantized activations, computed BEFORE the kernel and added in its epilogue before the bias
and the activation (the reference adds it before the bias; adding it after the kernel would be wrong
with an activation). It costs an M x N f32 temporary; fusing a rank-r pass into the K loop is left for later.
Block schemes (mxfp8 / mxfp6 / mxfp4 / mxint8 / nvfp4): `qlinear` hands them to `templates/qlinear_block.py`.
Limits: the 8-bit schemes take per-channel weights only (group 0, the scheme default); a grouped
int8/fp8 weight raises ShapeError.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.blocks import qlinear_blocks
from fxforge.codegen.decode import fp4e2m1_to_f32, fp8e4m3_to_f32, interleave_nibbles
from fxforge.codegen.templates.act_quant import (  # noqa: F401  (quantize/dequantize_activations: part of this API)
    dequantize_activations,
    f32_to_fp8e4m3,
    quantize_activations,
)
from fxforge.codegen.templates.gemm import (
    ACTIVATIONS,
    apply_activation,
    epilogue_operands,
    interpreting,
    keep_rows,
    keep_view,
    tile_offsets,
)
from fxforge.codegen.templates.hadamard import hadamard as hadamard_rows
from fxforge.codegen.templates.qlinear_block import qlinear_block
from fxforge.errors import ShapeError
from fxforge.ir.lowp_ops import get_scheme
from fxforge.ir.types import Quantized

QLINEAR_SCHEMES = ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp")

# ---------------------------------------------------------------- shared GEMM pieces


@triton.jit
def _epilogue(acc, row_scale, col_scale, offs_m, offs_n, mask_m, mask_n,
              out_ptr, bias_ptr, add_ptr, res_ptr,
              stride_om, stride_on, stride_dm, stride_dn, stride_rm, stride_rn,
              HAS_BIAS: tl.constexpr, HAS_ADDEND: tl.constexpr, ACTIVATION: tl.constexpr,
              HAS_RESIDUAL: tl.constexpr):
    """y = acc * row_scale[:, None] * col_scale[None, :] (+ addend) (+ bias) -> activation (+ residual) -> store."""
    y = acc * row_scale[:, None] * col_scale[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_ADDEND:
        y += tl.load(add_ptr + offs_m[:, None] * stride_dm + offs_n[None, :] * stride_dn, mask=mask, other=0.0)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y = apply_activation(y, ACTIVATION)
    if HAS_RESIDUAL:
        y += tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :] * stride_rn, mask=mask,
                     other=0.0).to(tl.float32)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
             y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _group_params(p_ptr, offs_n, mask_n, k_start, offs_k, k_left, stride_pn, stride_pg,
                  GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-group parameters (scale, zero, shift) for a [BLOCK_N, BLOCK_K] weight tile starting at k_start:
    a [BLOCK_N, 1] column when the tile lies in one group, else one value per element."""
    if GROUP % BLOCK_K == 0:
        p = tl.load(p_ptr + offs_n * stride_pn + (k_start // GROUP) * stride_pg, mask=mask_n, other=0)[:, None]
    else:
        g = (k_start + offs_k) // GROUP
        p = tl.load(p_ptr + offs_n[:, None] * stride_pn + g[None, :] * stride_pg,
                    mask=mask_n[:, None] & (offs_k[None, :] < k_left), other=0)
    return p


# ---------------------------------------------------------------- the kernels


@triton.jit
def qlinear_w8a8_int8_kernel(
    a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, out_ptr, bias_ptr, add_ptr, res_ptr,
    M, N, K,
    stride_am, stride_ak, stride_wn, stride_wk, stride_om, stride_on, stride_dm, stride_dn, stride_rm, stride_rn, keep_ptr, stride_km,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_ADDEND: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    HAS_KEEP: tl.constexpr = False,
):
    """out = epilogue((qa[M, K] @ qw[N, K]^T) * s_tok[M] * s_w[N]) with int8 codes and an int32 dot."""
    offs_m, offs_n, offs_k, mask_m, mask_n = tile_offsets(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    rows_a, n_k = keep_rows(keep_ptr, stride_km, offs_m, mask_m, K, BLOCK_K, HAS_KEEP)
    for k0 in range(0, n_k):
        k_left = K - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=rows_a[:, None] & (offs_k[None, :] < k_left), other=0)
        w = tl.load(w_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0)
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)  # out_dtype: Triton 3.6 (see triton_compat)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
    s_tok = tl.load(a_scale_ptr + offs_m, mask=mask_m, other=0.0)
    s_w = tl.load(w_scale_ptr + offs_n, mask=mask_n, other=0.0)
    _epilogue(acc.to(tl.float32), s_tok, s_w, offs_m, offs_n, mask_m, mask_n, out_ptr, bias_ptr, add_ptr, res_ptr,
              stride_om, stride_on, stride_dm, stride_dn, stride_rm, stride_rn,
              HAS_BIAS, HAS_ADDEND, ACTIVATION, HAS_RESIDUAL)


@triton.jit
def qlinear_w8a8_fp8_kernel(
    a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, out_ptr, bias_ptr, add_ptr, res_ptr,
    M, N, K,
    stride_am, stride_ak, stride_wn, stride_wk, stride_om, stride_on, stride_dm, stride_dn, stride_rm, stride_rn, keep_ptr, stride_km,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_ADDEND: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    FP8_DOT: tl.constexpr, HAS_KEEP: tl.constexpr = False,
):
    """out = epilogue((qa @ qw^T) * s_tok[M] * s_w[N]) with E4M3 codes (uint8) for both operands."""
    offs_m, offs_n, offs_k, mask_m, mask_n = tile_offsets(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rows_a, n_k = keep_rows(keep_ptr, stride_km, offs_m, mask_m, K, BLOCK_K, HAS_KEEP)
    for k0 in range(0, n_k):
        k_left = K - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=rows_a[:, None] & (offs_k[None, :] < k_left), other=0)
        w = tl.load(w_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0)
        if FP8_DOT:
            acc = tl.dot(a.to(tl.float8e4nv, bitcast=True), w.to(tl.float8e4nv, bitcast=True), acc,
                         max_num_imprecise_acc=BLOCK_K)
        else:
            acc = tl.dot(fp8e4m3_to_f32(a).to(tl.float16), fp8e4m3_to_f32(w).to(tl.float16), acc)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
    s_tok = tl.load(a_scale_ptr + offs_m, mask=mask_m, other=0.0)
    s_w = tl.load(w_scale_ptr + offs_n, mask=mask_n, other=0.0)
    _epilogue(acc, s_tok, s_w, offs_m, offs_n, mask_m, mask_n, out_ptr, bias_ptr, add_ptr, res_ptr,
              stride_om, stride_on, stride_dm, stride_dn, stride_rm, stride_rn,
              HAS_BIAS, HAS_ADDEND, ACTIVATION, HAS_RESIDUAL)


@triton.jit
def qlinear_w4a16_int4_kernel(
    a_ptr, w_ptr, scale_ptr, zero_ptr, out_ptr, bias_ptr, add_ptr, res_ptr,
    M, N, K,
    stride_am, stride_ak, stride_wn, stride_wk, stride_sn, stride_sg, stride_zn, stride_zg,
    stride_om, stride_on, stride_dm, stride_dn, stride_rm, stride_rn, keep_ptr, stride_km,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    GROUP: tl.constexpr, DOT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_ADDEND: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    HAS_KEEP: tl.constexpr = False,
):
    """out = epilogue(x[M, K] @ ((q - z) * s)^T): uint4 codes two per byte [N, K/2] (stride_wk is per
    byte), f16 scales and uint8 zero points per group of GROUP along K."""
    offs_m, offs_n, offs_k, mask_m, mask_n = tile_offsets(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    offs_kb = tl.arange(0, BLOCK_K // 2)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_kb[None, :] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rows_a, n_k = keep_rows(keep_ptr, stride_km, offs_m, mask_m, K, BLOCK_K, HAS_KEEP)
    for k0 in range(0, n_k):
        k_left = K - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=rows_a[:, None] & (offs_k[None, :] < k_left), other=0.0)
        packed = tl.load(w_ptrs, mask=mask_n[:, None] & (offs_kb[None, :] < k_left // 2), other=0)
        q = interleave_nibbles(packed)  # [BLOCK_N, BLOCK_K] int32 0..15
        s = _group_params(scale_ptr, offs_n, mask_n, k0 * BLOCK_K, offs_k, k_left, stride_sn, stride_sg,
                          GROUP, BLOCK_K).to(tl.float32)
        z = _group_params(zero_ptr, offs_n, mask_n, k0 * BLOCK_K, offs_k, k_left, stride_zn, stride_zg,
                          GROUP, BLOCK_K).to(tl.int32)
        w = ((q - z).to(tl.float32) * s)
        if DOT == "fp32":
            acc = tl.dot(a.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
        elif DOT == "fp16":
            acc = tl.dot(a.to(tl.float16), tl.trans(w.to(tl.float16)), acc)
        else:
            acc = tl.dot(a.to(tl.bfloat16), tl.trans(w.to(tl.bfloat16)), acc)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += (BLOCK_K // 2) * stride_wk
    one_m = tl.full((BLOCK_M,), 1.0, tl.float32)
    one_n = tl.full((BLOCK_N,), 1.0, tl.float32)
    _epilogue(acc, one_m, one_n, offs_m, offs_n, mask_m, mask_n, out_ptr, bias_ptr, add_ptr, res_ptr,
              stride_om, stride_on, stride_dm, stride_dn, stride_rm, stride_rn,
              HAS_BIAS, HAS_ADDEND, ACTIVATION, HAS_RESIDUAL)


@triton.jit
def qlinear_w4a8_fp_kernel(
    a_ptr, a_scale_ptr, w_ptr, smax_ptr, shift_ptr, out_ptr, bias_ptr, add_ptr, res_ptr,
    M, N, K,
    stride_am, stride_ak, stride_wn, stride_wk, stride_kn, stride_kg,
    stride_om, stride_on, stride_dm, stride_dn, stride_rm, stride_rn, keep_ptr, stride_km,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    GROUP: tl.constexpr, FP8_DOT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_ADDEND: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    HAS_KEEP: tl.constexpr = False,
):
    """ZeroQuant-FP W4A8: out = epilogue((qa @ (fp4 * 2^-k)^T) * s_tok[M] * s_max[N]); qa are E4M3 codes,
    the weight FP4-E2M1 codes two per byte [N, K/2] with a uint8 shift k per group of GROUP along K."""
    offs_m, offs_n, offs_k, mask_m, mask_n = tile_offsets(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    offs_kb = tl.arange(0, BLOCK_K // 2)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_kb[None, :] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rows_a, n_k = keep_rows(keep_ptr, stride_km, offs_m, mask_m, K, BLOCK_K, HAS_KEEP)
    for k0 in range(0, n_k):
        k_left = K - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=rows_a[:, None] & (offs_k[None, :] < k_left), other=0)
        packed = tl.load(w_ptrs, mask=mask_n[:, None] & (offs_kb[None, :] < k_left // 2), other=0)
        shift = _group_params(shift_ptr, offs_n, mask_n, k0 * BLOCK_K, offs_k, k_left, stride_kn, stride_kg,
                              GROUP, BLOCK_K).to(tl.int32)
        pow2 = ((127 - shift) << 23).to(tl.float32, bitcast=True)  # 2^-k exactly
        w = fp4e2m1_to_f32(interleave_nibbles(packed)) * pow2  # exactly an E4M3 value
        if FP8_DOT:
            acc = tl.dot(a.to(tl.float8e4nv, bitcast=True), tl.trans(f32_to_fp8e4m3(w).to(tl.float8e4nv, bitcast=True)),
                         acc, max_num_imprecise_acc=BLOCK_K)
        else:
            acc = tl.dot(fp8e4m3_to_f32(a).to(tl.float16), tl.trans(w.to(tl.float16)), acc)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += (BLOCK_K // 2) * stride_wk
    s_tok = tl.load(a_scale_ptr + offs_m, mask=mask_m, other=0.0)
    s_max = tl.load(smax_ptr + offs_n, mask=mask_n, other=0.0)
    _epilogue(acc, s_tok, s_max, offs_m, offs_n, mask_m, mask_n, out_ptr, bias_ptr, add_ptr, res_ptr,
              stride_om, stride_on, stride_dm, stride_dn, stride_rm, stride_rn,
              HAS_BIAS, HAS_ADDEND, ACTIVATION, HAS_RESIDUAL)


# ---------------------------------------------------------------- launchers


def _default_fp8_dot(device: torch.device) -> bool:
    if interpreting() or device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def _check_operands(x: torch.Tensor, weight, scheme: str, activation: str):
    """The scheme, after checking that the weight, input and activation fit it (ShapeError naming the fix)."""
    sc = get_scheme(scheme)
    enc = weight.encoding
    if not isinstance(enc, Quantized) or enc.format != sc.weight_format:
        raise ShapeError(f"qlinear {scheme}: weight encoding {enc!r} is not a {sc.weight_format} #quantized weight; "
                         f"encode it with encode_weight(w, {scheme!r})")
    if activation not in ACTIVATIONS:
        raise ShapeError(f"unknown activation {activation!r}; use one of {ACTIVATIONS}")
    N, K = weight.data.shape
    if x.dim() < 1 or x.shape[-1] != K:
        raise ShapeError(f"qlinear: input {tuple(x.shape)} does not fit weight [{N}, {K}] (expects [..., {K}])")
    if sc.weight_format in ("i8", "f8e4m3") and enc.group:
        raise ShapeError(f"qlinear {scheme}: only per-channel weights (group 0) are supported, got group {enc.group}")
    return sc


def qlinear(x: torch.Tensor, weight, scheme: str, bias: torch.Tensor | None = None, *,
            lorc: tuple[torch.Tensor, torch.Tensor] | None = None, activation: str = "none",
            residual: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
            fp8_dot: bool | None = None, hadamard: int | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
    """activation(qlinear_ref(x, weight, bias, lorc)) + residual, with the weight decoded inside the GEMM.

    `weight` is an `encode_weight(w, scheme)` Weight [N, K]; x is [..., K]; lorc = (U [N, r], V [K, r]);
    `fp8_dot` picks the fp8 tensor-core path of the fp8 schemes (default: on a CUDA device of sm_89+,
    never under the interpreter). `keep` [..., 1]: FFN-skip flags of x's rows (see `gemm.linear`).
    """
    if get_scheme(scheme).block:  # MX / NVFP4: activations quantized per block inside the GEMM
        if lorc is not None or hadamard is not None:
            raise ShapeError(f"qlinear {scheme}: block schemes take no LoRC factors nor an online Hadamard")
        return qlinear_block(x, weight, scheme, bias, activation=activation, residual=residual, out_dtype=out_dtype)  # no keep yet
    sc = _check_operands(x, weight, scheme, activation)
    enc, p = weight.encoding, weight.payload
    N, K = weight.data.shape
    lead = tuple(x.shape[:-1])
    x2d = x.reshape(-1, K)
    M = x2d.shape[0]
    out = torch.empty((M, N), dtype=out_dtype or x.dtype, device=x.device)
    bias, residual, _ = epilogue_operands(lead, N, bias=bias, residual=residual)
    if M == 0 or N == 0:
        return out.reshape(*lead, N)

    # activations: per-token codes (schemes with an activation format) or x itself; `hadamard` (a block
    # size) rotates x first, inside the activation quantization kernel (act_quant.py) when there is one
    if hadamard is not None and sc.act_format is None:
        x2d = hadamard_rows(x2d, hadamard)
    if sc.act_format is not None:
        a, a_scale = quantize_activations(x2d, sc.act_format, hadamard)
    else:
        a, a_scale = x2d, None
    addend = None
    if lorc is not None:
        u, v = lorc
        if u.shape[0] != N or v.shape[0] != K or u.shape[1] != v.shape[1]:
            raise ShapeError(f"qlinear: lorc U {tuple(u.shape)} / V {tuple(v.shape)} must be [{N}, r] / [{K}, r]")
        xq = dequantize_activations(a, a_scale, sc.act_format) if a_scale is not None else x2d.float()
        addend = ((xq @ v.float()) @ u.float().T).contiguous()

    res = residual if residual is not None else out
    add = addend if addend is not None else out
    epi = (out, bias if bias is not None else out, add, res)
    kp = keep_view(keep, lead, M) if keep is not None else out
    epi_strides = (out.stride(0), out.stride(1), add.stride(0), add.stride(1), res.stride(0), res.stride(1), kp, kp.stride(0))
    flags = dict(HAS_BIAS=bias is not None, HAS_ADDEND=addend is not None, ACTIVATION=activation,
                 HAS_RESIDUAL=residual is not None, GROUP_M=8, HAS_KEEP=keep is not None)
    use_fp8 = _default_fp8_dot(x.device) if fp8_dot is None else bool(fp8_dot)

    if scheme == "w8a8-int8":
        cfg = qlinear_blocks(M, N, K, 0, "int8")
        codes, s_w = p["codes"], p["scale"].reshape(N).float().contiguous()
        args = (a, a_scale, codes, s_w, *epi, M, N, K, a.stride(0), a.stride(1), codes.stride(0), codes.stride(1),
                *epi_strides)
        kernel, extra = qlinear_w8a8_int8_kernel, {}
    elif scheme == "w8a8-fp8":
        cfg = qlinear_blocks(M, N, K, 0, "fp8" if use_fp8 else "fp16")
        codes, s_w = p["codes"].view(torch.uint8), p["scale"].reshape(N).float().contiguous()
        args = (a, a_scale, codes, s_w, *epi, M, N, K, a.stride(0), a.stride(1), codes.stride(0), codes.stride(1),
                *epi_strides)
        kernel, extra = qlinear_w8a8_fp8_kernel, dict(FP8_DOT=use_fp8)
    elif scheme == "w4a16-int4":
        dot = {torch.float16: "fp16", torch.bfloat16: "fp32" if interpreting() else "bf16"}.get(x.dtype, "fp32")
        group = enc.group or K
        cfg = qlinear_blocks(M, N, K, group, dot)
        codes, s, z = p["codes"], p["scale"], p["zero"]
        args = (a, codes, s, z, *epi, M, N, K, a.stride(0), a.stride(1), codes.stride(0), codes.stride(1),
                s.stride(0), s.stride(1), z.stride(0), z.stride(1), *epi_strides)
        kernel, extra = qlinear_w4a16_int4_kernel, dict(GROUP=group, DOT=dot)
    else:  # w4a8-fp
        group = enc.group or K
        cfg = qlinear_blocks(M, N, K, group, "fp8" if use_fp8 else "fp16")
        codes, s_max, k = p["codes"], p["scale"].reshape(N).float().contiguous(), p["shift"]
        args = (a, a_scale, codes, s_max, k, *epi, M, N, K, a.stride(0), a.stride(1), codes.stride(0), codes.stride(1),
                k.stride(0), k.stride(1), *epi_strides)
        kernel, extra = qlinear_w4a8_fp_kernel, dict(GROUP=group, FP8_DOT=use_fp8)

    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    kernel[grid](*args, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], **flags, **extra,
                 num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out.reshape(*lead, N)
