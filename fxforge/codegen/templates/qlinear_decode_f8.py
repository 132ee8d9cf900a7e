"""Decode-shaped W4A8 GEMM on the FP8 tensor cores (sm_90): FP4 weights in the "f4w128e" layout become E4M3 bytes
in registers by 5 integer instructions per 8 weights, and meet x's E4M3 codes in a wgmma.

This module owns `qlinear_w4_f8_decode_kernel`, its `launch` (which `qlinear_decode.qlinear_w4_decode` calls for
that layout, after planning the prologue, split-K and buffers as for its own kernel) and its build spec
`w4_f8_decode_spec`. The reference is the
fp16 decode kernel's (`lowp_ops.qlinear_ref` on `decode_weight`): x is quantized per token to E4M3 as the reference
does, the products E4M3 x E2M1 are exact, and only the sums' order and precision differ.

Why: the fp16 kernel (`qlinear_decode`) spends 9 instructions per 8 FP4 weights placing them into fp16 halves, and
a group narrower than its 128-wide K tile (w4a8-fp's default 32) costs an HMUL2 per decoded pair on top: 2.1-2.5
SASS instructions per weight past batch 2. Here:
- "f4w128e" (`weight_layouts`): word j = 4q + g of a K tile holds the 8 weights thread q of a wgmma E4M3 A fragment
  needs for K block g (32 columns): byte b holds columns 32g + 4q + b (at E4M3's bits: `w & 0x9C9C9C9C` is the
  E2M1 value times 2^-6 exactly, subnormal 0.5 included) and 32g + 16 + 4q + b (`((w & 0x23232323) << 2) |
  ((w >> 2) & 0x10101010)`).
- `dequant_f8_asm` decodes the 4 words of a thread's row (one per K block) in one inline-asm call of pack 4: its 8
  outputs are the fragment registers. The pack groups the 4 consecutive words of the thread's register order, so
  the kernel relies on Triton giving the word tile the fragment's order (j = 4q + g: registers g, lanes q), which
  `f8_pack_order_ok` checks on the built kernel's TTGIR (the build tests run it for Triton 3.6 and the newest).
  The interpreter runs `dequant_f8_portable`, the same values by integer ops.
- Each 32-wide K block is its own wgmma (fresh accumulator), scaled by its group's factor 2^(6 - shift) in one
  FFMA per accumulator element (BLOCK_M / 32 per weight), so groups of 32 cost no per-weight multiply; groups of 128
  or more chain the 4 wgmmas and scale once per tile.
- x: at M <= 16 the prologue (`qlinear_decode_fuse.prologue_rows`) writes the E4M3 codes as fp8 bytes; prefill takes
  `quantize_activations`' codes as they are. BLOCK_M is 16 at M <= 16 (Triton 3.6 runs an 8-column fp8 dot on the
  fp16 MMA), 64 past it.
- GPUs without FP8 MMA (before sm_89) re-encode the weight to "f4w128" once (cached) and take the fp16 kernel.
Measured (`benchmarks/qdecode_sass.py`, N = K = 4096, sm_90): see benchmarks/results/qdecode_sass-*.md.
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from fxforge.codegen.blocks import decode_split
from fxforge.codegen.templates.qlinear_decode_config import decode_operand, split_plan
from fxforge.codegen.templates.qlinear_decode_fuse import block_factors, decode_epilogue, k_window, prologue_rows, quarters
from fxforge.codegen.templates.split_k import split_sum
from fxforge.ir.weight_layouts import fp8_operand, to_decode_layout

F8_PTX = tl.constexpr("\n".join(["{", ".reg .b32 c, y;"] + [line for i in range(4) for line in (
    f"lop3.b32 ${2 * i}, ${8 + i}, 0x9C9C9C9C, 0, 0xC0;", f"lop3.b32 c, ${8 + i}, 0x23232323, 0, 0xC0;",
    f"shr.u32 y, ${8 + i}, 2;", "shl.b32 c, c, 2;", f"lop3.b32 ${2 * i + 1}, c, y, 0x10101010, 0xF8;")] + ["}"]))
F8_CONSTRAINTS = tl.constexpr(",".join(["=r"] * 8 + ["r"] * 4))


@triton.jit
def dequant_f8_asm(w):
    """int32 words [BN, 16] of "f4w128e" -> 8 E4M3 tensors [BN, 16]: output 2g + h at (n, 4q + b) is byte b of half
    h of word (n, 4q + g) (the pack of 4 groups words 4q..4q+3; see the module notes)."""
    return tl.inline_asm_elementwise(asm=F8_PTX, constraints=F8_CONSTRAINTS, args=[w],
                                     dtype=(tl.float8e4nv,) * 8, is_pure=True, pack=4)


@triton.jit
def _bytes(wg, HALF: tl.constexpr, BLOCK_N: tl.constexpr):
    """Half HALF of words wg [BN, 4] (q) as E4M3 bytes [BN, 16] (q, b), by integer ops."""
    v = (wg[:, :, None] >> (8 * tl.arange(0, 4))[None, None, :]) & 0xFF
    v = v & 0x9C if HALF == 0 else ((v & 0x23) << 2) | ((v >> 2) & 0x10)
    return tl.reshape(v, (BLOCK_N, 16)).to(tl.int8).to(tl.float8e4nv, bitcast=True)


@triton.jit
def dequant_f8_portable(w, BLOCK_N: tl.constexpr):
    """The same 8 tensors as `dequant_f8_asm`, by integer ops."""
    w0, w1, w2, w3 = quarters(w, BLOCK_N, 4)  # word 4q + g: K block g's
    return (_bytes(w0, 0, BLOCK_N), _bytes(w0, 1, BLOCK_N), _bytes(w1, 0, BLOCK_N), _bytes(w1, 1, BLOCK_N),
            _bytes(w2, 0, BLOCK_N), _bytes(w2, 1, BLOCK_N), _bytes(w3, 0, BLOCK_N), _bytes(w3, 1, BLOCK_N))


@triton.jit
def _operand(lo, hi, BLOCK_N: tl.constexpr):
    """K block operand [BN, 32] (column 16h + 4q + b) from its halves [BN, 16] (q, b)."""
    h = tl.reshape(tl.join(lo, hi), (BLOCK_N, 4, 4, 2))
    return tl.reshape(tl.permute(h, (0, 3, 1, 2)), (BLOCK_N, 32))


@triton.jit
def _x_block(a_ptr, a_off, k0, K, EVEN_K: tl.constexpr):
    if EVEN_K:
        return tl.load(a_ptr + k0 + a_off)
    return tl.load(a_ptr + k0 + a_off, mask=(k0 + tl.arange(0, 32))[:, None] < K, other=0.0)


@triton.jit
def qlinear_w4_f8_decode_kernel(
    a_ptr, w_ptr, s_ptr, out_ptr, bias_ptr, res_ptr, rs_ptr, cs_ptr,
    M, N, K, stride_am, stride_wn, stride_sn, stride_om, stride_rm,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, GROUP: tl.constexpr, EVEN_K: tl.constexpr, ASM: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    norm_ptr=None, xn_ptr=None, eps=0.0, HAS_NORM: tl.constexpr = False, QUANT_X: tl.constexpr = False, scale=1.0,
    SWIGLU: tl.constexpr = False, GATE: tl.constexpr = "silu",
    part_ptr=None, lock_ptr=None, k_per_split=1, SPLIT_K: tl.constexpr = 1, pres_ptr=None, pw_ptr=None, post_eps=0.0,
    z_ptr=None, POST_NORM: tl.constexpr = False, WRITE_Z: tl.constexpr = False,
    act_p0=0.0, act_p1=0.0, act_p2=0.0, act_p3=0.0, nb_ptr=None, LAYER_NORM: tl.constexpr = False,
):
    """out[M, N] = epilogue(x[M, K] @ W^T) for W in "f4w128e" and x E4M3 codes (fp8; QUANT_X: quantized here from
    fp16 x first); the grid, prologue (post-norm step included), split-K and epilogue are `qlinear_w4_decode_kernel`'s."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows_n = tl.minimum(offs_n, N - 1)
    pid_m = tl.program_id(1) if SPLIT_K == 1 else 0
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if HAS_NORM or QUANT_X or POST_NORM:
        rs_at = pid * M
        if SPLIT_K > 1:
            rs_at = (pid * SPLIT_K + tl.program_id(1)) * M
        a_ptr, stride_am, rs_ptr = prologue_rows(a_ptr, stride_am, xn_ptr + pid * M * K, rs_ptr + rs_at, norm_ptr,
                                                 eps, offs_m, M, K, HAS_NORM, QUANT_X, BLOCK_M, 128, k_per_split,
                                                 SPLIT_K, pres_ptr, pw_ptr, post_eps, z_ptr, tl.where(pid == 0, M, 0),
                                                 POST_NORM, WRITE_Z, False,  # (xn is E4M3: z recomputed)
                                                 nb_ptr, LAYER_NORM)
    a_off = tl.minimum(offs_m, M - 1)[None, :] * stride_am + tl.arange(0, 32)[:, None]  # x^T block [32, BLOCK_M]
    w_off = rows_n[:, None] * stride_wn + tl.arange(0, 16)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    if SPLIT_K > 1:
        a_ptr, w_ptr, s_ptr, s_ptr, K = k_window(a_ptr, w_ptr, s_ptr, s_ptr, K, k_per_split, 128, GROUP, True)
    for t in range(0, tl.cdiv(K, 128)):
        w = tl.load(w_ptr + t * 16 + w_off)
        if ASM:
            h0, h1, h2, h3, h4, h5, h6, h7 = dequant_f8_asm(w)
        else:
            h0, h1, h2, h3, h4, h5, h6, h7 = dequant_f8_portable(w, BLOCK_N)
        k0 = t * 128
        if GROUP % 128 != 0:  # a factor per 32-wide block: each block's wgmma scaled on its own
            f0, f1, f2, f3 = block_factors(s_ptr + rows_n[:, None] * stride_sn, k0, K, GROUP, BLOCK_N, True)
            acc += tl.dot(_operand(h0, h1, BLOCK_N), _x_block(a_ptr, a_off, k0, K, EVEN_K)) * f0[:, None]
            acc += tl.dot(_operand(h2, h3, BLOCK_N), _x_block(a_ptr, a_off, k0 + 32, K, EVEN_K)) * f1[:, None]
            acc += tl.dot(_operand(h4, h5, BLOCK_N), _x_block(a_ptr, a_off, k0 + 64, K, EVEN_K)) * f2[:, None]
            acc += tl.dot(_operand(h6, h7, BLOCK_N), _x_block(a_ptr, a_off, k0 + 96, K, EVEN_K)) * f3[:, None]
        else:
            d = tl.dot(_operand(h0, h1, BLOCK_N), _x_block(a_ptr, a_off, k0, K, EVEN_K))
            d = tl.dot(_operand(h2, h3, BLOCK_N), _x_block(a_ptr, a_off, k0 + 32, K, EVEN_K), d)
            d = tl.dot(_operand(h4, h5, BLOCK_N), _x_block(a_ptr, a_off, k0 + 64, K, EVEN_K), d)
            d = tl.dot(_operand(h6, h7, BLOCK_N), _x_block(a_ptr, a_off, k0 + 96, K, EVEN_K), d)
            acc += d * tl.load(s_ptr + rows_n * stride_sn + k0 // GROUP)[:, None]
    last = True
    if SPLIT_K > 1:
        last, acc = split_sum(acc, part_ptr, lock_ptr, offs_n, offs_m, mask_n, offs_m < M, N, M, SPLIT_K)
    if last:
        decode_epilogue(acc * scale, pid, offs_m, offs_n, mask_n, rows_n, M, N, out_ptr, bias_ptr, res_ptr, rs_ptr,
                        cs_ptr, stride_om, stride_rm, BLOCK_M, BLOCK_N, True, HAS_BIAS, ACTIVATION, SWIGLU, GATE,
                        HAS_RESIDUAL, act_p0, act_p1, act_p2, act_p3)


def f8_blocks(N: int, M: int, arch: int | None, narrow_groups: bool = False, k_tiles: int = 1) -> dict:
    """Launch config (`decode_blocks`' signature; groups need no option here): 256-row tiles on one warpgroup (128
    below N = 2048, 64 below 512 and in prefill), 16 x columns at M <= 16 (64 past it), 2 stages; K splits from
    `blocks.decode_split` at M <= 16."""
    wide = 256 if M <= 16 else 64  # prefill: 64 x columns beside 128 rows spilled at group 32
    tile = dict(BLOCK_N=wide if N >= 2048 else min(wide, 128) if N >= 512 else 64, num_warps=4, num_stages=2,
                BLOCK_M=16 if M <= 16 else 64, PACK=False, BLOCK_DOTS=False, UNROLL=1)
    return dict(tile, SPLIT_K=1) if M > 16 else decode_split(tile, N, k_tiles, arch)


def launch(grid, cfg: dict, x2d, weight, s, out, bias, res, row_scale, col_scale, group: int, activation: str,
           residual: bool, swiglu: bool, gate: str, scale: float, asm: bool, fused: dict) -> torch.Tensor:
    """Launch the kernel as `qlinear_w4_decode` planned it (x2d: E4M3 codes, or fp16 x for the prologue)."""
    words = weight.payload["words"]
    M, K = x2d.shape
    N = weight.data.shape[0]
    qlinear_w4_f8_decode_kernel[grid](
        x2d, words, s, out, bias if bias is not None else out, res, row_scale, col_scale, M, N, K,
        x2d.stride(0), words.stride(0), s.stride(0), out.stride(0), res.stride(0),
        BLOCK_N=cfg["BLOCK_N"], BLOCK_M=cfg["BLOCK_M"], GROUP=group, EVEN_K=K % 128 == 0, ASM=asm,
        HAS_BIAS=bias is not None, ACTIVATION=activation, HAS_RESIDUAL=residual, SWIGLU=swiglu, GATE=gate,
        scale=float(scale), **fused, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out


def for_device(weight, arch: int | None):
    """The weight to run on sm_`arch` (None: the interpreter): an "f4w128e" weight on a GPU before sm_89 (no FP8
    MMA) becomes its "f4w128" copy for the fp16 kernel (re-encoded once per weight); anything else as it is."""
    if arch is None or arch >= 89 or not fp8_operand(weight.encoding.layout):
        return weight
    return fp16_copy(weight, arch)


_FP16_COPIES: dict[int, tuple[weakref.ref, object]] = {}  # id(words) -> (the words, their fp16-layout copy)


def fp16_copy(weight, arch: int):
    """The weight re-encoded to the fp16 kernel's "f4w128" layout for sm_`arch` without FP8 MMA (once per weight)."""
    words = weight.payload["words"]
    key = id(words)
    ref, copy = _FP16_COPIES.get(key, (None, None))
    if ref is None or ref() is not words:
        kw, xperm = decode_operand(arch)
        copy = to_decode_layout(weight, bk=128, kw=kw, xperm=xperm)
        _FP16_COPIES[key] = (weakref.ref(words, lambda _: _FP16_COPIES.pop(key, None)), copy)
    return copy


def w4_f8_decode_spec(N: int, K: int, group: int = 32, *, M: int = 1, arch: int | None = 90, asm: bool = True,
                      norm: bool = False, swiglu: bool = False, split_k: int | None = None,
                      post_norm: bool = False) -> dict:
    """`fxforge.codegen.build` spec of the kernel for fp16 x [M, K] and an "f4w128e" weight [N, K] with the blocks
    and K splits the launcher picks on sm_`arch` (`split_k`: these instead)."""
    cfg = f8_blocks(N, M, arch, k_tiles=-(-K // 128))
    per, split = split_plan(K, 128, group or K, split_k or cfg["SPLIT_K"])
    quant = M <= 16
    sig = {"a_ptr": "*fp16" if quant else "*fp8e4nv", "w_ptr": "*i32", "s_ptr": "*fp32", "out_ptr": "*fp16",
           "bias_ptr": "*fp16", "res_ptr": "*fp16", "rs_ptr": "*fp32", "cs_ptr": "*fp32", "M": "i32", "N": "i32",
           "K": "i32", "stride_am": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_om": "i32",
           "stride_rm": "i32", "eps": "fp32", "scale": "fp32"}
    const = {"BLOCK_N": cfg["BLOCK_N"], "BLOCK_M": cfg["BLOCK_M"], "GROUP": group or K, "EVEN_K": K % 128 == 0,
             "ASM": asm, "HAS_BIAS": False, "ACTIVATION": "none", "HAS_RESIDUAL": False, "HAS_NORM": norm,
             "QUANT_X": quant, "SWIGLU": swiglu, "GATE": "silu", "SPLIT_K": split}
    if split > 1:
        sig.update(part_ptr="*fp32", lock_ptr="*i32", k_per_split="i32")
    else:
        const.update(part_ptr=None, lock_ptr=None, k_per_split=1)
    sig.update(norm_ptr="*fp16") if norm else const.update(norm_ptr=None)
    sig.update(xn_ptr="*fp8e4nv") if quant else const.update(xn_ptr=None)
    post = post_norm and quant  # the post-norm step in the prologue, z stored (prefill: a row kernel first)
    const.update(POST_NORM=post, WRITE_Z=post, nb_ptr=None, LAYER_NORM=False)
    for name in ("pres_ptr", "pw_ptr", "z_ptr"):
        sig.update({name: "*fp16"}) if post else const.update({name: None})
    sig.update(post_eps="fp32", **{f"act_p{i}": "fp32" for i in range(4)})
    fused = "".join(f" {name}" for name, on in (("post_norm", post_norm), ("norm", norm), ("swiglu", swiglu)) if on)
    return {"module": __name__, "kernel": "qlinear_w4_f8_decode_kernel", "signature": sig, "constexprs": const,
            "divisible": ["N", "K", "stride_am", "stride_wn", "stride_sn", "stride_om", "stride_rm"],
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "label": f"qlinear w4a8-fp decode {N}x{K} g={group} f4w128e" + (f" splitk{split}" if split > 1 else "")
            + fused + ("" if asm else " portable") + (f" M={M}" if M > 16 else "")}


def f8_pack_order_ok(ttgir: str) -> bool:
    """Whether the built kernel's inline asm takes its word tile with the 4 words of a K tile's blocks in consecutive
    registers (layout registers [0, 1], [0, 2] first): the order `dequant_f8_asm` assumes."""
    import re

    asm = next((line for line in ttgir.splitlines() if "elementwise_inline_asm" in line and "0x9C9C9C9C" in line), "")
    m = re.search(r"tensor<\d+x16xi32, #(\w+)>", asm)
    if m is None:
        return False
    decl = next((line for line in ttgir.splitlines() if line.startswith(f"#{m.group(1)} =")), "")
    return "register = [[0, 1], [0, 2]," in decl or "sizePerThread = [1, 4]" in decl
