"""Mixture-of-experts template: the `moe` op (`ir/moe_ops.py`) in two launches, shaped for decode.

`moe(x, norm_w, router_w, router_b, w_gate_up, b_gate_up, w_down, b_down, residual, k=, ...)`:
- `moe_up_kernel`, grid (T * k, I tiles): program (t, j) normalises token t (RMSNorm or LayerNorm), computes
  its router logits over all E experts, softmax and the top-k in registers (lowest index first on ties), keeps slot
  j's expert e and weight (renormalised over the k when asked; the I-tile 0 program stores both for the down
  kernel), then the GEMV of e's gate and up rows with the gated activation, stored as row t * k + j of the
  activations [T * k, I] (x's dtype, as the captured chain rounds them);
- `moe_down_kernel`, grid (T, H tiles): program t sums over its k slots weight * (the slot's activations times e's
  down rows + bias), adds the residual, stores y [T, H].
The activations, weights and expert ids live in the workspace (`ws`), so `run()` allocates nothing.

Decisions:
- Each program routes its own token (E x H multiply-adds, the router weight read from L2 by every program) instead
  of a routing launch: the op stays within two launches, and at decode the router is a few percent of one
  expert's tile. These kernels read each chosen expert's weights once per (token, slot): right for decode; more
  than GROUPED_FROM tokens (prefill) run `moe_grouped.py` (rows sorted by expert, tensor-core GEMMs).
- The experts are dense, or w4a16-int4 `Weight`s (`passes/moe_quant.py`) dequantized in registers
  (`moe_routing.expert_tile`); `ExpertWeight` says which to the kernels.
- GEMV tiles (rows x K chunk, CUDA-core products summed per row): at decode an expert's rows are read once, and
  the tiles are chosen so the I (up) and H (down) tiles put >= 2 programs on every SM (`moe_blocks`).
- Weight strides come from the tensors: transposed experts (GPT-OSS: [E, H, 2I], [E, I, H]) need no copy; the
  interleaved gate/up layout (GPT-OSS) picks rows 2n, 2n + 1 instead of n, I + n.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.blocks import SM_COUNT, next_pow2
from fxforge.codegen.pool import Workspace, out_tensor, scratch
from fxforge.codegen.templates.gemm import device_arch
from fxforge.codegen.templates.moe_grouped import GROUPED_FROM, moe_grouped
from fxforge.codegen.templates.moe_routing import (
    ExpertWeight,
    bias_strides,
    expert_tile,
    gated_act,
    normed_x,
    route_slot,
    token_stats,
)
from fxforge.ir.graph import Weight


@triton.jit
def moe_up_kernel(x_ptr, nw_ptr, wr_ptr, br_ptr, cb_ptr, wsg_ptr, wgu_ptr, gs_ptr, gz_ptr, bgu_ptr, act_ptr,
                  route_w_ptr, route_e_ptr, H, I, E, eps, limit, alpha, renorm_eps, renorm_min, scale,  # noqa: E741
                  group_fill, stride_xt, stride_re, stride_rk, stride_ge, stride_gn, stride_gk, stride_be, stride_bn,
                  K: tl.constexpr, SLOTS: tl.constexpr, NORM: tl.constexpr, ROUTER_BIAS: tl.constexpr,
                  SCORE: tl.constexpr, CHOICE_BIAS: tl.constexpr, SHARED_GATE: tl.constexpr, GROUPS: tl.constexpr,
                  TOP_GROUPS: tl.constexpr, EXPERT_BIAS: tl.constexpr, RENORM: tl.constexpr, ACT: tl.constexpr,
                  INTERLEAVED: tl.constexpr, QUANT: tl.constexpr, GROUP: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    s = tl.program_id(0)
    pid_n = tl.program_id(1)
    t = s // SLOTS
    j = s % SLOTS
    x_ptr += t.to(tl.int64) * stride_xt
    offs_k = tl.arange(0, BLOCK_K)
    stats = token_stats(x_ptr, H, eps, NORM, BLOCK_K)
    expert, weight = route_slot(x_ptr, nw_ptr, wr_ptr, br_ptr, cb_ptr, wsg_ptr, j, H, E, stats, renorm_eps, renorm_min,
                                scale, group_fill, stride_re, stride_rk, K, NORM, ROUTER_BIAS, SCORE, CHOICE_BIAS,
                                RENORM, SHARED_GATE, GROUPS, TOP_GROUPS, BLOCK_E, BLOCK_R)
    if pid_n == 0:
        tl.store(route_w_ptr + s, weight)
        tl.store(route_e_ptr + s, expert)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < I
    gate_rows = offs_n * 2 if INTERLEAVED else offs_n
    up_rows = gate_rows + 1 if INTERLEAVED else offs_n + I
    e64 = expert.to(tl.int64)
    groups = tl.cdiv(H, GROUP)
    w_ptr = wgu_ptr + e64 * stride_ge
    s_ptr, z_ptr = gs_ptr + e64 * 2 * I * groups, gz_ptr + e64 * 2 * I * groups  # int4: the expert's scales, zeros
    acc_g = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        cols = k0 + offs_k
        cmask = cols < H
        xk = normed_x(x_ptr, nw_ptr, cols, cmask, stats, NORM)[None, :]
        m2 = nmask[:, None] & cmask[None, :]
        wg = expert_tile(w_ptr, s_ptr, z_ptr, gate_rows[:, None], cols[None, :], m2, stride_gn, stride_gk, groups,
                         GROUP, QUANT)
        wu = expert_tile(w_ptr, s_ptr, z_ptr, up_rows[:, None], cols[None, :], m2, stride_gn, stride_gk, groups,
                         GROUP, QUANT)
        acc_g += tl.sum(wg * xk, 1)
        acc_u += tl.sum(wu * xk, 1)
    if EXPERT_BIAS:
        b_ptr = bgu_ptr + expert.to(tl.int64) * stride_be
        acc_g += tl.load(b_ptr + gate_rows * stride_bn, mask=nmask, other=0.0).to(tl.float32)
        acc_u += tl.load(b_ptr + up_rows * stride_bn, mask=nmask, other=0.0).to(tl.float32)
    a = gated_act(acc_g, acc_u, limit, alpha, ACT)
    tl.store(act_ptr + s.to(tl.int64) * I + offs_n, a.to(act_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def moe_down_kernel(act_ptr, route_w_ptr, route_e_ptr, wd_ptr, ds_ptr, dz_ptr, bd_ptr, res_ptr, out_ptr, H, I,  # noqa: E741
                    stride_de, stride_dn, stride_dk, stride_be, stride_bn, stride_rt, stride_ot,
                    K: tl.constexpr, EXPERT_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, QUANT: tl.constexpr,
                    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    t = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < H
    offs_k = tl.arange(0, BLOCK_K)
    groups = tl.cdiv(I, GROUP)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j in range(K):
        s = t * K + j
        expert = tl.load(route_e_ptr + s).to(tl.int64)
        w_ptr = wd_ptr + expert * stride_de
        s_ptr, z_ptr = ds_ptr + expert * H * groups, dz_ptr + expert * H * groups
        a_ptr = act_ptr + s.to(tl.int64) * I
        part = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, I, BLOCK_K):
            cols = k0 + offs_k
            cmask = cols < I
            a = tl.load(a_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            wd = expert_tile(w_ptr, s_ptr, z_ptr, offs_n[:, None], cols[None, :], nmask[:, None] & cmask[None, :],
                             stride_dn, stride_dk, groups, GROUP, QUANT)
            part += tl.sum(wd * a[None, :], 1)
        if EXPERT_BIAS:
            part += tl.load(bd_ptr + expert * stride_be + offs_n * stride_bn, mask=nmask, other=0.0).to(tl.float32)
        acc += part * tl.load(route_w_ptr + s)
    if RESIDUAL:
        acc += tl.load(res_ptr + t.to(tl.int64) * stride_rt + offs_n, mask=nmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + offs_n, acc.to(out_ptr.dtype.element_ty), mask=nmask)


def moe_blocks(rows: int, n: int, k: int, dtype: torch.dtype, arch: int | None, tiles: int = 1) -> dict:
    """GEMV tiles of `rows` programs' rows over an output of n x reduction k, `tiles` weight tiles per step (2: gate
    and up): without an arch (the interpreter) whole rows (few programs); on a GPU the widest BLOCK_N in 16..64 / tiles
    that still puts two programs on every SM, a K chunk of 128 (16-bit) or 64 (fp32) elements (two [64, 128] tiles
    spilled ~1.2 KB on sm_90; one [32, 128] each: 167 registers, none)."""
    if arch is None:
        return dict(BLOCK_N=min(next_pow2(n), 128), BLOCK_K=min(next_pow2(k), 256), num_warps=4)
    want = 2 * SM_COUNT.get(arch, 132)
    bn = next((b for b in (64 // tiles, 32 // tiles) if rows * -(-n // b) >= want), 16)
    return dict(BLOCK_N=bn, BLOCK_K=64, num_warps=4)


def moe(x: torch.Tensor, norm_w: torch.Tensor | None, router_w: torch.Tensor, router_b: torch.Tensor | None,
        router_cb: torch.Tensor | None, shared_gate_w: torch.Tensor | None, w_gate_up: torch.Tensor | Weight,
        b_gate_up: torch.Tensor | None, w_down: torch.Tensor | Weight, b_down: torch.Tensor | None,
        residual: torch.Tensor | None = None, *, k: int, renorm: bool = False, norm: str = "rms", eps: float = 1e-6,
        act: str = "silu", gate_up: str = "concat", transposed: bool = False, limit: float = 7.0, alpha: float = 1.702,
        score: str = "softmax", renorm_eps: float = 0.0, renorm_min: float = 0.0, scale: float = 1.0, shared: int = 0,
        groups: int = 1, top_groups: int = 1, group_fill: float = float("-inf"), grouped: bool | None = None,
        out: torch.Tensor | None = None, ws: Workspace | None = None) -> torch.Tensor:
    """The `moe` op on x [T, H] (shapes checked by the op's type inference; operands as `ir/moe_ops.py` names them;
    the experts dense or `#quantized` int4 `Weight`s, `moe_quant.py`; `norm`: the kind of norm_w, "rms" or "layer").
    `grouped`: the prefill path (`moe_grouped.py`; None: for more than GROUPED_FROM tokens, unless a CUDA graph is
    being captured). `out`: the result's storage (contiguous [T, H]), else allocated; `ws`: the workspace the
    activations and the routing come from."""
    T, H = x.shape
    E = router_w.shape[0]
    slots = k + shared  # every token's routed slots, then the shared experts' (stacked after the routed ones)
    gu, dn = ExpertWeight.of(w_gate_up, transposed, x.dtype), ExpertWeight.of(w_down, transposed, x.dtype)
    inter = gu.shape[1] // 2
    x = x.contiguous()
    out = out_tensor(out, (T, H), x.dtype, x.device, "moe")
    arch = device_arch(x.device)
    up = moe_blocks(T * slots, inter, H, gu.dtype, arch, tiles=2)
    block_e = max(next_pow2(E), 2)
    block_r = min(up["BLOCK_K"], max(16, 4096 // block_e))  # router tile [BLOCK_E, BLOCK_R]: <= 4096 values
    res = residual.contiguous() if residual is not None else None
    dummy = out  # pointer of an absent operand (never read: its flag is off)
    router = dict(routing=(router_w, router_b if router_b is not None else dummy,
                           router_cb if router_cb is not None else dummy,
                           shared_gate_w if shared_gate_w is not None else dummy),
                  flags=dict(K=k, SLOTS=slots, NORM=norm if norm_w is not None else "none",
                             ROUTER_BIAS=router_b is not None, SCORE=score, CHOICE_BIAS=router_cb is not None,
                             SHARED_GATE=shared_gate_w is not None, RENORM=renorm, GROUPS=groups,
                             TOP_GROUPS=top_groups),
                  floats=(float(renorm_eps), float(renorm_min), float(scale), float(group_fill)))
    if grouped is None:  # a CUDA graph being captured cannot take the grouped path's host sync (tile count)
        grouped = T > GROUPED_FROM and not (x.is_cuda and torch.cuda.is_current_stream_capturing())
    if grouped:
        return moe_grouped(x, norm_w, router, gu, b_gate_up, dn, b_down, res, out, ws, eps=eps, act=act,
                           gate_up=gate_up, limit=limit, alpha=alpha,
                           route_blocks=dict(BLOCK_E=block_e, BLOCK_R=block_r, BLOCK_K=up["BLOCK_K"]))
    acts, route_w, route_e = scratch(ws, x.device, ((T * slots, inter), x.dtype), ((T * slots,), torch.float32),
                                     ((T * slots,), torch.int32))
    moe_up_kernel[(T * slots, triton.cdiv(inter, up["BLOCK_N"]))](
        x, norm_w if norm_w is not None else dummy, *router["routing"],
        gu.ptr, gu.scale, gu.zero, b_gate_up if b_gate_up is not None else dummy, acts, route_w, route_e,
        H, inter, E, float(eps), float(limit), float(alpha), *router["floats"], x.stride(0), router_w.stride(0),
        router_w.stride(1), *gu.strides, *bias_strides(b_gate_up), **router["flags"],
        EXPERT_BIAS=b_gate_up is not None, ACT=act, INTERLEAVED=gate_up == "interleaved", QUANT=gu.quant,
        GROUP=gu.group, BLOCK_E=block_e, BLOCK_R=block_r, BLOCK_N=up["BLOCK_N"], BLOCK_K=up["BLOCK_K"],
        num_warps=up["num_warps"])
    down = moe_blocks(T, H, inter, dn.dtype, arch)
    moe_down_kernel[(T, triton.cdiv(H, down["BLOCK_N"]))](
        acts, route_w, route_e, dn.ptr, dn.scale, dn.zero, b_down if b_down is not None else dummy,
        res if res is not None else dummy, out, H, inter, *dn.strides, *bias_strides(b_down),
        res.stride(0) if res is not None else 0, out.stride(0),
        K=slots, EXPERT_BIAS=b_down is not None, RESIDUAL=res is not None, QUANT=dn.quant, GROUP=dn.group,
        BLOCK_N=down["BLOCK_N"], BLOCK_K=down["BLOCK_K"], num_warps=down["num_warps"])
    return out


def moe_specs(dtype: str, T: int, E: int, H: int, inter: int, k: int, *, arch: int = 90, gpt_oss: bool = False,
              quant: bool = False, deepseek: bool = False, norm: str = "rms") -> list[dict]:
    """Build specs (`codegen.build`) of both kernels for contiguous operands of `dtype` at T tokens (tiles as
    `moe` picks them on sm_`arch`); `gpt_oss`: router and expert biases, transposed interleaved weights, its act;
    `quant`: int4 experts (codes, fp16 scales, uint8 zeros, group 128); `deepseek`: a sigmoid router with a choice
    bias and one gated shared expert; `norm`: the token norm ("rms", or "layer": Cohere 2 MoE's LayerNorm)."""
    t = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]
    torch_dtype = getattr(torch, dtype)
    slots = k + deepseek
    up, down = moe_blocks(T * slots, inter, H, torch_dtype, arch, tiles=2), moe_blocks(T, H, inter, torch_dtype, arch)
    block_e = max(next_pow2(E), 2)
    w, sc, z = ("*u8", "*fp16", "*u8") if quant else (f"*{t}",) * 3
    up_sig = {**{p: f"*{t}" for p in ("x_ptr", "nw_ptr", "wr_ptr", "br_ptr", "cb_ptr", "wsg_ptr", "bgu_ptr",
                                      "act_ptr")},
              "wgu_ptr": w, "gs_ptr": sc, "gz_ptr": z,
              "route_w_ptr": "*fp32", "route_e_ptr": "*i32", "H": "i32", "I": "i32", "E": "i32", "eps": "fp32",
              "limit": "fp32", "alpha": "fp32", "renorm_eps": "fp32", "renorm_min": "fp32", "scale": "fp32",
              "group_fill": "fp32", "stride_xt": "i32", "stride_re": "i32", "stride_rk": "i32",
              "stride_ge": "i32", "stride_gn": "i32", "stride_gk": "i32", "stride_be": "i32", "stride_bn": "i32"}
    flags = dict(QUANT=quant, GROUP=128 if quant else 1)
    up_const = dict(K=k, SLOTS=slots, NORM=norm, ROUTER_BIAS=gpt_oss, EXPERT_BIAS=gpt_oss, RENORM=True,
                    SCORE="sigmoid" if deepseek else "softmax", CHOICE_BIAS=deepseek, SHARED_GATE=deepseek,
                    GROUPS=8 if deepseek else 1, TOP_GROUPS=4 if deepseek else 1,
                    ACT="gpt_oss" if gpt_oss else "silu", INTERLEAVED=gpt_oss, BLOCK_E=block_e, **flags,
                    BLOCK_R=min(up["BLOCK_K"], max(16, 4096 // block_e)), BLOCK_N=up["BLOCK_N"], BLOCK_K=up["BLOCK_K"])
    down_sig = {"act_ptr": f"*{t}", "route_w_ptr": "*fp32", "route_e_ptr": "*i32", "wd_ptr": w, "ds_ptr": sc,
                "dz_ptr": z, "bd_ptr": f"*{t}", "res_ptr": f"*{t}", "out_ptr": f"*{t}", "H": "i32", "I": "i32",
                "stride_de": "i32", "stride_dn": "i32", "stride_dk": "i32", "stride_be": "i32", "stride_bn": "i32",
                "stride_rt": "i32", "stride_ot": "i32"}
    down_const = dict(K=slots, EXPERT_BIAS=gpt_oss, RESIDUAL=True, BLOCK_N=down["BLOCK_N"], BLOCK_K=down["BLOCK_K"],
                      **flags)
    transposed = gpt_oss and not quant  # int4 experts are laid out [E, N, K] (`moe_quant.py`)
    up_const["stride_gn" if transposed else "stride_gk"] = 1  # the contiguous dim, as the JIT specialises a stride 1
    down_const["stride_dn" if transposed else "stride_dk"] = 1
    for sig, const in ((up_sig, up_const), (down_sig, down_const)):
        for name in [n for n in sig if n in const]:
            del sig[name]
    label = (f"moe {dtype} T={T} E={E} H={H} I={inter} k={k}{' gpt_oss' * gpt_oss}{' int4' * quant}"
             f"{' deepseek' * deepseek}{' layer_norm' * (norm == 'layer')}")
    common = {"module": __name__, "num_stages": 1, "divisible": ["H", "I"]}
    return [{**common, "kernel": "moe_up_kernel", "signature": up_sig, "constexprs": up_const,
             "num_warps": up["num_warps"], "label": f"{label} up"},
            {**common, "kernel": "moe_down_kernel", "signature": down_sig, "constexprs": down_const,
             "num_warps": down["num_warps"], "label": f"{label} down"}]
