"""Per-token activation quantization for the A8 qlinear schemes, as a Triton row kernel.

`act_quant_kernel`: per-token (per row) symmetric activation quantization, one program per row:
  s = amax / max(format) (1 for an all-zero row), v = x / s with IEEE division (`div_rn`), then
  int8: round half to even (floor-based, exact) and clamp to +-127; E4M3: saturating round-to-nearest-
  even encoder written with INTEGER bit arithmetic (`f32_to_fp8e4m3`). Decided: integer encoding for
  both the interpreter and GPUs, one code path that is bit-exact with `formats.encode_float` (the
  interpreter's fp32 -> fp8 cast is wrong; a GPU's cvt would be right but saves nothing measurable in
  an elementwise pre-pass over M x K). Codes and the f32 row scales go to memory (M x K bytes).

`act_quant_hadamard_kernel`: the same with an online (block-)Hadamard rotation of the row first
(`hadamard(x) {block}` feeding an A8 qlinear, fused): the row is walked block by block twice, each
block transformed in registers by `templates.hadamard.hadamard_block` (amax pass, then quantize
pass), so the rotated activations never go to memory. Decided: recompute the transform in the second
pass rather than keep the row in registers, so any K works with one block-sized tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.blocks import row_blocks
from fxforge.codegen.templates.hadamard import base_table, block_params, hadamard_block, launch_options
from fxforge.ir import formats
from fxforge.ir.hadamard import effective_block


@triton.jit
def round_half_even(v):
    """fp32 -> fp32 rounded to the nearest integer, ties to even (torch.round); exact, no libdevice."""
    r = tl.floor(v)
    d = v - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, r + 1.0, r)


@triton.jit
def f32_to_fp8e4m3(v):
    """fp32 -> E4M3FN code (uint8): saturating round to nearest even, sign kept (finite inputs),
    by integer bit arithmetic; bit-exact with `formats.encode_float(v, "f8e4m3")`."""
    sign = (v.to(tl.int32, bitcast=True) >> 24) & 0x80
    mag = tl.minimum(tl.abs(v), 448.0)
    mb = mag.to(tl.int32, bitcast=True)
    e = (mb >> 23) - 127
    m = mb & 0x7FFFFF
    keep = m >> 20
    rem = m & 0xFFFFF
    up = (rem > 0x80000) | ((rem == 0x80000) & ((keep & 1) == 1))
    normal = ((e + 7) << 3) + keep + up.to(tl.int32)  # a mantissa carry rolls into the exponent
    sub = round_half_even(mag * 512.0).to(tl.int32)  # below 2^-6: steps of 2^-9 (8 = the smallest normal)
    code = tl.where(e < -6, sub, normal) | sign
    return code.to(tl.uint8)


@triton.jit
def act_quant_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_xk, stride_qm,
                     FORMAT: tl.constexpr, MAX_VALUE: tl.constexpr, BLOCK: tl.constexpr):
    """Per-token quantization of row program_id(0): q[m, :] = encode(x[m, :] / s[m]), s = amax / MAX_VALUE."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        x = tl.load(x_row + (k0 + offs) * stride_xk, mask=(k0 + offs) < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    s = tl.math.div_rn(tl.max(amax, axis=0), MAX_VALUE)
    s = tl.where(s > 0.0, s, 1.0)
    tl.store(s_ptr + row, s)
    for k0 in range(0, K, BLOCK):
        mask = (k0 + offs) < K
        x = tl.load(x_row + (k0 + offs) * stride_xk, mask=mask, other=0.0).to(tl.float32)
        v = tl.math.div_rn(x, s + tl.zeros_like(x))
        if FORMAT == "i8":
            q = tl.minimum(tl.maximum(round_half_even(v), -127.0), 127.0).to(tl.int8)
        else:
            q = f32_to_fp8e4m3(v)
        tl.store(q_ptr + row * stride_qm + k0 + offs, q, mask=mask)


@triton.jit
def quant_codes(v, FORMAT: tl.constexpr):
    if FORMAT == "i8":
        q = tl.minimum(tl.maximum(round_half_even(v), -127.0), 127.0).to(tl.int8)
    else:
        q = f32_to_fp8e4m3(v)
    return q


