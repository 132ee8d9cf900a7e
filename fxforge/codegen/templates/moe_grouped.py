"""Mixture-of-experts prefill: the `moe` op's (token, slot) rows grouped by expert, so each expert's weights are read
once per BLOCK_M rows routed to it (tensor-core GEMMs), not once per row as the decode kernels (`moe.py`) read them.

`moe_grouped(...)` (called by `moe.moe` for more than `GROUPED_FROM` tokens, or when asked):
- `moe_route_kernel`, grid (T,): token t's RMSNorm (stored: xn [T, H] in x's dtype), router softmax, its k (expert,
  weight) slots;
- on the host (torch): the slots sorted by expert, each expert's rows padded to BLOCK_M (`expert_tiles`): the tile
  list and each tile's expert (one device-to-host sync: the tile count; prefill is not graph-captured);
- `moe_grouped_up_kernel`, grid (tiles, I tiles): gathered xn rows times the tile's expert's gate and up rows, the
  gated activation, stored per slot [T * k, I] in x's dtype;
- `moe_grouped_down_kernel`, grid (tiles, H tiles): the activations times the expert's down rows (+ bias), times the
  slot's weight, fp32 partials per slot [T * k, H];
- the k partials of a token summed with the residual in fp32 and rounded once (torch), as the decode kernels do.

Decisions:
- Sorting on the host with torch (argsort, bincount) rather than an alignment kernel: prefill runs once per prompt,
  and its launch count is not the decode step's.
- fp32 partials per slot, summed after: deterministic (no atomics), the same order of rounding as the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.pool import Workspace, scratch
from fxforge.codegen.templates.gemm import dot_options
from fxforge.codegen.templates.moe_routing import (
    ExpertWeight,
    bias_strides,
    choice_scores,
    expert_tile,
    gated_act,
    normed_x,
    pick_slot,
    router_probs,
    shared_gate,
    token_stats,
)

GROUPED_FROM = 16  # tokens: more run grouped (prefill); up to it the decode kernels (graph-capturable, no sync)


@triton.jit
def moe_route_kernel(x_ptr, nw_ptr, wr_ptr, br_ptr, cb_ptr, wsg_ptr, xn_ptr, route_w_ptr, route_e_ptr, H, E, eps,
                     renorm_eps, renorm_min, scale, group_fill, stride_xt, stride_re, stride_rk,
                     K: tl.constexpr, SLOTS: tl.constexpr, NORM: tl.constexpr, ROUTER_BIAS: tl.constexpr,
                     SCORE: tl.constexpr, CHOICE_BIAS: tl.constexpr, SHARED_GATE: tl.constexpr,
                     GROUPS: tl.constexpr, TOP_GROUPS: tl.constexpr, RENORM: tl.constexpr, BLOCK_E: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    t = tl.program_id(0)
    x_ptr += t.to(tl.int64) * stride_xt
    stats = token_stats(x_ptr, H, eps, NORM, BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, H, BLOCK_K):
        cols = k0 + offs_k
        xk = normed_x(x_ptr, nw_ptr, cols, cols < H, stats, NORM)
        tl.store(xn_ptr + t.to(tl.int64) * H + cols, xk.to(xn_ptr.dtype.element_ty), mask=cols < H)
    p = router_probs(x_ptr, nw_ptr, wr_ptr, br_ptr, H, E, stats, stride_re, stride_rk, NORM, ROUTER_BIAS, SCORE,
                     BLOCK_E, BLOCK_R)
    c = choice_scores(p, cb_ptr, E, group_fill, CHOICE_BIAS, GROUPS, TOP_GROUPS, BLOCK_E)
    for j in range(K):
        expert, weight = pick_slot(p, c, j, renorm_eps, renorm_min, scale, K, RENORM, BLOCK_E)
        tl.store(route_w_ptr + t * SLOTS + j, weight)
        tl.store(route_e_ptr + t * SLOTS + j, expert)
    if SLOTS > K:  # the shared experts, every token's
        gate = shared_gate(x_ptr, nw_ptr, wsg_ptr, H, stats, NORM, SHARED_GATE, BLOCK_R)
        for j in range(K, SLOTS):
            tl.store(route_w_ptr + t * SLOTS + j, gate)
            tl.store(route_e_ptr + t * SLOTS + j, E + j - K)


@triton.jit
def moe_grouped_up_kernel(xn_ptr, rows_ptr, tile_e_ptr, wgu_ptr, gs_ptr, gz_ptr, bgu_ptr, act_ptr, H, I,  # noqa: E741
                          limit, alpha,
                          stride_ge, stride_gn, stride_gk, stride_be, stride_bn,
                          K: tl.constexpr, EXPERT_BIAS: tl.constexpr, ACT: tl.constexpr, INTERLEAVED: tl.constexpr,
                          QUANT: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    expert = tl.load(tile_e_ptr + pid_m).to(tl.int64)
    slots = tl.load(rows_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = slots >= 0
    tokens = tl.where(valid, slots // K, 0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < I
    gate_rows = offs_n * 2 if INTERLEAVED else offs_n
    up_rows = gate_rows + 1 if INTERLEAVED else offs_n + I
    groups = tl.cdiv(H, GROUP)
    w_ptr = wgu_ptr + expert * stride_ge
    s_ptr, z_ptr = gs_ptr + expert * 2 * I * groups, gz_ptr + expert * 2 * I * groups
    offs_k = tl.arange(0, BLOCK_K)
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        cols = k0 + offs_k
        cmask = cols < H
        a = tl.load(xn_ptr + tokens[:, None] * H + cols[None, :], mask=valid[:, None] & cmask[None, :], other=0.0)
        wmask = cmask[:, None] & nmask[None, :]
        wg = expert_tile(w_ptr, s_ptr, z_ptr, gate_rows[None, :], cols[:, None], wmask, stride_gn, stride_gk, groups,
                         GROUP, QUANT)
        wu = expert_tile(w_ptr, s_ptr, z_ptr, up_rows[None, :], cols[:, None], wmask, stride_gn, stride_gk, groups,
                         GROUP, QUANT)
        if UPCAST:
            a = a.to(tl.float32)
        else:
            wg, wu = wg.to(a.dtype), wu.to(a.dtype)
        acc_g = tl.dot(a, wg, acc_g, input_precision=INPUT_PRECISION)
        acc_u = tl.dot(a, wu, acc_u, input_precision=INPUT_PRECISION)
    if EXPERT_BIAS:
        b_ptr = bgu_ptr + expert * stride_be
        acc_g += tl.load(b_ptr + gate_rows * stride_bn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        acc_u += tl.load(b_ptr + up_rows * stride_bn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    act = gated_act(acc_g, acc_u, limit, alpha, ACT)
    out = act_ptr + slots.to(tl.int64)[:, None] * I + offs_n[None, :]
    tl.store(out, act.to(act_ptr.dtype.element_ty), mask=valid[:, None] & nmask[None, :])


@triton.jit
def moe_grouped_down_kernel(act_ptr, rows_ptr, tile_e_ptr, route_w_ptr, wd_ptr, ds_ptr, dz_ptr, bd_ptr, part_ptr,
                            H, I,  # noqa: E741
                            stride_de, stride_dn, stride_dk, stride_be, stride_bn,
                            EXPERT_BIAS: tl.constexpr, QUANT: tl.constexpr, GROUP: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    expert = tl.load(tile_e_ptr + pid_m).to(tl.int64)
    slots = tl.load(rows_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = slots >= 0
    rows = tl.where(valid, slots, 0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < H
    groups = tl.cdiv(I, GROUP)
    w_ptr = wd_ptr + expert * stride_de
    s_ptr, z_ptr = ds_ptr + expert * H * groups, dz_ptr + expert * H * groups
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, I, BLOCK_K):
        cols = k0 + offs_k
        cmask = cols < I
        a = tl.load(act_ptr + rows[:, None] * I + cols[None, :], mask=valid[:, None] & cmask[None, :], other=0.0)
        w = expert_tile(w_ptr, s_ptr, z_ptr, offs_n[None, :], cols[:, None], cmask[:, None] & nmask[None, :],
                        stride_dn, stride_dk, groups, GROUP, QUANT)
        if UPCAST:
            a = a.to(tl.float32)
        else:
            w = w.to(a.dtype)
        acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)
    if EXPERT_BIAS:
        acc += tl.load(bd_ptr + expert * stride_be + offs_n * stride_bn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    acc = acc * tl.load(route_w_ptr + rows, mask=valid, other=0.0)[:, None]
    tl.store(part_ptr + rows[:, None] * H + offs_n[None, :], acc, mask=valid[:, None] & nmask[None, :])


def expert_tiles(experts: torch.Tensor, E: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [tiles * block_m] int32: the slots of each tile, -1 padding; tile_expert [tiles] int32) for the flat
    expert ids of the slots, each expert's slots in order and padded to a multiple of block_m."""
    e = experts.long()
    order = torch.argsort(e, stable=True)
    counts = torch.bincount(e, minlength=E)
    tiles = (counts + block_m - 1) // block_m
    tile_expert = torch.repeat_interleave(torch.arange(E, device=e.device), tiles)
    first_tile = torch.cumsum(tiles, 0) - tiles
    first_slot = torch.cumsum(counts, 0) - counts
    local = (torch.arange(tile_expert.numel(), device=e.device) - first_tile[tile_expert])[:, None] * block_m
    local = local + torch.arange(block_m, device=e.device)[None, :]
    valid = local < counts[tile_expert][:, None]
    at = (first_slot[tile_expert][:, None] + local).clamp(max=max(e.numel() - 1, 0))
    rows = torch.where(valid, order[at], -1)
    return rows.reshape(-1).to(torch.int32), tile_expert.to(torch.int32)


