"""The `hadamard` op as a Triton kernel: a fast Walsh-Hadamard transform per block, in registers.

One program transforms one block of `b = m * P` elements of one row (P = 2^LOG, m in {1, 12, 20, 28};
see `fxforge.ir.hadamard` for the matrices). The block is loaded as an [MP, P] tile (row a = elements
a*P .. a*P+P-1; MP = m padded to a power of two, padding rows masked to 0), and:
1. `fwht_rows`: LOG butterfly stages along the last axis, each a reshape to [MP, P/2h, 2, h], a permute
   that puts the pair axis last, `tl.split` into the two halves and `tl.join` of (a + b, a - b):
   P log P additions, no multiplications, no memory traffic;
2. for m > 1, the m x m mix y = H_m^T @ X: m rank-1 updates (row a of the tile, extracted by a masked
   sum, times row a of H_m loaded from memory). Decided over `tl.dot`: exact fp32 on every target and
   no 16-wide minimum on P (blocks of 12, 24, 48 exist);
3. the 1/sqrt(b) normalisation, a cast to the output dtype, a masked store.

`hadamard(x, block)` is the launcher (grid: rows x blocks per row); `fwht_rows` and `mix_base` are
reused by the fused per-token activation quantization (`act_quant.act_quant_hadamard_kernel`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fxforge.codegen.blocks import next_pow2
from fxforge.ir.errors import ShapeError
from fxforge.ir.hadamard import base_matrix, effective_block, factor


@triton.jit
def fwht_rows(x, MP: tl.constexpr, P: tl.constexpr, LOG: tl.constexpr):
    """Unnormalised Walsh-Hadamard transform of each row of an [MP, P] fp32 tile (P = 2^LOG)."""
    for i in tl.static_range(LOG):
        y = tl.reshape(x, [MP, P // (2 << i), 2, 1 << i])
        y = tl.permute(y, [0, 1, 3, 2])
        a, b = tl.split(y)
        y = tl.permute(tl.join(a + b, a - b), [0, 1, 3, 2])
        x = tl.reshape(y, [MP, P])
    return x


@triton.jit
def mix_base(x, hm_ptr, M_BASE: tl.constexpr, MP: tl.constexpr, P: tl.constexpr):
    """H_m^T @ x for an [MP, P] tile whose first M_BASE rows are live; H_m is [M_BASE, M_BASE] row-major."""
    rows = tl.arange(0, MP)[:, None]
    acc = tl.zeros((MP, P), dtype=tl.float32)
    for a in tl.static_range(M_BASE):
        x_a = tl.sum(tl.where(rows == a, x, 0.0), axis=0)  # row a of the tile: [P]
        h_a = tl.load(hm_ptr + a * M_BASE + rows, mask=rows < M_BASE, other=0.0)  # H_m[a, :] as a column
        acc += h_a * x_a[None, :]
    return acc


@triton.jit
def hadamard_block(x_ptr, hm_ptr, M_BASE: tl.constexpr, MP: tl.constexpr, P: tl.constexpr,
                   LOG: tl.constexpr, SCALE: tl.constexpr):
    """Load one contiguous block at x_ptr and return its normalised transform as an [MP, P] fp32 tile."""
    rows = tl.arange(0, MP)[:, None]
    cols = tl.arange(0, P)[None, :]
    x = tl.load(x_ptr + rows * P + cols, mask=rows < M_BASE, other=0.0).to(tl.float32)
    x = fwht_rows(x, MP, P, LOG)
    if M_BASE > 1:
        x = mix_base(x, hm_ptr, M_BASE, MP, P)
    return x * SCALE


@triton.jit
def hadamard_kernel(x_ptr, y_ptr, hm_ptr, n_blocks, stride_xm, stride_ym,
                    M_BASE: tl.constexpr, MP: tl.constexpr, P: tl.constexpr, LOG: tl.constexpr,
                    SCALE: tl.constexpr):
    """y[row, block] = x[row, block] @ H_b / sqrt(b) for program (row * n_blocks + block)."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_blocks
    start = (pid % n_blocks) * (M_BASE * P)
    y = hadamard_block(x_ptr + row * stride_xm + start, hm_ptr, M_BASE, MP, P, LOG, SCALE)
    rows = tl.arange(0, MP)[:, None]
    cols = tl.arange(0, P)[None, :]
    tl.store(y_ptr + row * stride_ym + start + rows * P + cols, y.to(y_ptr.dtype.element_ty), mask=rows < M_BASE)


def block_params(b: int) -> dict:
    """The constexprs of a block of b elements: M_BASE, MP, P, LOG, SCALE."""
    f = factor(b)
    if f is None:
        raise ShapeError(f"hadamard: block {b} is not 2^k * one of (1, 12, 20, 28)")
    m, p = f
    return dict(M_BASE=m, MP=next_pow2(m), P=p, LOG=p.bit_length() - 1, SCALE=1.0 / math.sqrt(b))


def base_table(m: int, device: torch.device) -> torch.Tensor:
    """H_m (unnormalised, fp32, row-major) for the mix step; a 1-element dummy for m = 1."""
    return base_matrix(m).to(device=device, dtype=torch.float32).contiguous()


def launch_options(b: int) -> dict:
    return dict(num_warps=1 if b <= 256 else 2 if b <= 1024 else 4 if b <= 4096 else 8)


def hadamard(x: torch.Tensor, block: int = 0) -> torch.Tensor:
    """The kernel form of `hadamard_ref(x, block=block)` (output in x's dtype)."""
    n = x.shape[-1]
    b = effective_block(n, block)
    prm = block_params(b)
    x2d = x.reshape(-1, n).contiguous()
    y = torch.empty_like(x2d)
    rows = x2d.shape[0]
    if rows and n:
        hm = base_table(prm["M_BASE"], x.device)
        hadamard_kernel[(rows * (n // b),)](x2d, y, hm, n // b, x2d.stride(0), y.stride(0), **prm, **launch_options(b))
    return y.reshape(x.shape)


def hadamard_spec(b: int, x_dtype: str = "float16") -> dict:
    """A `fxforge.codegen.build` spec of `hadamard_kernel` for blocks of b elements."""
    t = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[x_dtype]
    sig = {"x_ptr": f"*{t}", "y_ptr": f"*{t}", "hm_ptr": "*fp32", "n_blocks": "i32", "stride_xm": "i32",
           "stride_ym": "i32"}
    return {"module": __name__, "kernel": "hadamard_kernel", "signature": sig, "constexprs": block_params(b),
            "divisible": ["stride_xm", "stride_ym"], "num_stages": 1, **launch_options(b),
            "label": f"hadamard {x_dtype} block={b}"}
