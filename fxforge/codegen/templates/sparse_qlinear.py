"""N:M sparse GEMMs with quantized kept values: `nm_qlinear_kernel` runs a `qlinear` whose weight is an
`#nm` weight of a scheme (`fxforge.ir.nm.encode_nm_quantized`: the compressed [N, KC + tail] matrix of
kept values is a `#quantized` weight of the scheme, plus the index stream), decoding and expanding it
in registers, never in memory.

    out[M, N] = qlinear epilogue(A[M, K] @ W[N, K]^T),  W = expand(decode(codes), index)

Per BLOCK_K tile of dense columns and kept slot t < n, the kernel loads the kept code b*n + t of every
output row (int8; E4M3 byte; a nibble of int4 / FP4 codes packed two per byte) and its block position
(`sparse_gemm.nm_slot_position`), decodes it into the dot's domain, and keeps it where the position is
the column's place in its block:
- "i8" (w8a8-int8): int8 codes; pruned places are code 0 = 0; int8 x int8 -> int32 `tl.dot` with the
  per-token activation codes; epilogue acc * s_tok[m] * s_w[n] (the dense W8A8 kernel's math, exactly).
- "f8" (w8a8-fp8): E4M3 codes decoded to fp32 then fp16 (exact), pruned places 0; fp16 dot against
  the decoded activation codes; epilogue * s_tok * s_w.
- "i4" (w4a16-int4): w = (q - z) * s of the kept value's group (groups count kept values:
  `group` of the encoding), pruned places 0; dot in DOT ("fp32" ieee, "fp16", "bf16") against x itself.
- "f4" (w4a8-fp): w = fp4(q) * 2^-k of the kept value's group (exactly an E4M3 value), fp16 dot
  against the decoded activation codes; epilogue * s_tok * s_max.
The dense tail (columns past the last full m-block) is read straight after the kept values.
The epilogue is the dense qlinear template's (`qlinear._epilogue`: scales, bias, activation,
residual, cast); activations are quantized per token by `act_quant.quantize_activations` as there.

Decisions: one kernel, the element format a constexpr (the expansion and index reads are the same for
all); the fp8 schemes use the exact fp16 dot everywhere (no FP8 tensor-core path for the sparse kernel
yet); LoRC and grouped 8-bit weights are not taken (the fusion rule leaves them on the host, decoded);
tiles are `sparse_gemm.nm_blocks` (BLOCK_K 32: a multiple of every m dividing 32, and the int8 dot's
minimum K).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.decode import fp4e2m1_to_f32, fp8e4m3_to_f32
from fxforge.codegen.templates.act_quant import quantize_activations
from fxforge.codegen.templates.gemm import epilogue_operands, interpreting, tile_offsets
from fxforge.codegen.templates.qlinear import _epilogue
from fxforge.codegen.templates.sparse_gemm import nm_blocks, nm_check, nm_slot_position
from fxforge.errors import ShapeError
from fxforge.ir.lowp_ops import get_scheme

# scheme -> the kernel's element format WFMT
FORMATS = {"w8a8-int8": "i8", "w8a8-fp8": "f8", "w4a16-int4": "i4", "w4a8-fp": "f4"}


@triton.jit
def _kept_values(c_ptr, s_ptr, z_ptr, offs_n, kc, mask, stride_cn, stride_sn, stride_sg, stride_zn, stride_zg,
                 WFMT: tl.constexpr, QGROUP: tl.constexpr):
    """The kept values `kc` [BLOCK_K, BLOCK_N] (compressed column per dense column) of rows `offs_n`,
    decoded into the dot's domain: int32 codes (i8), fp32 values (f8, i4, f4 without s_max)."""
    if WFMT == "i8" or WFMT == "f8":
        code = tl.load(c_ptr + offs_n[None, :] * stride_cn + kc[:, None], mask=mask, other=0)
        if WFMT == "i8":
            v = code.to(tl.int32)
        else:
            v = fp8e4m3_to_f32(code)
    else:
        byte = tl.load(c_ptr + offs_n[None, :] * stride_cn + (kc // 2)[:, None], mask=mask, other=0).to(tl.int32)
        q = (byte >> ((kc % 2) * 4)[:, None]) & 0xF
        if QGROUP > 0:
            g = (kc // QGROUP)[:, None]
        else:
            g = tl.zeros_like(kc)[:, None]
        p = tl.load(s_ptr + offs_n[None, :] * stride_sn + g * stride_sg, mask=mask, other=0)
        if WFMT == "i4":
            z = tl.load(z_ptr + offs_n[None, :] * stride_zn + g * stride_zg, mask=mask, other=0).to(tl.int32)
            v = (q - z).to(tl.float32) * p.to(tl.float32)
        else:
            v = fp4e2m1_to_f32(q) * ((127 - p.to(tl.int32)) << 23).to(tl.float32, bitcast=True)  # * 2^-k exactly
    return v


@triton.jit
def nm_qlinear_kernel(
    a_ptr, a_scale_ptr, c_ptr, s_ptr, z_ptr, w_scale_ptr, idx_ptr, out_ptr, bias_ptr, res_ptr,
    M, N, K, K_FULL, KC, NB,
    stride_am, stride_ak, stride_cn, stride_sn, stride_sg, stride_zn, stride_zg, stride_in,
    stride_om, stride_on, stride_rm, stride_rn,
    KEEP: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr, WFMT: tl.constexpr, QGROUP: tl.constexpr,
    DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    """One program per BLOCK_M x BLOCK_N output tile; KEEP:GROUP is the pattern (n:m), WFMT the codes."""
    offs_m, offs_n, offs_k, mask_m, mask_n = tile_offsets(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    if WFMT == "i8":
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        cols = k0 * BLOCK_K + offs_k
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + cols[None, :] * stride_ak,
                    mask=mask_m[:, None] & (cols[None, :] < K), other=0)
        in_full = (cols < K_FULL)[:, None] & mask_n[None, :]
        blk = cols // GROUP
        within = cols % GROUP
        if WFMT == "i8":
            w = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.int32)
        else:
            w = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for t in tl.static_range(KEEP):
            kc = blk * KEEP + t
            val = _kept_values(c_ptr, s_ptr, z_ptr, offs_n, kc, in_full, stride_cn, stride_sn, stride_sg,
                               stride_zn, stride_zg, WFMT, QGROUP)
            pos = nm_slot_position(idx_ptr, kc, offs_n, in_full, stride_in, NB, BITS)
            w = tl.where(pos == within[:, None], val, w)
        tail = ((cols >= K_FULL) & (cols < K))[:, None] & mask_n[None, :]
        tval = _kept_values(c_ptr, s_ptr, z_ptr, offs_n, KC + cols - K_FULL, tail, stride_cn, stride_sn, stride_sg,
                            stride_zn, stride_zg, WFMT, QGROUP)
        w = tl.where(tail, tval, w)
        if WFMT == "i8":
            acc = tl.dot(a, w.to(tl.int8), acc, out_dtype=tl.int32)
        elif WFMT == "i4":
            if DOT == "fp32":
                acc = tl.dot(a.to(tl.float32), w, acc, input_precision="ieee")
            elif DOT == "fp16":
                acc = tl.dot(a.to(tl.float16), w.to(tl.float16), acc)
            else:
                acc = tl.dot(a.to(tl.bfloat16), w.to(tl.bfloat16), acc)
        else:  # f8 / f4: E4M3 activation codes; every E4M3 value and these weights are exact in fp16
            acc = tl.dot(fp8e4m3_to_f32(a).to(tl.float16), w.to(tl.float16), acc)
    if WFMT == "i4":
        s_tok = tl.full((BLOCK_M,), 1.0, tl.float32)
        s_w = tl.full((BLOCK_N,), 1.0, tl.float32)
    else:
        s_tok = tl.load(a_scale_ptr + offs_m, mask=mask_m, other=0.0)
        s_w = tl.load(w_scale_ptr + offs_n, mask=mask_n, other=0.0)
    _epilogue(acc.to(tl.float32), s_tok, s_w, offs_m, offs_n, mask_m, mask_n, out_ptr, bias_ptr, out_ptr, res_ptr,
              stride_om, stride_on, stride_om, stride_on, stride_rm, stride_rn,
              HAS_BIAS, False, ACTIVATION, HAS_RESIDUAL)


def _operands(weight, wfmt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, group params, zero points, per-row scale) as the kernel reads them (unused ones: a stand-in)."""
    p = weight.payload
    codes = p["codes"].view(torch.uint8) if wfmt == "f8" else p["codes"]
    N = codes.shape[0]
    if wfmt in ("i8", "f8"):
        return codes, codes, codes, p["scale"].reshape(N).float().contiguous()
    if wfmt == "i4":
        return codes, p["scale"], p["zero"], codes
    return codes, p["shift"], codes, p["scale"].reshape(N).float().contiguous()  # f4: shifts, s_max


def nm_qlinear(x: torch.Tensor, weight, scheme: str, bias: torch.Tensor | None = None, *,
               activation: str = "none", residual: torch.Tensor | None = None,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """activation(qlinear_ref(x, decode(weight), bias)) + residual for an `#nm` weight of quantized kept
    values (`encode_nm_quantized`), decoded and expanded inside the GEMM (the `qlinear` launcher's contract)."""
    n, m, N, K = nm_check(x, weight, activation, quantized=True)
    if weight.encoding.scheme != scheme:
        raise ShapeError(f"nm_qlinear {scheme}: the weight's kept values are {weight.encoding.scheme}; pass that scheme")
    from fxforge.ir.nm import index_bits

    sc, wfmt = get_scheme(scheme), FORMATS[scheme]
    group = weight.encoding.group
    if wfmt in ("i8", "f8") and group:
        raise ShapeError(f"nm_qlinear {scheme}: only per-channel 8-bit kept values (group 0), got group {group}")
    lead = tuple(x.shape[:-1])
    x2d = x.reshape(-1, K)
    M = x2d.shape[0]
    out = torch.empty((M, N), dtype=out_dtype or x.dtype, device=x.device)
    bias, residual, _ = epilogue_operands(lead, N, bias=bias, residual=residual)
    if M == 0 or N == 0:
        return out.reshape(*lead, N)
    a, a_scale = quantize_activations(x2d, sc.act_format) if sc.act_format else (x2d, None)
    codes, params, zero, s_row = _operands(weight, wfmt)
    index = weight.payload["index"].contiguous()
    dot = {torch.float16: "fp16", torch.bfloat16: "fp32" if interpreting() else "bf16"}.get(x.dtype, "fp32")
    cfg = nm_blocks(M, m)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    res = residual if residual is not None else out
    nm_qlinear_kernel[grid](
        a, a_scale if a_scale is not None else out, codes, params, zero, s_row, index, out,
        bias if bias is not None else out, res,
        M, N, K, (K // m) * m, (K // m) * n, index.shape[1],
        a.stride(0), a.stride(1), codes.stride(0), params.stride(0), params.stride(-1), zero.stride(0), zero.stride(-1),
        index.stride(0), out.stride(0), out.stride(1), res.stride(0), res.stride(1),
        KEEP=n, GROUP=m, BITS=index_bits(m), WFMT=wfmt, QGROUP=group, DOT=dot,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=8,
        HAS_BIAS=bias is not None, ACTIVATION=activation, HAS_RESIDUAL=residual is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out.reshape(*lead, N)


def nm_qlinear_spec(scheme: str, x_dtype: str, M: int, N: int, K: int, n: int, m: int, *, group: int = 0,
                    bias: bool = False, activation: str = "none", residual: bool = False) -> dict:
    """Build spec (`fxforge.codegen.build.build_spec`) of `nm_qlinear_kernel` for contiguous operands."""
    from fxforge.ir.nm import index_bits

    wfmt = FORMATS[scheme]
    t = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[x_dtype]
    a_t = {"i8": "i8", "f8": "u8"}.get(wfmt, "u8" if wfmt == "f4" else t)
    code_t = "i8" if wfmt == "i8" else "u8"
    param_t = {"i4": "fp16", "f4": "u8"}.get(wfmt, "u8")
    cfg = nm_blocks(M, m)
    sig = {"a_ptr": f"*{a_t}", "a_scale_ptr": "*fp32", "c_ptr": f"*{code_t}", "s_ptr": f"*{param_t}", "z_ptr": "*u8",
           "w_scale_ptr": "*fp32", "idx_ptr": "*u8", "out_ptr": f"*{t}", "bias_ptr": f"*{t}", "res_ptr": f"*{t}",
           "M": "i32", "N": "i32", "K": "i32", "K_FULL": "i32", "KC": "i32", "NB": "i32",
           "stride_am": "i32", "stride_cn": "i32", "stride_sn": "i32", "stride_zn": "i32", "stride_in": "i32",
           "stride_om": "i32", "stride_rm": "i32"}
    dot = {"float16": "fp16", "bfloat16": "bf16"}.get(x_dtype, "fp32")
    const = {"stride_ak": 1, "stride_sg": 1, "stride_zg": 1, "stride_on": 1, "stride_rn": 1, "KEEP": n, "GROUP": m,
             "BITS": index_bits(m), "WFMT": wfmt, "QGROUP": group, "DOT": dot, "BLOCK_M": cfg["BLOCK_M"],
             "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], "GROUP_M": 8, "HAS_BIAS": bias,
             "ACTIVATION": activation, "HAS_RESIDUAL": residual}
    return {"module": __name__, "kernel": "nm_qlinear_kernel", "signature": sig, "constexprs": const,
            "divisible": ["N", "K", "stride_am", "stride_om"], "num_warps": cfg["num_warps"],
            "num_stages": cfg["num_stages"], "label": f"nm_qlinear {scheme} {n}:{m} {x_dtype} {M}x{N}x{K} g{group}"}
