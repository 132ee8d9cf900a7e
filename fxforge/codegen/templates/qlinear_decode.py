"""Decode-shaped 4-bit GEMM (M <= 16): int4 / FP4 weights in a decode layout, dequantized in registers by bit tricks.

This module owns `qlinear_w4_decode_kernel` and its launcher `qlinear_w4_decode(x, weight, ...)`; its tile table
and build spec `w4_decode_spec` are `qlinear_decode_config`'s (re-exported here). The weight is a w4a16-int4
(layout "i4w{BK}") or w4a8-fp ("f4w{BK}") `Weight`
re-encoded by `fxforge.ir.weight_layouts.to_decode_layout`; the reference is unchanged (`lowp_ops.qlinear_ref`
on `decode_weight`, which reads any layout exactly). The compile routes here (`_qlinear_w4_decode` in
generated code) every qlinear whose weight the `decode_layout` pass re-encoded (`fxforge.passes.decode_layout`);
a decode-step graph's prefill calls (M > 16) run the same kernel with 64-row tiles (`decode_blocks`), so the
weight is stored once.

How (per K tile of BLOCK_K = the layout's tile):
- out^T[BLOCK_N, BLOCK_M] = W[BLOCK_N, BLOCK_K] @ x^T: the weight is the MMA's A operand, built in registers;
  x (BLOCK_M = 8 columns at M <= 8 where the MMA takes them unpadded, else 16, 64 past 16; rows past M repeat
  row M-1 and are not stored) is the B operand.
- One int32 word = 8 codes; `dequant_asm` turns it into four fp16x2 registers with 4 LOP3 + 1 SHF +
  2 HSUB2 + 2 HFMA2 (the magic-number trick: (w & 0x000F000F) | 0x64006400 is 1024 + q per half; the
  nibbles at bits 4-7 give 1024 + 16q, scaled by 1/16 in the same FMA that subtracts 64 + z): q - z exactly.
  The word's 8 slots are the 8 weights one thread holds in the mma's A fragment for two K16 steps
  (`weight_layouts` shuffles them there), so no layout conversion follows; the 6-D permute below only
  names that mapping for Triton. Zero points arrive as int32 fp16x2 pairs ("zz"), so every operand of the
  chain is 32-bit and Triton picks kWidth=2 (a uint8 operand made it kWidth=8, which cost a MOV per HMMA).
- FP4 (w4a8-fp, FP4=True): `dequant_f4` places each E2M1 code's sign at an fp16 half's bit 15 and its
  3 magnitude bits at bits 9-11 (8 instructions per word, no zero point; the layout XOR-encodes half the word for
  it): the fp16 is the E2M1 value times 2^-14 exactly. At M <= 16, W4A8 runs as W4A16: x is quantized per token to
  E4M3 as the reference does (`act_quant`, in the prologue), and the codes' values (exact in fp16) are the fp16 B
  operand; the epilogue multiplies by the token scale and the row's s_max.
- x-permuted layouts ("x" suffix, `weight_layouts._x_order`; chosen per GPU and Triton by `preferred_operand`):
  the kernel reads x's K tile in an order (a reshape/permute below, free in registers) in which each thread's
  B-fragment halves (b0, b1) of one MMA are 4 contiguous fp16 in x, and the weight layout stores its columns in
  the same order. Without it Triton 3.6 on sm_80 loads x pairs across two vector loads and ptxas spends ~2
  register moves per HMMA pairing them (int4 2.45 -> 1.99, FP4 2.53 -> 2.07 instructions per weight); on sm_90
  it is neutral at group 128 and saves ~40 instructions per iteration at FP4 group 32. Triton 3.9 on sm_80 reads
  x with ldmatrix, which the permutation would lose (+19): plain layouts there. Tried: 24 orders of which output
  feeds which fragment slot, and a layout whose word is a whole A fragment (rows g and g + 8): no better.
- UNROLL K tiles per loop iteration (`qlinear_decode_config._unroll`; the host makes it divide the tile count and
  each split's): every tile is `qlinear_decode_tile.k_tile`, with its own loads, whose addresses are the first
  tile's plus constants (ptxas folds them), so the loop's address arithmetic, counters and barriers are paid once
  per UNROLL tiles.
- The group scale multiplies the tile's partial accumulator (BLOCK_K divides the group), not each weight
  (int4: the f16 scale as f32; FP4: 2^(14 - k), the group's power of two times the 2^14 of the decode).
  FP4 groups narrower than the tile (WSCALE: w4a8-fp's default 32; an "f4w" tile stays 128 wide, a word's 8
  weights lie in one 32-column block) take one of three routes, by tile (`decode_blocks`):
  - PACK (M <= 2; M <= 4 where x has 16 columns anyway): x tile column c holds row c // 4 of x restricted to K
    block c % 4 (zero elsewhere), so the accumulator keeps each block's partial sum apart and the group factor
    multiplies it once per tile (an FFMA per accumulator element: BLOCK_M / BLOCK_K of a weight's share); the
    epilogue sums a row's 4 columns. The factors load as [BLOCK_N, 4] (`group_factors`) and scale the product viewed
    as [BLOCK_N, BLOCK_M / 4, 4], which stays in the MMA's layout. Batch 1-2: 1.72-1.89; 3-4 on 16 columns: 1.78
    (sm_90, 3.6).
  - BLOCK_DOTS (an 8-column tile past PACK: M <= 8 on mma.sync, and on sm_90 with Triton 3.9): each 32-wide K block
    is decoded and multiplied on its own (its words j = 4c + p split off the tile in registers, its x columns loaded
    apart), and its product scaled by the block's factor: an FFMA per accumulator element, 0.25 per weight at 8
    columns, instead of an HMUL2 per decoded pair (0.5). sm_80 batch 3-8: 1.96 (3.9), 1.98 (3.6).
  - otherwise (16 columns, and 64-row prefill tiles) the decoded fp16 pairs times their group's factor ("s16", fp16,
    one HMUL2 per pair reading it as both halves, exact: powers of two; an iteration's load as one vector per row,
    which `tile_parts` splits per tile): 8 decode + 4 scale + 2 HMMA instructions per 8 weights, 1.75 per weight
    before loads and addresses; with 4 tiles an iteration (128-row tiles on mma.sync) sm_80 batch 9-16 1.94 (2.21-2.23
    at 9 decode instructions and one tile).
- Split-K (SPLIT_K > 1, M <= 16: one program row, so grid axis 1 is the split; `blocks.decode_split` picks the count,
  `split_plan` the steps): a split is the kernel on its K window (`k_window`: x, the words, zero points and group
  scales advanced to its first column, which starts a group; K its width), so the K loop's code is the unsplit
  kernel's (a runtime start costs ~11 address instructions per iteration); after the loop (and PACK's column
  sum) `split_k.split_sum` stores the fp32 partial out^T into part[SPLIT_K, N, M] and the tile's last split sums
  them in split order (a split result differs from the unsplit one by fp32 rounding only) and runs `decode_epilogue`.
  Split K loops measured 0.95-1.03x the unsplit ones' instructions (results/qdecode_sass-2026-12-01-splitk-*).
- ASM=False (the interpreter) decodes with portable integer ops. "f4w128e" (sm_90's FP8 MMA): `qlinear_decode_f8`.
Measured (`benchmarks/qdecode_sass.py`): SASS instructions per weight in the K loop, results/qdecode_sass-*.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.pool import Workspace, counters, out_tensor
from fxforge.codegen.templates.gemm import ACTIVATIONS, PARAM_ACTIVATIONS, device_arch, interpreting
from fxforge.codegen.templates.qlinear_decode_config import (  # noqa: F401 (re-exported: tests, benchmarks)
    MAX_M,
    decode_blocks,
    decode_operand,
    split_plan,
    w4_decode_spec,
)
from fxforge.codegen.templates.qlinear_decode_fuse import (
    F16_SCALED,
    check_fusions,
    check_post_norm,
    decode_epilogue,
    group_factors,
    k_window,
    prologue,
    prologue_rows,
)
from fxforge.codegen.templates.qlinear_decode_tile import k_tile, tile_parts
from fxforge.codegen.templates.split_k import split_sum
from fxforge.errors import ShapeError
from fxforge.ir.optable import ACTIVATION_PARAMS
from fxforge.ir.weight_layouts import fp8_operand, layout_format, layout_params


@triton.jit
def qlinear_w4_decode_kernel(
    a_ptr, w_ptr, zz_ptr, s_ptr, out_ptr, bias_ptr, res_ptr, rs_ptr, cs_ptr,
    M, N, K, stride_am, stride_wn, stride_zn, stride_sn, stride_om, stride_rm,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, KW: tl.constexpr, XP: tl.constexpr, GROUP: tl.constexpr, EVEN_K: tl.constexpr,
    ASM: tl.constexpr, BLOCK_M: tl.constexpr, FP4: tl.constexpr, WSCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    norm_ptr=None, xn_ptr=None, eps=0.0, HAS_NORM: tl.constexpr = False, QUANT_X: tl.constexpr = False, scale=1.0,
    SWIGLU: tl.constexpr = False, GATE: tl.constexpr = "silu", PACK: tl.constexpr = False,
    part_ptr=None, lock_ptr=None, k_per_split=1, SPLIT_K: tl.constexpr = 1, pres_ptr=None, pw_ptr=None, post_eps=0.0,
    z_ptr=None, POST_NORM: tl.constexpr = False, WRITE_Z: tl.constexpr = False,
    act_p0=0.0, act_p1=0.0, act_p2=0.0, act_p3=0.0, BLOCK_DOTS: tl.constexpr = False, VEC_F: tl.constexpr = True,
    ROW_SCALE: tl.constexpr = False, nb_ptr=None, LAYER_NORM: tl.constexpr = False, UNROLL: tl.constexpr = 1,
):
    """out[M, N] = epilogue(x[M, K] @ W^T), W an "i4w{BLOCK_K}" int4 weight (see module doc); program (n, m)
    computes BLOCK_N outputs of BLOCK_M rows (16 for a decode step: one program column). HAS_NORM, QUANT_X, SWIGLU,
    POST_NORM: the RMSNorm (LAYER_NORM: LayerNorm) / E4M3 / post-norm residual prologue and the SwiGLU epilogue
    (`qlinear_decode_fuse`);
    act_p*: xielu's scalars. SPLIT_K > 1: grid axis 1 is the K split (one program row, M <= 16): `split_k.py` hands
    the partials to the tile's last split."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows_n = tl.minimum(offs_n, N - 1)  # rows past N read row N-1 (never stored): no load masks
    offs_k = tl.arange(0, BLOCK_K)
    pid_m = tl.program_id(1) if SPLIT_K == 1 else 0  # (axis 1 is the K split with SPLIT_K > 1)
    if PACK:  # x tile column c: row c // 4 of x, its K block c % 4 only (the others zero); see the module notes
        offs_r = pid_m * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)  # this program's rows of x
        offs_c = tl.arange(0, BLOCK_M)
        offs_m = pid_m * (BLOCK_M // 4) + offs_c // 4
        block_of = (offs_k // 32)[:, None] == (offs_c % 4)[None, :]
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_r = offs_m
        block_of = None
    if HAS_NORM or QUANT_X or POST_NORM:  # x's rows normalised / quantized into this tile's scratch rows: the K loop's x
        rs_at = pid * M  # a split writes its own K range of the tile's rows, and its own row scales
        if SPLIT_K > 1:
            rs_at = (pid * SPLIT_K + tl.program_id(1)) * M
        a_ptr, stride_am, rs_ptr = prologue_rows(a_ptr, stride_am, xn_ptr + pid * M * K, rs_ptr + rs_at, norm_ptr,
                                                 eps, offs_r, M, K, HAS_NORM, QUANT_X,
                                                 BLOCK_M // 4 if PACK else BLOCK_M, BLOCK_K, k_per_split, SPLIT_K,
                                                 pres_ptr, pw_ptr, post_eps, z_ptr, tl.where(pid == 0, M, 0), POST_NORM, WRITE_Z,
                                                 QUANT_X != F16_SCALED,  # (bf16's z: recomputed, not staged in fp16)
                                                 nb_ptr, LAYER_NORM)
    a_off = tl.minimum(offs_m, M - 1)[None, :] * stride_am + offs_k[:, None]  # x^T tile [BLOCK_K, BLOCK_M]
    x_off = tl.minimum(offs_m, M - 1)[None, :] * stride_am + tl.arange(0, 32)[:, None]  # (BLOCK_DOTS) [32, BLOCK_M]
    w_off = rows_n[:, None] * stride_wn + tl.arange(0, BLOCK_K // 8)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    word_factors: tl.constexpr = FP4 and WSCALE and not PACK and not BLOCK_DOTS  # (narrow groups on 16 columns)
    if SPLIT_K > 1:  # the loop below runs on this split's K window, as the unsplit kernel on a narrower K
        a_ptr, w_ptr, zz_ptr, s_ptr, K = k_window(a_ptr, w_ptr, zz_ptr, s_ptr, K, k_per_split, BLOCK_K, GROUP, FP4,
                                                  UNROLL if word_factors else 1)
    s_row = s_ptr + rows_n[:, None] * stride_sn  # (PACK, BLOCK_DOTS) each row's group factors
    for t0 in range(0, tl.cdiv(K, UNROLL * BLOCK_K)):  # UNROLL tiles an iteration (the host makes it divide the count)
        f = tl.zeros((BLOCK_N, UNROLL * BLOCK_K // 32), tl.float16)  # (unread unless word_factors)
        if word_factors:  # the iteration's group factors in one vector load per row ("s16"), split per tile
            f = group_factors(zz_ptr + rows_n[:, None] * stride_zn + t0 * (UNROLL * BLOCK_K // GROUP), 0,
                              K - t0 * UNROLL * BLOCK_K, GROUP, BLOCK_N, UNROLL * BLOCK_K, not EVEN_K, True)
        fs = tile_parts(f, UNROLL)
        for i in tl.static_range(UNROLL):
            acc = k_tile(acc, t0 * UNROLL + i, fs[i], a_ptr, a_off, x_off, block_of, offs_k, w_ptr, w_off, zz_ptr,
                          s_ptr, s_row, rows_n, stride_zn, stride_sn, K, BLOCK_N, BLOCK_K, BLOCK_M, KW, XP, GROUP,
                          EVEN_K, ASM, FP4, word_factors, PACK, BLOCK_DOTS, VEC_F)
    if PACK:  # sum each row's 4 block columns
        acc = tl.sum(tl.reshape(acc, (BLOCK_N, BLOCK_M // 4, 4)), axis=2)  # [BLOCK_N, BLOCK_M / 4]
    last = True
    if SPLIT_K > 1:  # partials part[SPLIT_K, N, M] (acc is out^T); the tile's last split sums them in split order
        last, acc = split_sum(acc, part_ptr, lock_ptr, offs_n, offs_r, mask_n, offs_r < M, N, M, SPLIT_K)
    if last:
        decode_epilogue(acc * scale, pid, offs_r, offs_n, mask_n, rows_n, M, N, out_ptr, bias_ptr, res_ptr, rs_ptr,
                        cs_ptr, stride_om, stride_rm, BLOCK_M // 4 if PACK else BLOCK_M, BLOCK_N, FP4, HAS_BIAS,
                        ACTIVATION, SWIGLU, GATE, HAS_RESIDUAL, act_p0, act_p1, act_p2, act_p3, ROW_SCALE)


def qlinear_w4_decode(x: torch.Tensor, weight, bias: torch.Tensor | None = None, *, activation: str = "none",
                      residual: torch.Tensor | None = None, out_dtype: torch.dtype | None = None, scale: float = 1.0,
                      keep: torch.Tensor | None = None, asm: bool | None = None,
                      norm: tuple[torch.Tensor, float] | None = None, swiglu: bool = False, gate: str = "silu",
                      out: torch.Tensor | None = None, ws: Workspace | None = None,
                      split_k: int | None = None, post_norm: tuple | None = None, keep_z: bool = False,
                      z_out: torch.Tensor | None = None, act_args: tuple[float, ...] = (),
                      layer_norm: tuple[torch.Tensor | None, torch.Tensor | None, float] | None = None
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`qlinear_ref` with the scheme's epilogue (scale, bias, activation, residual) for fp16 or bf16 x [..., K] (any
    number of rows: tiles of 16 rows up to 16, of 64 past it), the weight decoded in registers; bf16 rows are scaled
    into fp16 by a power of two first, exactly (`qlinear_decode_fuse.f16_row_scale`), and the result is bf16.

    `weight`: a w4a16-int4 or w4a8-fp `Weight` in a decode layout (`weight_layouts.to_decode_layout`). w4a8-fp
    quantizes x per token to E4M3 first, as the reference does, and runs the fp16 MMA on the codes' values
    (exact in fp16): at M <= 16 W4A8 is W4A16 with fp8-valued activations. `asm` picks the PTX dequantization
    (default: on a GPU; the interpreter runs the portable one). `keep` (FFN-skip flags of x's rows, the qlinear
    template's early exit) is accepted and not read: x's skipped rows are zero already (`row_keep`). `out`: the
    result's storage (a planned buffer, `codegen.pool.out_tensor`); w4a8-fp's prefill still allocates its activation
    codes. `norm=(weight, eps)`: x is rms_norm'ed first, in the kernel (M <= 16) or by one row kernel (prefill),
    into scratch from `ws`; `swiglu`: the weight's 2N rows are interleaved (gate, up) pairs and the result is
    act(gate) * up [..., N], act = `gate` (`qlinear_decode_fuse`). `split_k`: K splits instead of the table's (M <= 16;
    tests force them): fp32 partials from `ws`, summed by each tile's last split (`split_k.py`).
    `post_norm=(res, w, eps)`: x is h and the GEMM's input z = res + rms_norm(h, w, eps) (either None: without it),
    then `norm` of z if given, as `gemm.linear`'s; `keep_z`: z is stored too (into `z_out`, else allocated) and the
    result is (y, z). `act_args`: xielu's scalars (alpha_p, alpha_n, beta, eps). `layer_norm=(weight, bias, eps)`
    (either None): x is layer_norm'ed instead of `norm`'s RMSNorm (`gemm.linear`'s argument; no post_norm)."""
    layer, nb = layer_norm is not None, layer_norm[1] if layer_norm is not None else None
    if layer and norm is not None:
        raise ShapeError("qlinear_w4_decode takes one norm prologue: norm= (RMSNorm) or layer_norm=, not both")
    norm = (layer_norm[0], layer_norm[2]) if layer else norm
    if not weight.encoding.layout:
        raise ShapeError("qlinear_w4_decode takes a weight in a decode layout; convert it with "
                         "fxforge.ir.weight_layouts.to_decode_layout(weight)")
    from fxforge.codegen.templates import qlinear_decode_f8 as f8  # (f8 below: the module, or False)

    arch = device_arch(x.device)
    weight = f8.for_device(weight, arch)  # "f4w128e" on a GPU without FP8 MMA: the fp16 layout's copy
    enc, p, f8 = weight.encoding, weight.payload, fp8_operand(weight.encoding.layout) and f8
    if activation not in ACTIVATIONS + PARAM_ACTIVATIONS or len(act_args) != len(ACTIVATION_PARAMS.get(activation, ())):
        raise ShapeError(f"activation {activation!r} with act_args {act_args}: use one of {ACTIVATIONS} or "
                         f"{PARAM_ACTIVATIONS} with its scalars {ACTIVATION_PARAMS}")
    N, K = weight.data.shape
    lead = tuple(x.shape[:-1])
    if x.dtype not in (torch.float16, torch.bfloat16) or x.shape[-1] != K:
        raise ShapeError(f"qlinear_w4_decode: input {tuple(x.shape)} {x.dtype} must be fp16 or bf16 [..., {K}]")
    fp4 = layout_format(enc.layout) == "f4e2m1"
    check_fusions(norm, swiglu, N, K, bias is None and activation == "none", gate, layer, nb, post_norm is not None)
    check_post_norm(post_norm, x, keep_z)
    n_out = N // 2 if swiglu else N
    x2d = x.reshape(-1, K)
    M = x2d.shape[0]
    out = out_tensor(out, (*lead, n_out), out_dtype or x.dtype, x.device, "qlinear_w4_decode").view(M, n_out)
    z = out_tensor(z_out, (*lead, K), x.dtype, x.device, "qlinear_w4_decode z").view(M, K) if keep_z else None
    if M == 0:
        return (out.reshape(*lead, n_out), z.reshape(*lead, K)) if keep_z else out.reshape(*lead, n_out)
    col_scale = p["scale"].reshape(N).float() if fp4 else out  # unread unless FP4
    x2d = x2d.contiguous()
    bk, kw, xperm = layout_params(enc.layout)
    res = residual.reshape(M, n_out) if residual is not None else out
    words, s = p["words"], p["scale32"]
    group = enc.group or words.shape[1] * 8
    wscale = fp4 and group % bk != 0 and not f8  # a group narrower than the tile: factors on the weights ("s16")
    cfg = (f8.f8_blocks if f8 else decode_blocks)(N, M, arch, wscale, triton.cdiv(K, bk))
    zz = p["s16"] if wscale else p["zz"] if not fp4 else words  # FP4 with per-tile factors reads no zz
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(M, cfg["BLOCK_M"] // (4 if cfg["PACK"] else 1)))
    per, splits = split_plan(K, bk, group, split_k or cfg["SPLIT_K"], cfg["UNROLL"])
    if splits > 1 and M > MAX_M:  # one program row (M <= 16): grid axis 1 is free for the splits
        raise ShapeError(f"qlinear_w4_decode splits K at M <= {MAX_M} rows only (got {M}); leave split_k unset")
    more = (((splits, N, M), torch.float32),) if splits > 1 else ()  # split-K's fp32 partials (out^T per split)
    # the norm / E4M3 prologue (M <= 16: in here) and the partials, in one workspace take
    x2d, row_scale, fused, part = prologue(x2d, norm, fp4, grid[0], bk, ws, splits, more, bool(f8), post_norm, z,
                                           layer, nb)
    fused.update({f"act_p{i}": float(v) for i, v in enumerate(act_args)})
    row_scaled = row_scale is not None and not fp4  # bf16 x: its rows were scaled into fp16 (ROW_SCALE)
    row_scale = out if row_scale is None else row_scale  # unread unless FP4 or row_scaled
    if splits > 1:  # one arrival counter per tile, kept zero between launches (`Workspace.counters`)
        fused = dict(fused, part_ptr=part[0], lock_ptr=counters(ws, x.device, grid[0]), k_per_split=per,
                     SPLIT_K=splits)
        grid = (grid[0], splits)
    asm = (not interpreting()) if asm is None else asm
    if f8:  # the FP8-MMA kernel: no zero points, no tile options
        y = f8.launch(grid, cfg, x2d, weight, s, out, bias, res, row_scale, col_scale, group, activation,
                      residual is not None, swiglu, gate, scale, asm, fused).reshape(*lead, n_out)
        return (y, z.reshape(*lead, K)) if keep_z else y
    qlinear_w4_decode_kernel[grid](
        x2d, words, zz, s, out, bias if bias is not None else out, res, row_scale, col_scale, M, N, K,
        x2d.stride(0), words.stride(0), zz.stride(0), s.stride(0), out.stride(0), res.stride(0),
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=bk, KW=kw, XP=kw if xperm else 0, GROUP=group, EVEN_K=K % bk == 0,
        ASM=asm, BLOCK_M=cfg["BLOCK_M"], FP4=fp4, WSCALE=wscale, HAS_BIAS=bias is not None,
        ACTIVATION=activation, HAS_RESIDUAL=residual is not None, SWIGLU=swiglu, GATE=gate, PACK=cfg["PACK"],
        BLOCK_DOTS=cfg["BLOCK_DOTS"], VEC_F=cfg["VEC_F"], ROW_SCALE=row_scaled, UNROLL=cfg["UNROLL"],
        scale=float(scale), **fused,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return (out.reshape(*lead, n_out), z.reshape(*lead, K)) if keep_z else out.reshape(*lead, n_out)