@triton.jit
def act_quant_hadamard_kernel(x_ptr, q_ptr, s_ptr, hm_ptr, K, stride_xm, stride_qm,
                              FORMAT: tl.constexpr, MAX_VALUE: tl.constexpr, M_BASE: tl.constexpr,
                              MP: tl.constexpr, P: tl.constexpr, LOG: tl.constexpr, SCALE: tl.constexpr):
    """q[m, :] = encode(hadamard(x[m, :]) / s[m]), s = amax(hadamard(x[m, :])) / MAX_VALUE; x rows contiguous."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    rows = tl.arange(0, MP)[:, None]
    cols = tl.arange(0, P)[None, :]
    amax = tl.zeros((MP, P), dtype=tl.float32)
    for k0 in range(0, K, M_BASE * P):
        y = hadamard_block(x_row + k0, hm_ptr, M_BASE, MP, P, LOG, SCALE)
        amax = tl.maximum(amax, tl.abs(y))
    s = tl.math.div_rn(tl.max(tl.max(amax, axis=1), axis=0), MAX_VALUE)
    s = tl.where(s > 0.0, s, 1.0)
    tl.store(s_ptr + row, s)
    for k0 in range(0, K, M_BASE * P):
        y = hadamard_block(x_row + k0, hm_ptr, M_BASE, MP, P, LOG, SCALE)
        q = quant_codes(tl.math.div_rn(y, s + tl.zeros_like(y)), FORMAT)
        tl.store(q_ptr + row * stride_qm + k0 + rows * P + cols, q, mask=rows < M_BASE)


def quantize_activations(x2d: torch.Tensor, fmt: str, hadamard: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token codes (int8 for "i8", uint8 E4M3 codes for "f8e4m3") [M, K] and f32 scales [M] of x [M, K];
    `hadamard`: a block size (0: the whole row) to rotate each row by first (`hadamard(x) {block}`), None: none."""
    M, K = x2d.shape
    q = torch.empty((M, K), dtype=torch.int8 if fmt == "i8" else torch.uint8, device=x2d.device)
    s = torch.empty((M,), dtype=torch.float32, device=x2d.device)
    if M == 0:
        return q, s
    if hadamard is not None:
        b = effective_block(K, hadamard)
        prm = block_params(b)
        x2d = x2d.contiguous()
        act_quant_hadamard_kernel[(M,)](x2d, q, s, base_table(prm["M_BASE"], x2d.device), K, x2d.stride(0),
                                        q.stride(0), FORMAT=fmt, MAX_VALUE=formats.get_format(fmt).max_value,
                                        **prm, **launch_options(b))
        return q, s
    block = row_blocks(min(K, 4096))
    act_quant_kernel[(M,)](x2d, q, s, K, x2d.stride(0), x2d.stride(1), q.stride(0),
                           FORMAT=fmt, MAX_VALUE=formats.get_format(fmt).max_value, BLOCK=block["BLOCK"],
                           num_warps=block["num_warps"])
    return q, s


def dequantize_activations(q: torch.Tensor, s: torch.Tensor, fmt: str) -> torch.Tensor:
    """f32 values of per-token codes (the reference's fake-quantized activations)."""
    vals = q.float() if fmt == "i8" else formats.decode_fp8(q, "f8e4m3")
    return vals * s[:, None]


def hadamard_act_quant_spec(fmt: str, K: int, block: int, x_dtype: str = "float16") -> dict:
    """A `fxforge.codegen.build` spec of `act_quant_hadamard_kernel` for rows of K elements, blocks of `block`."""
    prm = block_params(effective_block(K, block))
    t = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[x_dtype]
    sig = {"x_ptr": f"*{t}", "q_ptr": "*i8" if fmt == "i8" else "*u8", "s_ptr": "*fp32", "hm_ptr": "*fp32",
           "K": "i32", "stride_xm": "i32", "stride_qm": "i32"}
    const = {"FORMAT": fmt, "MAX_VALUE": formats.get_format(fmt).max_value, **prm}
    return {"module": __name__, "kernel": "act_quant_hadamard_kernel", "signature": sig, "constexprs": const,
            "divisible": ["K", "stride_xm", "stride_qm"], "num_stages": 1, **launch_options(prm["M_BASE"] * prm["P"]),
            "label": f"act_quant+hadamard {fmt} {x_dtype} K={K} block={block}"}