def moe_grouped(x: torch.Tensor, norm_w, router: dict, gu: ExpertWeight, b_gate_up, dn: ExpertWeight, b_down,
                residual, out, ws: Workspace | None, *, eps: float, act: str, gate_up: str, limit: float, alpha: float,
                route_blocks: dict) -> torch.Tensor:
    """The prefill path of `moe.moe` (operands checked there; `router`: its routing operands, flags and floats, as
    the decode kernel takes them; `gu`/`dn`: the experts as the kernels read them; `route_blocks`: BLOCK_E /
    BLOCK_R / BLOCK_K of the router)."""
    T, H = x.shape
    router_w = router["routing"][0]
    E, inter, k = router_w.shape[0], dn.shape[2], router["flags"]["SLOTS"]  # k: slots a token, shared ones included
    xn, acts, part, route_w, route_e = scratch(
        ws, x.device, ((T, H), x.dtype), ((T * k, inter), x.dtype), ((T * k, H), torch.float32),
        ((T * k,), torch.float32), ((T * k,), torch.int32))
    dummy = out
    moe_route_kernel[(T,)](x, norm_w if norm_w is not None else dummy, *router["routing"], xn, route_w, route_e, H, E,
                           float(eps), *router["floats"], x.stride(0), router_w.stride(0), router_w.stride(1),
                           **router["flags"], **route_blocks, num_warps=4)
    block_m = 16 if T * k <= 8 * E else 64
    rows, tile_expert = expert_tiles(route_e, gu.shape[0], block_m)
    dots = dot_options(x.dtype, gu.dtype)
    bn, bk = 64, 16 if x.dtype.itemsize >= 4 else 64  # up: two [BLOCK_M, bn / 2] accumulators (fp32: K 32 spilled)
    moe_grouped_up_kernel[(tile_expert.numel(), triton.cdiv(inter, bn // 2))](
        xn, rows, tile_expert, gu.ptr, gu.scale, gu.zero, b_gate_up if b_gate_up is not None else dummy, acts, H, inter,
        float(limit), float(alpha), *gu.strides, *bias_strides(b_gate_up), K=k, EXPERT_BIAS=b_gate_up is not None,
        ACT=act, INTERLEAVED=gate_up == "interleaved", QUANT=gu.quant, GROUP=gu.group, BLOCK_M=block_m, BLOCK_N=bn // 2, BLOCK_K=bk, **dots,
        num_warps=4, num_stages=2)
    moe_grouped_down_kernel[(tile_expert.numel(), triton.cdiv(H, bn))](
        acts, rows, tile_expert, route_w, dn.ptr, dn.scale, dn.zero, b_down if b_down is not None else dummy, part, H,
        inter, *dn.strides, *bias_strides(b_down), EXPERT_BIAS=b_down is not None, QUANT=dn.quant, GROUP=dn.group,
        BLOCK_M=block_m, BLOCK_N=bn, BLOCK_K=bk, **dot_options(x.dtype, dn.dtype), num_warps=4, num_stages=2)
    total = part.view(T, k, H).sum(1)
    if residual is not None:
        total += residual.float()
    return out.copy_(total)


def moe_grouped_specs(dtype: str, *, block_m: int = 64, gpt_oss: bool = False, quant: bool = False) -> list[dict]:
    """Build specs (`codegen.build`) of the prefill kernels for contiguous operands of `dtype` (`gpt_oss`: expert
    biases, transposed interleaved weights, its act; `quant`: int4 experts, group 128)."""
    t = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]
    bk = 16 if dtype == "float32" else 64
    dots = dict(UPCAST=False, INPUT_PRECISION="ieee" if dtype == "float32" else "tf32")
    w, sc, z = ("*u8", "*fp16", "*u8") if quant else (f"*{t}",) * 3
    strides = ("stride_e", "stride_n", "stride_k", "stride_be", "stride_bn")
    up_sig = {**{p: f"*{t}" for p in ("xn_ptr", "bgu_ptr", "act_ptr")}, "wgu_ptr": w, "gs_ptr": sc, "gz_ptr": z,
              "rows_ptr": "*i32", "tile_e_ptr": "*i32", "H": "i32", "I": "i32", "limit": "fp32", "alpha": "fp32",
              **{s.replace("stride_", "stride_g") if s[7] != "b" else s: "i32" for s in strides}}
    down_sig = {**{p: f"*{t}" for p in ("act_ptr", "bd_ptr")}, "wd_ptr": w, "ds_ptr": sc, "dz_ptr": z,
                "rows_ptr": "*i32", "tile_e_ptr": "*i32", "route_w_ptr": "*fp32", "part_ptr": "*fp32", "H": "i32",
                "I": "i32", **{s.replace("stride_", "stride_d") if s[7] != "b" else s: "i32" for s in strides}}
    common = dict(EXPERT_BIAS=gpt_oss, QUANT=quant, GROUP=128 if quant else 1, BLOCK_M=block_m, BLOCK_N=64,
                  BLOCK_K=bk, **dots)
    transposed = gpt_oss and not quant  # int4 experts are laid out [E, N, K] (`moe_quant.py`)
    up_const = dict(common, K=2, ACT="gpt_oss" if gpt_oss else "silu", INTERLEAVED=gpt_oss, BLOCK_N=32,
                    **{"stride_gn" if transposed else "stride_gk": 1})
    down_const = dict(common, **{"stride_dn" if transposed else "stride_dk": 1})
    for sig, const in ((up_sig, up_const), (down_sig, down_const)):
        for name in [n for n in sig if n in const]:
            del sig[name]
    label = f"moe grouped {dtype} BLOCK_M={block_m}{' gpt_oss' * gpt_oss}{' int4' * quant}"
    base = {"module": __name__, "num_warps": 4, "num_stages": 2, "divisible": ["H", "I"]}
    route_sig = {**{p: f"*{t}" for p in ("x_ptr", "nw_ptr", "wr_ptr", "br_ptr", "cb_ptr", "wsg_ptr", "xn_ptr")},
                 "route_w_ptr": "*fp32", "renorm_eps": "fp32", "renorm_min": "fp32", "scale": "fp32",
                 "group_fill": "fp32",
                 "route_e_ptr": "*i32", "H": "i32", "E": "i32", "eps": "fp32", "stride_xt": "i32", "stride_re": "i32"}
    route_const = dict(stride_rk=1, K=8 if not gpt_oss else 4, SLOTS=9 if not gpt_oss else 4, NORM="rms",
                       ROUTER_BIAS=gpt_oss, SCORE="softmax" if gpt_oss else "sigmoid", CHOICE_BIAS=not gpt_oss,
                       SHARED_GATE=not gpt_oss, GROUPS=1 if gpt_oss else 8, TOP_GROUPS=1 if gpt_oss else 4,
                       RENORM=True,
                       BLOCK_E=128 if not gpt_oss else 32, BLOCK_R=32 if not gpt_oss else 128, BLOCK_K=128)
    return [{**base, "kernel": "moe_route_kernel", "signature": route_sig, "constexprs": route_const,
             "divisible": ["H"], "label": f"{label} route"},
            {**base, "kernel": "moe_grouped_up_kernel", "signature": up_sig, "constexprs": up_const,
             "label": f"{label} up"},
            {**base, "kernel": "moe_grouped_down_kernel", "signature": down_sig, "constexprs": down_const,
             "label": f"{label} down"}]
