"""N:M sparse GEMM/GEMV template: `nm_gemm_kernel` reads an `#nm` weight in its packed form (16-bit
kept values + the ceil(log2 M)-bit index stream, `fxforge.ir.nm`) and expands it in registers.

    out[M, N] = epilogue(A[M, K] @ W[N, K]^T),  W given as values [N, KC + tail] and index [N, NB] bytes

For each BLOCK_K tile of dense columns c, block b = c // m, the kernel loads, for t < n, the kept value
b*n + t of every output row and its position (bits (b*n + t)*BITS .. +BITS of the row's index stream,
read from two neighbouring bytes so a 3-bit index may straddle a byte boundary), and keeps the value
where the position equals c % m: the dense tile [BLOCK_K, BLOCK_N] exists only in registers, then one
`tl.dot`. Columns past the last full block (the dense tail) are read straight from the values after the
kept ones. Bandwidth is what it saves (decode / GEMV): the weight bytes read are n/m of the values plus
the index; the tile is re-read n times from L1, not from DRAM.
The epilogue is the dense template's (`gemm.gemm_epilogue`: scale, bias, activation, post-scale, mul,
residual, cast), so `nm_linear` takes the dense `linear` launcher's arguments and a fused GEMM group with an `#nm`
weight renders as `_nm_linear(...)` with the same epilogue (`codegen/template_calls.py`).
`nm_slot_position` (the index-stream read) is shared with the quantized-value kernels (`sparse_qlinear.py`).

Decisions: values are fp16/bf16 (the plain `#nm` payload; quantized kept values: `sparse_qlinear.py`),
the expanded tile is built in fp32 and cast to the activation dtype for the dot (exact: it holds the
16-bit values); BLOCK_K is a multiple of m (so M must divide 32: 2, 4, 8 or 16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.templates.gemm import ACTIVATIONS, dot_options, epilogue_operands, gemm_epilogue, tile_offsets
from fxforge.errors import ShapeError


@triton.jit
def nm_slot_position(idx_ptr, kc, offs_n, in_full, stride_in, NB, BITS: tl.constexpr):
    """Block positions [BLOCK_K, BLOCK_N] of the kept values `kc` (compressed column per dense column)
    of rows `offs_n`: BITS bits at kc*BITS of each row's index stream, read from two neighbouring
    bytes (a 3-bit index may straddle a byte boundary)."""
    bit = kc * BITS
    byte = bit // 8
    row = idx_ptr + offs_n[None, :] * stride_in + byte[:, None]
    lo = tl.load(row, mask=in_full, other=0).to(tl.int32)
    hi = tl.load(row + 1, mask=in_full & ((byte + 1) < NB)[:, None], other=0).to(tl.int32)
    return ((lo | (hi << 8)) >> (bit % 8)[:, None]) & ((1 << BITS) - 1)


@triton.jit
def nm_gemm_kernel(
    a_ptr, v_ptr, idx_ptr, out_ptr, bias_ptr, res_ptr, mul_ptr,
    M, N, K, K_FULL, KC, NB,
    stride_am, stride_ak, stride_vn, stride_in, stride_om, stride_on, stride_rm, stride_rn, stride_mm, stride_mn,
    scale,
    KEEP: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr, HAS_MUL: tl.constexpr = False,
    post_scale=1.0, HAS_POST_SCALE: tl.constexpr = False,
):
    """One program per BLOCK_M x BLOCK_N output tile; KEEP:GROUP is the pattern (n:m)."""
    offs_m, offs_n, offs_k, mask_m, mask_n = tile_offsets(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        cols = k0 * BLOCK_K + offs_k
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + cols[None, :] * stride_ak,
                    mask=mask_m[:, None] & (cols[None, :] < K), other=0.0)
        in_full = (cols < K_FULL)[:, None] & mask_n[None, :]
        blk = cols // GROUP
        within = cols % GROUP
        w = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for t in tl.static_range(KEEP):
            kc = blk * KEEP + t
            val = tl.load(v_ptr + offs_n[None, :] * stride_vn + kc[:, None], mask=in_full, other=0.0)
            pos = nm_slot_position(idx_ptr, kc, offs_n, in_full, stride_in, NB, BITS)
            w = tl.where(pos == within[:, None], val.to(tl.float32), w)
        tail = ((cols >= K_FULL) & (cols < K))[:, None] & mask_n[None, :]
        tval = tl.load(v_ptr + offs_n[None, :] * stride_vn + (KC + cols - K_FULL)[:, None], mask=tail, other=0.0)
        w = tl.where(tail, tval.to(tl.float32), w)
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), w, acc, input_precision=INPUT_PRECISION)
        else:
            acc = tl.dot(a, w.to(a.dtype), acc, input_precision=INPUT_PRECISION)
    gemm_epilogue(acc, scale, offs_m, offs_n, mask_m, mask_n, out_ptr, bias_ptr, res_ptr, mul_ptr,
                  stride_om, stride_on, stride_rm, stride_rn, stride_mm, stride_mn,
                  HAS_BIAS, ACTIVATION, HAS_RESIDUAL, HAS_MUL, post_scale, HAS_POST_SCALE)


def nm_blocks(M: int, m: int) -> dict:
    """Tiles: a small BLOCK_M for decode (GEMV-like M); BLOCK_N x BLOCK_K 32 x 32 (a multiple of every m
    dividing 32): the expansion holds n (value, two index bytes) tiles of gathered pointers at once, and
    64 x 64 spilled (255 registers + 120 B of spills on sm_80)."""
    return {"BLOCK_M": 16 if M <= 16 else 64, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}


def nm_check(x: torch.Tensor, weight, activation: str, quantized: bool) -> tuple[int, int, int, int]:
    """(n, m, N, K) of an `#nm` weight after checking it fits the template and x (ShapeError naming the fix)."""
    enc = weight.encoding
    if getattr(enc, "kind", None) != "nm" or (enc.scheme is not None) != quantized:
        want = "an #nm weight of quantized kept values" if quantized else "a plain #nm weight (16-bit kept values)"
        raise ShapeError(f"the sparse template takes {want}, got {enc!r}; use "
                         + ("nm_qlinear" if not quantized else "nm_linear") + " for the other kind")
    if activation not in ACTIVATIONS:
        raise ShapeError(f"unknown activation {activation!r}; use one of {ACTIVATIONS}")
    n, m = enc.n, enc.m
    N, K = weight.data.shape
    if 32 % m:
        raise ShapeError(f"the sparse template tiles K by 32: M={m} must divide 32 (2, 4, 8, 16)")
    if x.dim() < 1 or x.shape[-1] != K:
        raise ShapeError(f"sparse linear: x {tuple(x.shape)} does not fit the weight [{N}, {K}]")
    return n, m, N, K


def nm_linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None, *, activation: str = "none",
              residual: torch.Tensor | None = None, scale: float = 1.0, out_dtype: torch.dtype | None = None,
              mul: torch.Tensor | None = None, post_scale: float = 1.0) -> torch.Tensor:
    """activation(scale * x @ W.T + bias) * post_scale * mul + residual with W a plain `#nm` `Weight` (16-bit kept
    values): the dense `linear` template's contract, the weight read compressed."""
    from fxforge.ir.nm import index_bits

    n, m, N, K = nm_check(x, weight, activation, quantized=False)
    values, index = weight.payload["values"].contiguous(), weight.payload["index"].contiguous()
    lead = tuple(x.shape[:-1])
    a = x.reshape(-1, K)
    M = a.shape[0]
    out = torch.empty((M, N), dtype=out_dtype or x.dtype, device=x.device)
    bias, residual, mul = epilogue_operands(lead, N, bias=bias, residual=residual, mul=mul)
    if M == 0 or N == 0:
        return out.reshape(*lead, N)
    cfg = nm_blocks(M, m)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    res = residual if residual is not None else out
    mt = mul if mul is not None else out
    nm_gemm_kernel[grid](
        a, values, index, out, bias if bias is not None else out, res, mt,
        M, N, K, (K // m) * m, (K // m) * n, index.shape[1],
        a.stride(0), a.stride(1), values.stride(0), index.stride(0), out.stride(0), out.stride(1), res.stride(0), res.stride(1),
        mt.stride(0), mt.stride(1), float(scale),
        KEEP=n, GROUP=m, BITS=index_bits(m), BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=8, HAS_BIAS=bias is not None, ACTIVATION=activation, HAS_RESIDUAL=residual is not None,
        HAS_MUL=mul is not None, post_scale=float(post_scale), HAS_POST_SCALE=post_scale != 1.0,
        **dot_options(x.dtype, values.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out.reshape(*lead, N)


def nm_gemm_spec(dtype: str, M: int, N: int, K: int, n: int, m: int, *, bias: bool = False, mul: bool = False,
                 activation: str = "none", residual: bool = False, post_scale: bool = False) -> dict:
    """Build spec (`fxforge.codegen.build.build_spec`) of `nm_gemm_kernel` for contiguous operands."""
    from fxforge.ir.nm import index_bits

    t = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[dtype]
    vt = "bf16" if dtype == "bfloat16" else "fp16"
    cfg = nm_blocks(M, m)
    sig = {"a_ptr": f"*{t}", "v_ptr": f"*{vt}", "idx_ptr": "*u8", "out_ptr": f"*{t}", "bias_ptr": f"*{t}", "res_ptr": f"*{t}",
           "mul_ptr": f"*{t}", "M": "i32", "N": "i32", "K": "i32", "K_FULL": "i32", "KC": "i32", "NB": "i32",
           "stride_am": "i32", "stride_vn": "i32", "stride_in": "i32", "stride_om": "i32", "stride_rm": "i32",
           "stride_mm": "i32", "scale": "fp32", "post_scale": "fp32"}
    const = {"stride_ak": 1, "stride_on": 1, "stride_rn": 1, "stride_mn": 1, "HAS_MUL": mul, "KEEP": n, "GROUP": m, "BITS": index_bits(m),
             "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], "GROUP_M": 8,
             "HAS_BIAS": bias, "ACTIVATION": activation, "HAS_RESIDUAL": residual, "UPCAST": dtype == "float32",
             "INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32", "HAS_POST_SCALE": post_scale}
    return {"module": __name__, "kernel": "nm_gemm_kernel", "signature": sig, "constexprs": const,
            "divisible": ["N", "K", "stride_am", "stride_om"], "num_warps": cfg["num_warps"],
            "num_stages": cfg["num_stages"], "label": f"nm_gemm {n}:{m} {dtype} {M}x{N}x{K}"}
