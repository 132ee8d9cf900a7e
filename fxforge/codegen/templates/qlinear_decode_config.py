"""The 4-bit decode GEMM's launch plan (`qlinear_decode`): its tile table (`decode_blocks`), where split-K's splits
start (`split_plan`), the weight operand to encode per GPU (`decode_operand`) and the kernel's build spec
(`w4_decode_spec`). Host code only, so the kernel module keeps its room; `qlinear_decode` re-exports the names."""

from __future__ import annotations

import math

from fxforge.codegen.blocks import decode_split, gemv_ctas, split_steps
from fxforge.codegen.templates.qlinear_decode_fuse import quant_mode
from fxforge.codegen.triton_compat import TRITON_VERSION
from fxforge.ir.weight_layouts import DECODE_ROWS, layout_name, preferred_operand

MAX_M = DECODE_ROWS
KERNEL_MODULE = "fxforge.codegen.templates.qlinear_decode"  # the module of `qlinear_w4_decode_kernel`

def decode_blocks(N: int, M: int = 1, arch: int | None = None, narrow_groups: bool = False, k_tiles: int = 1) -> dict:
    """The decode kernel's launch config on sm_`arch` (None: the interpreter) for a weight of N rows and `k_tiles` K
    steps: `_decode_tile`'s BLOCK_N, BLOCK_M, warps, stages and PACK; UNROLL (dividing the tile count), and SPLIT_K,
    at M <= 16 from `blocks.decode_split` (K splits towards >= 2 CTAs per SM; 1 without an arch), each split a
    multiple of UNROLL tiles; UNROLL is lowered where its splits would launch < 96% of 2 programs per SM (or of what
    single tiles launch, when they cannot reach that)."""
    cfg = _decode_tile(N, M, arch, narrow_groups)
    units = [u for u in (4, 2, 1) if u <= cfg["UNROLL"] and k_tiles % u == 0]
    if M > MAX_M:
        return dict(cfg, SPLIT_K=1, UNROLL=units[0])
    plans = [decode_split(dict(cfg, UNROLL=u), N, k_tiles, arch) for u in units]
    programs = [split_steps(k_tiles // p["UNROLL"], p["SPLIT_K"])[1] for p in plans]  # per tile
    # the most tiles an iteration whose splits keep >= 96% of 2 programs per SM, or of what single tiles launch
    want = min(programs[-1], gemv_ctas(arch) / -(-N // cfg["BLOCK_N"])) if arch is not None else programs[-1]
    return next(p for p, n in zip(plans, programs) if n >= 0.96 * want)


def _decode_tile(N: int, M: int = 1, arch: int | None = None, narrow_groups: bool = False) -> dict:
    """BLOCK_N, BLOCK_M, warps, stages, PACK, BLOCK_DOTS and UNROLL on sm_`arch` (None: the
    interpreter); `narrow_groups`: FP4 groups narrower than the K tile. M <= 16 (a decode step): rows per warp
    decide the cost per weight: each warp reloads the x fragments for its rows, so 64 rows per warp amortise them,
    32 rows per warp cost ~2.3. M <= 8 takes an 8-column x tile where the MMA runs it unpadded (`_narrow_x`): half
    the MMAs and x fragments, 2 stages (3 cost ~15 more instructions per iteration); narrow groups at M <= 2 (at M
    <= 4 where the tile has 16 columns anyway) pack each row's 4 K blocks into the tile's columns (PACK); on an
    8-column tile past that, each K block is its own MMA (BLOCK_DOTS; module notes). Measured at 4096x4096
    (`benchmarks/qdecode_sass.py`): see benchmarks/results/qdecode_sass-*.md; no spill. Wide tiles leave few CTAs
    for a GEMV (N=4096: 32 at batch 1, 16 past 8); filling the SMs is split-K's job (`decode_blocks`). M > 16 (the
    prefill of a decode-step graph, whose weights are stored in the decode layout): 64 x rows per program on 8
    warps, so each weight tile is decoded once per 64 rows (4 warps spilled on sm_80; 32 rows cost ~1.4x the
    instructions per row on sm_90)."""
    if M > MAX_M:
        return dict(BLOCK_N=128, BLOCK_M=64, num_warps=8, num_stages=3, PACK=False, BLOCK_DOTS=False, VEC_F=True,
                    UNROLL=1)
    narrow = M <= 8 and _narrow_x(arch)
    pack = narrow_groups and (M <= 2 or (M <= 4 and not narrow))  # 8 columns (M <= 2) or 16
    block_dots = narrow_groups and narrow and not pack
    half = narrow_groups and not narrow and not pack and arch is not None and arch < 90
    # 256-row tiles on 4 warps: 16-column tiles and per-block MMAs; with Triton 3.9 the latter take 512 rows on 8
    # warps (sm_80 2.02 -> 1.96; 3.6 1.98 -> 2.13; on 4 warps 512 rows spill). Factors on the weights on mma.sync
    # (`half`): 128 rows on 2 warps (~as many instructions per weight, twice the tiles: 4096 rows then split K 8 ways
    # on 4 tiles an iteration; on sm_90 2 warps are no warpgroup: 3.43 per weight with Triton 3.6)
    wide = N >= 2048 and (not narrow or block_dots) and not half
    rows = 512 if block_dots and TRITON_VERSION >= (3, 9, 0) else 256
    tile = dict(BLOCK_N=rows, num_warps=rows // 64) if wide else \
        dict(BLOCK_N=128, num_warps=2) if N >= 512 else dict(BLOCK_N=64, num_warps=1)
    return dict(tile, BLOCK_M=8 if narrow else 16, num_stages=2, PACK=pack, BLOCK_DOTS=block_dots,
                VEC_F=vector_factors(arch, block_dots), UNROLL=_unroll(narrow, narrow_groups, pack, block_dots))


def _unroll(narrow: bool, narrow_groups: bool, pack: bool, block_dots: bool) -> int:
    """K tiles per loop iteration (`decode_blocks` lowers it to divide the tile count): each tile's loads get their
    own instructions, but their addresses are the first tile's plus constants, so ptxas folds them into the loads,
    and the loop's own instructions and barriers are paid once. Measured on sm_80 / sm_90, Triton 3.6 / 3.9, 4096 x
    4096 (results/qdecode_sass-2026-12-02-s19-sweep.md): 8-column tiles 4 (0.04-0.17 per weight less); packed K
    blocks and per-block MMAs on 8 columns 2 (4 spilled on one of the four); 16 columns with factors on the weights
    (narrow groups) 4 (sm_80 2.10 -> 1.95-1.98), else 1 (their loop is at 202-255 registers: 2 spilled on sm_90, and
    with Triton 3.6 the packed tile with the norm and SwiGLU)."""
    if pack or block_dots:
        return 2 if narrow else 1
    return 4 if narrow or narrow_groups else 1


def vector_factors(arch: int | None, block_dots: bool) -> bool:
    """Whether narrow groups' factors load as one vector per row (`qlinear_decode_fuse.group_factors`), else as a
    gather per K block: measured, 4096x4096 group 32, loop instructions vector / gather: sm_80 per-block MMAs 518 /
    501 with Triton 3.9 (more register moves), 508 / 517 with 3.6; sm_90 per-block MMAs 543 / 585 (3.9)."""
    return not (block_dots and arch is not None and arch < 90 and TRITON_VERSION >= (3, 9, 0))


def _narrow_x(arch: int | None) -> bool:
    """Whether an 8-column x tile is cheaper than 16 on sm_`arch` with this Triton: sm_80's mma.m16n8k16 takes it as
    is (int4 1.98-1.99 -> 1.78-1.79, FP4 2.07-2.14 -> 1.90-1.96 per weight); so does sm_90 with Triton 3.9 (1.91
    -> 1.79) but not with 3.6 (2.69 on 4 warps). The interpreter: any; 8 exercises the narrow tile."""
    return arch is None or arch < 90 or TRITON_VERSION >= (3, 9, 0)  # measured on 3.6 and 3.9 only


def split_plan(K: int, bk: int, group: int, splits: int, unroll: int = 1) -> tuple[int, int]:
    """(K steps per split, splits launched) of the decode kernel for `splits` wanted (`blocks.split_steps`): a split
    starts on a group boundary (`_k_window`), so the steps per split are a multiple of lcm(bk, group) / bk unless
    one group spans K, and of `unroll` (the kernel's tiles per iteration)."""
    return split_steps(-(-K // bk), splits, math.lcm(math.lcm(bk, group) // bk if group < K else 1, unroll))


def decode_operand(arch: int) -> tuple[int, bool]:
    """(kWidth, x-permuted) of the decode layout to encode for sm_`arch` with this Triton
    (`weight_layouts.preferred_operand`)."""
    return preferred_operand(arch, TRITON_VERSION[:2])


def w4_decode_spec(N: int, K: int, group: int = 128, bk: int = 128, *, asm: bool = True, bias: bool = False,
                   activation: str = "none", residual: bool = False, kw: int = 2, xperm: bool = False, M: int = 1,
                   fp4: bool = False, arch: int | None = 90, norm: bool = False, swiglu: bool = False,
                   split_k: int | None = None, post_norm: bool = False, x_dtype: str = "fp16",
                   layer_norm: bool = False) -> dict:
    """`fxforge.codegen.build` spec of the decode kernel for fp16 x [M, K] and a weight [N, K] in layout "i4w{bk}"
    (w4a16-int4) or, with `fp4`, "f4w{bk}" (w4a8-fp); kw: kWidth ("k4" layouts), xperm: x-permuted ("x"); the
    blocks the launcher picks on sm_`arch`; `norm`: the RMSNorm prologue, `swiglu`: the epilogue over interleaved
    (gate, up) rows (N counts the weight's rows, 2x the output's); the K splits the launcher picks (`split_k`: these
    instead); `post_norm`: x is h and the input z = res + rms_norm(h, w), z stored (M <= 16; prefill writes z with
    a row kernel first); activation "xielu": its run-time scalars act_p0..3; `x_dtype` "bf16": x, the output and the
    residual in bf16 (x scaled into fp16 per row in the prologue at M <= 16, by a row kernel past it); `layer_norm`:
    the prologue's norm is a LayerNorm with weight and bias."""
    norm = norm or layer_norm
    wscale = fp4 and (group or K) % bk != 0
    cfg = decode_blocks(N, M, arch, wscale, -(-K // bk))
    per, split = split_plan(K, bk, group or K, split_k or cfg["SPLIT_K"], cfg["UNROLL"])
    bf16 = x_dtype == "bf16"
    xt = f"*{x_dtype}" if M <= MAX_M else "*fp16"  # (prefill reads the row kernel's fp16 rows)
    sig = {"a_ptr": xt, "w_ptr": "*i32", "zz_ptr": "*fp16" if wscale else "*i32",  # (narrow groups: "s16")
           "s_ptr": "*fp32", "out_ptr": f"*{x_dtype}",
           "bias_ptr": f"*{x_dtype}", "res_ptr": f"*{x_dtype}", "rs_ptr": "*fp32", "cs_ptr": "*fp32", "M": "i32", "N": "i32",
           "K": "i32", "stride_am": "i32", "stride_wn": "i32", "stride_zn": "i32", "stride_sn": "i32",
           "stride_om": "i32", "stride_rm": "i32"}
    const = {"BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": bk, "KW": kw, "XP": kw if xperm else 0, "GROUP": group or K, "EVEN_K": K % bk == 0, "ASM": asm,
             "BLOCK_M": cfg["BLOCK_M"], "FP4": fp4, "WSCALE": wscale, "HAS_BIAS": bias, "ACTIVATION": activation,
             "HAS_RESIDUAL": residual, "HAS_NORM": norm, "QUANT_X": quant_mode(fp4, bf16) if M <= MAX_M else 0,
             "ROW_SCALE": bf16 and not fp4, "SWIGLU": swiglu, "GATE": "silu",
             "PACK": cfg["PACK"], "BLOCK_DOTS": cfg["BLOCK_DOTS"], "VEC_F": cfg["VEC_F"],
             "SPLIT_K": split, "UNROLL": cfg["UNROLL"]}
    sig.update(eps="fp32", scale="fp32")
    if split > 1:  # split-K: fp32 partials, one arrival counter per tile, K steps per split
        sig.update(part_ptr="*fp32", lock_ptr="*i32", k_per_split="i32")
    else:
        const.update(part_ptr=None, lock_ptr=None, k_per_split=1)
    post = post_norm and M <= MAX_M
    const.update(POST_NORM=post, WRITE_Z=post, LAYER_NORM=layer_norm)
    sig.update(post_eps="fp32", **{f"act_p{i}": "fp32" for i in range(4)})
    for name, used in (("norm_ptr", norm), ("nb_ptr", layer_norm), ("xn_ptr", norm or const["QUANT_X"] or post),
                       ("pres_ptr", post), ("pw_ptr", post), ("z_ptr", post)):  # the prologue's operands (xn: fp16)
        sig.update({name: "*fp16" if name == "xn_ptr" else xt}) if used else const.update({name: None})
    layout = layout_name(bk, kw, "f4e2m1" if fp4 else "i4", xperm)
    steps = (("post_norm", post_norm), ("layer_norm" if layer_norm else "norm", norm), ("swiglu", swiglu))
    fused = "".join(f" {name}" for name, on in steps if on)
    return {"module": KERNEL_MODULE, "kernel": "qlinear_w4_decode_kernel", "signature": sig, "constexprs": const,
            "divisible": ["N", "K", "stride_am", "stride_wn", "stride_zn", "stride_sn", "stride_om", "stride_rm"],
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "label": f"qlinear {'w4a8-fp' if fp4 else 'w4a16-int4'} decode {N}x{K} g={group}"
            + (f" splitk{split}" if split > 1 else "") + f" {layout}" + fused + (" xielu" if activation == "xielu" else "")
            + ("" if asm else " portable") + (" bf16" if bf16 else "")
            + (f" M={M}" if M > MAX_M else "")}
