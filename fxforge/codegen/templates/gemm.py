"""Dense GEMM template: `gemm_kernel` (nn.Linear with a fused epilogue) and its launcher `linear`
(the batched matmul is `templates/bmm.py`).
- `gemm_kernel`: out[M, N] = epilogue(A[M, K] @ W[N, K]^T), W in nn.Linear layout [out, in].
  The epilogue runs in registers before the single store, in this order:
      y = scale * acc  ->  y += bias[N]  ->  y = activation(y)  ->  y *= post_scale  ->  y *= mul[M, N]
        ->  y += residual[M, N]  ->  cast, store
  with constexpr switches HAS_BIAS, ACTIVATION ("none", "relu", "relu2" (squared), "silu", "gelu" (erf form), "gelu_tanh",
  "sigmoid", "tanh"), HAS_POST_SCALE, HAS_MUL (e.g. SwiGLU's `silu(gate) * up` in the up projection) and HAS_RESIDUAL;
  `scale` and `post_scale` are runtime fp32 multipliers (a logit soft-cap, Gemma2's lm_head: scale 1/cap, tanh,
  post_scale cap); the output dtype is the out pointer's element type.
  ACTIVATION "xielu" (PARAM_ACTIVATIONS, learned scalars) reads them from the runtime fp32 act_p0..act_p3
  (`special_fns.xielu`; `linear(act_args=)`), so the layers of a model share one kernel.
  HAS_KEEP (FFN skipping's decode form, `ir/skip_ops.py`): keep[M] flags (0 = the row is skipped, its A
  row is zero); A rows that are off are not loaded and a tile whose rows are all off skips its K loop
  (an early exit read on the device: no host sync, capturable), then runs the epilogue on its zero
  accumulator, which is exactly what the dense GEMM of the zero rows gives.
  Two fusions at the ends of a decoder block's GEMMs (issue #13, fewer launches):
  the prologue (`gemm_prologue.py`): HAS_NORM, an RMSNorm of A computed in the load (LAYER_NORM: a LayerNorm,
  HAS_NW / HAS_NB: its weight / bias), so the norm that starts a block needs no launch of its own; POST_NORM: A is
  z = res + rms_norm(h, w) (a post-norm block's residual add, z stored as well with WRITE_Z), then its norm if any;
  above SPLIT_K_ROWS rows the launcher writes z with `post_norm_rows` first (one launch more, not per column tile).
  SWIGLU: W is the concatenated [gate; up] weight [2N, K] and the kernel computes
  act(A @ Wg^T) * (A @ Wu^T) with two accumulators over one A tile (the gated MLP's gate/up GEMM, out [M, N]);
  act is GATE, one of `ir.optable.GATED_ACTIVATIONS` (silu: SwiGLU; gelu_tanh: Gemma's GeGLU).
  SPLIT_K > 1 (the decode table's M <= 16 GEMVs of few output tiles): K split across grid axis 1, the
  tile's last split sums the fp32 partials in split order and runs the epilogue (`split_k.py`).
`linear(..., out=, ws=)` writes a planned buffer and takes its scratch from the pool's workspace
(`codegen/pool.py`), so the generated `run()` allocates nothing for it.
Plain pointers with strides and masks (no block pointers: triton 3.6 and 3.9), accumulate in
fp32 and take their tile shape from `fxforge.codegen.blocks.gemm_blocks`.
fp32 operands use exact fp32 dots (input_precision "ieee") to match torch's default (no tf32).
UPCAST converts the loaded tiles to fp32 before the dot: the launchers set it for bf16 under the Triton
interpreter (whose bf16 arithmetic is wrong) and for operands of different dtypes.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from fxforge.codegen.blocks import SPLIT_K_ROWS, gemm_blocks, split_steps, swiglu_blocks
from fxforge.codegen.pool import Workspace, counters, out_tensor, scratch
from fxforge.codegen.templates.gemm_prologue import POST_NORM_ROWS, post_norm_rows, prologue_stats, prologue_tile
from fxforge.codegen.templates.special_fns import tanh, xielu
from fxforge.codegen.templates.split_k import split_range, split_sum
from fxforge.codegen.triton_compat import patch_interpreter
from fxforge.errors import ShapeError
from fxforge.ir.optable import ACTIVATION_PARAMS, GATED_ACTIVATIONS

patch_interpreter()  # Triton 3.6's interpreter under numpy >= 2.4: see triton_compat

ACTIVATIONS = ("none", "relu", "relu2", "silu", "gelu", "gelu_tanh", "sigmoid", "tanh")
# activations with learned scalars (`ir.optable.ACTIVATION_PARAMS`): `linear(act_args=)`, the dense GEMM's only
PARAM_ACTIVATIONS = tuple(ACTIVATION_PARAMS)

_SQRT1_2: tl.constexpr = tl.constexpr(0.7071067811865476)
_SQRT_2_OVER_PI: tl.constexpr = tl.constexpr(0.7978845608028654)


@triton.jit
def apply_activation(y, ACTIVATION: tl.constexpr, p0=0.0, p1=0.0, p2=0.0, p3=0.0):
    """Elementwise activation on an fp32 tile; ACTIVATION is one of `ACTIVATIONS` (xielu: its scalars p0..p3)."""
    if ACTIVATION == "xielu":
        y = xielu(y, p0, p1, p2, p3)
    elif ACTIVATION == "relu":
        y = tl.maximum(y, 0.0)
    elif ACTIVATION == "relu2":  # squared ReLU: relu(y) * relu(y), one rounding at the store
        y = tl.maximum(y, 0.0)
        y = y * y
    elif ACTIVATION == "silu":
        y = y * tl.sigmoid(y)
    elif ACTIVATION == "gelu":
        y = 0.5 * y * (1.0 + tl.math.erf(y * _SQRT1_2))
    elif ACTIVATION == "gelu_tanh":
        u = _SQRT_2_OVER_PI * (y + 0.044715 * y * y * y)
        y = 0.5 * y * (1.0 + (2.0 * tl.sigmoid(2.0 * u) - 1.0))  # tanh(u) = 2 sigmoid(2u) - 1
    elif ACTIVATION == "sigmoid":
        y = tl.sigmoid(y)
    elif ACTIVATION == "tanh":
        y = tanh(y)
    return y


@triton.jit
def tile_coords(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of a 1-D tile id, GROUP_M row tiles at a time so neighbours share operands in L2."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def tile_offsets(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output tile: row, column and k offsets, and the row and column masks."""
    pid_m, pid_n = tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, offs_n, tl.arange(0, BLOCK_K), offs_m < M, offs_n < N


@triton.jit
def gemm_epilogue(acc, scale, offs_m, offs_n, mask_m, mask_n, out_ptr, bias_ptr, res_ptr, mul_ptr,
                  stride_om, stride_on, stride_rm, stride_rn, stride_mm, stride_mn,
                  HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                  HAS_MUL: tl.constexpr, post_scale, HAS_POST_SCALE: tl.constexpr,
                  act_p0=0.0, act_p1=0.0, act_p2=0.0, act_p3=0.0):
    """The dense GEMM epilogue, in registers before the single store (shared by the N:M sparse templates):
    y = scale * acc -> += bias -> activation -> *= post_scale -> *= mul -> += residual -> cast, store.
    act_p*: a PARAM_ACTIVATIONS activation's scalars (xielu: alpha_p, alpha_n, beta, eps)."""
    y = acc * scale
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y = apply_activation(y, ACTIVATION, act_p0, act_p1, act_p2, act_p3)
    if HAS_POST_SCALE:
        y = y * post_scale
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_MUL:
        m_ptrs = mul_ptr + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
        y *= tl.load(m_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r_ptrs = res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :] * stride_rn
        y += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def keep_rows(keep_ptr, stride_km, offs_m, mask_m, K, BLOCK_K: tl.constexpr, HAS_KEEP: tl.constexpr):
    """(the A rows a tile loads, its K-loop trip count): with HAS_KEEP, rows whose keep flag is 0 are not
    loaded and a tile whose rows are all off runs no K iteration (shared by the qlinear kernels)."""
    rows_a = mask_m
    n_k = tl.cdiv(K, BLOCK_K)
    if HAS_KEEP:
        rows_a = mask_m & (tl.load(keep_ptr + offs_m * stride_km, mask=mask_m, other=0.0) != 0)
        n_k = tl.where(tl.max(rows_a.to(tl.int32), 0) > 0, n_k, 0)  # every row skipped: no K loop
    return rows_a, n_k


@triton.jit
def gemm_kernel(
    a_ptr, w_ptr, out_ptr, bias_ptr, res_ptr, mul_ptr,
    M, N, K,
    stride_am, stride_ak, stride_wn, stride_wk, stride_om, stride_on, stride_rm, stride_rn, stride_mm, stride_mn,
    scale, keep_ptr, stride_km,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr, HAS_MUL: tl.constexpr = False,
    HAS_KEEP: tl.constexpr = False,
    norm_ptr=None, eps=0.0, HAS_NORM: tl.constexpr = False, SWIGLU: tl.constexpr = False,
    GATE: tl.constexpr = "silu", nb_ptr=None, LAYER_NORM: tl.constexpr = False, HAS_NB: tl.constexpr = False,
    part_ptr=None, lock_ptr=None, k_per_split=1, SPLIT_K: tl.constexpr = 1, HAS_NW: tl.constexpr = True,
    res2_ptr=None, stride_pm=0, stride_pk=0, post_w_ptr=None, post_eps=0.0, z_ptr=None, stride_zm=0,
    POST_NORM: tl.constexpr = False, WRITE_Z: tl.constexpr = False,
    post_scale=1.0, HAS_POST_SCALE: tl.constexpr = False,
    act_p0=0.0, act_p1=0.0, act_p2=0.0, act_p3=0.0,
):
    """out[M, N] = epilogue(A[M, K] @ W[N, K]^T); one program per BLOCK_M x BLOCK_N output tile (and per
    K split: grid axis 1, `split_k.py`)."""
    offs_m, offs_n, offs_k, mask_m, mask_n = tile_offsets(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    rows_a, n_k = keep_rows(keep_ptr, stride_km, offs_m, mask_m, K, BLOCK_K, HAS_KEEP)
    h_rstd, mean, rstd = prologue_stats(a_ptr, res2_ptr, post_w_ptr, offs_m, mask_m, stride_am, stride_ak, stride_pm,
                                        stride_pk, K, eps, post_eps, BLOCK_M, BLOCK_K, HAS_NORM, LAYER_NORM, POST_NORM)
    z_rows = tl.where(tl.min(offs_n, axis=0) == 0, mask_m, False)  # WRITE_Z: the first column tile writes z
    k_lo = 0
    if SPLIT_K > 1:
        k_lo, n_k = split_range(n_k, k_per_split)

    # A tile [BLOCK_M, BLOCK_K]; W tile read transposed as [BLOCK_K, BLOCK_N] (SWIGLU: the up rows N further)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + (k_lo * BLOCK_K + offs_k)[None, :] * stride_ak
    w_ptrs = w_ptr + (k_lo * BLOCK_K + offs_k)[:, None] * stride_wk + offs_n[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, n_k):
        k_left = K - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=rows_a[:, None] & (offs_k[None, :] < k_left), other=0.0)
        w = tl.load(w_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        if HAS_NORM or POST_NORM:
            a = prologue_tile(a, k0 * BLOCK_K + offs_k, offs_m, rows_a, K, res2_ptr, stride_pm, stride_pk, post_w_ptr,
                              h_rstd, z_ptr, stride_zm, z_rows, norm_ptr, nb_ptr, mean, rstd, HAS_NORM, LAYER_NORM,
                              HAS_NW, HAS_NB, POST_NORM, WRITE_Z)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)
        if SWIGLU:
            u = tl.load(w_ptrs + N * stride_wn, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
            if UPCAST:
                u = u.to(tl.float32)
            acc_up = tl.dot(a, u, acc_up, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
    if SWIGLU:  # the bias, activation and mul steps of the epilogue, done here on the two accumulators
        if HAS_BIAS:  # [b_gate; b_up]
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            acc_up += tl.load(bias_ptr + N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        acc = apply_activation(acc, GATE) * acc_up

    last = True
    if SPLIT_K > 1:  # the tile's last split sums the partials (in split order) and runs the epilogue
        last, acc = split_sum(acc, part_ptr, lock_ptr, offs_m, offs_n, mask_m, mask_n, M, N, SPLIT_K)
    if last:
        gemm_epilogue(acc, scale, offs_m, offs_n, mask_m, mask_n, out_ptr, bias_ptr, res_ptr, mul_ptr,
                      stride_om, stride_on, stride_rm, stride_rn, stride_mm, stride_mn,
                      HAS_BIAS and not SWIGLU, ACTIVATION, HAS_RESIDUAL, HAS_MUL, post_scale, HAS_POST_SCALE,
                      act_p0, act_p1, act_p2, act_p3)


# ---------------------------------------------------------------- launchers


def device_arch(device: torch.device) -> int | None:
    """The sm number of a CUDA device (90 for sm_90), None on the CPU (the interpreter)."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def interpreting() -> bool:
    """True when kernels run under Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_options(*dtypes: torch.dtype) -> dict:
    """UPCAST and INPUT_PRECISION constexprs for dot operands of these dtypes."""
    upcast = len(set(dtypes)) > 1 or (torch.bfloat16 in dtypes and interpreting())
    wide = upcast or torch.float32 in dtypes
    return dict(UPCAST=upcast, INPUT_PRECISION="ieee" if wide else "tf32")


def epilogue_operands(lead: tuple, N: int, *, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                      mul: torch.Tensor | None = None, bias_rows: int | None = None) -> tuple:
    """The epilogue's tensors as the kernels read them: bias [N] (the weight's `bias_rows`: [2N] for SwiGLU's
    [gate; up]) contiguous; residual and mul broadcast to the output [*lead, N] and viewed as [M, N] (stride 0 where
    broadcast). Raises ShapeError if not."""
    if bias is not None:
        if bias.shape != (bias_rows or N,):
            raise ShapeError(f"bias must have shape ({bias_rows or N},) (the weight's rows), got {tuple(bias.shape)}")
        bias = bias.contiguous()
    out = [bias]
    for name, t in (("residual", residual), ("mul", mul)):
        if t is not None:
            try:
                t = t.expand(*lead, N).reshape(math.prod(lead), N)
            except RuntimeError as e:
                raise ShapeError(f"{name} {tuple(t.shape)} does not broadcast to the output {(*lead, N)}") from e
        out.append(t)
    return tuple(out)


def _check_fusions(x: torch.Tensor, w: torch.Tensor, norm: tuple | None, swiglu: bool, plain: bool,
                   gate: str = "silu") -> None:
    """The prologue/epilogue fusions' operands: norm weight [K]; SWIGLU: an even row count, no activation, mul or
    scale (the gate/up epilogue replaces those steps), a gated activation `gate`."""
    if gate not in GATED_ACTIVATIONS:
        raise ShapeError(f"unknown gated activation gate={gate!r}; use one of {GATED_ACTIVATIONS}")
    if norm is not None and norm[0] is not None and tuple(norm[0].shape) != (x.shape[-1],):
        raise ShapeError(f"norm weight must have shape ({x.shape[-1]},), got {tuple(norm[0].shape)}")
    if swiglu and (w.shape[0] % 2 or not plain):
        raise ShapeError(f"swiglu needs the [gate; up] weight [2N, K] (got {tuple(w.shape)}) and no activation, mul "
                         "or scale")


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *, activation: str = "none",
           residual: torch.Tensor | None = None, scale: float = 1.0, out_dtype: torch.dtype | None = None,
           mul: torch.Tensor | None = None, keep: torch.Tensor | None = None,
           norm: tuple[torch.Tensor, float] | None = None, swiglu: bool = False, gate: str = "silu",
           layer_norm: tuple[torch.Tensor | None, torch.Tensor | None, float] | None = None,
           post_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None, keep_z: bool = False,
           out: torch.Tensor | None = None, z_out: torch.Tensor | None = None, ws: Workspace | None = None,
           split_k: int | None = None, post_scale: float = 1.0,
           act_args: tuple[float, ...] = ()) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """activation(scale * x @ w.T + bias) * post_scale * mul + residual for x [..., K], w [N, K]; like F.linear
    plus an epilogue. `mul` and `residual` broadcast to the output [..., N] (read through strides, never copied
    unless their layout cannot be viewed as [M, N]). `keep` [..., 1]: FFN-skip flags of x's rows (x's
    rows with keep 0 must be zero, as `row_keep` makes them): tiles whose rows are all off skip the K loop.
    `norm=(weight or None, eps)`: x is rms_norm'ed in the load (`layer_norm=(weight, bias or None, eps)`:
    layer_norm'ed; weight and bias may be None); `post_norm=(res, weight, eps)`: x is h and the GEMM's input is
    z = res + rms_norm(h, weight, eps) (res or weight None: without it), then norm=/layer_norm= of z if given; `keep_z`: z is stored too (into
    `z_out`, else allocated) and the result is (y, z); `swiglu`: w is [gate; up] [2N, K] and the result
    act(x @ gate.T) * (x @ up.T) [..., N], act = `gate` (silu, gelu_tanh, gelu). `out`: the result's storage (contiguous [..., N], a planned
    buffer of the generated `run()`), else allocated; `ws`: the workspace scratch comes from (split-K's
    partials and counters); `split_k`: K splits instead of the decode table's (tests force them); `act_args`: the
    scalars of a PARAM_ACTIVATIONS activation (xielu: alpha_p, alpha_n, beta, eps), none for the others."""
    if activation not in ACTIVATIONS + PARAM_ACTIVATIONS:
        raise ShapeError(f"unknown activation {activation!r}; use one of {ACTIVATIONS + PARAM_ACTIVATIONS}")
    if len(act_args) != len(ACTIVATION_PARAMS.get(activation, ())):
        raise ShapeError(f"activation {activation!r} takes act_args {ACTIVATION_PARAMS.get(activation, ())}, "
                         f"got {len(act_args)} value(s)")
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise ShapeError(f"linear needs x [..., K] and w [N, K]; got x {tuple(x.shape)} and w {tuple(w.shape)}")
    nb = None
    if layer_norm is not None:  # the same prologue with the LayerNorm statistics and bias
        if norm is not None:
            raise ShapeError("linear takes one norm prologue: norm= (RMSNorm) or layer_norm=, not both")
        norm, nb = (layer_norm[0], layer_norm[2]), layer_norm[1]
    _check_fusions(x, w, norm, swiglu, activation == "none" and mul is None and scale == 1.0, gate)
    _check_prologue(x, nb, post_norm, keep is not None, keep_z)
    K = x.shape[-1]
    N = w.shape[0] // 2 if swiglu else w.shape[0]
    lead = tuple(x.shape[:-1])
    a = x.reshape(-1, K)  # a view (possibly strided) where the layout allows it
    M = a.shape[0]
    out = out_tensor(out, (*lead, N), out_dtype or x.dtype, x.device, "linear").view(M, N)
    bias, residual, mul = epilogue_operands(lead, N, residual=residual, mul=mul, bias=bias, bias_rows=w.shape[0])
    z = out_tensor(z_out, (*lead, K), x.dtype, x.device, "linear z").view(M, K) if keep_z else None
    if M == 0 or N == 0:
        if keep_z and M:
            raise ShapeError("keep_z with N = 0: no program would write z")
        return (out.reshape(*lead, N), z.reshape(*lead, K)) if keep_z else out.reshape(*lead, N)
    if post_norm is not None and M > SPLIT_K_ROWS:  # not a decode step: z once per row first, then its norm in the load
        z = z if z is not None else scratch(ws, x.device, ((M, K), x.dtype))[0]
        _post_norm_rows(a, post_norm, z)
        a, post_norm = z, None
    write_z = keep_z and post_norm is not None
    res2 = a if post_norm is None else post_norm[0].reshape(M, K) if post_norm[0] is not None else None
    cfg = gemm_blocks(M, N, K, x.dtype, device_arch(x.device))
    cfg = swiglu_blocks(cfg) if swiglu else cfg
    tiles, n_k = triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(K, cfg["BLOCK_K"])
    per, splits = split_steps(n_k, split_k or cfg["SPLIT_K"]) if n_k else (1, 1)
    if splits > 1 and swiglu:
        raise ShapeError("swiglu does not split K (SiLU needs the whole gate sum); leave split_k unset")
    part, locks = out, out
    if splits > 1:  # fp32 partials [splits, M, N] from the workspace; one arrival counter per tile
        part, = scratch(ws, x.device, ((splits, M, N), torch.float32))
        locks = counters(ws, x.device, tiles)
    grid = (tiles, splits)
    res = residual if residual is not None else out
    mt = mul if mul is not None else out
    kp = keep_view(keep, lead, M) if keep is not None else out
    gemm_kernel[grid](
        a, w, out, bias if bias is not None else out, res, mt,
        M, N, K,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1), res.stride(0), res.stride(1),
        mt.stride(0), mt.stride(1),
        float(scale), kp, kp.stride(0), HAS_KEEP=keep is not None,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=8,
        HAS_BIAS=bias is not None, ACTIVATION=activation, HAS_RESIDUAL=residual is not None, HAS_MUL=mul is not None,
        norm_ptr=norm[0].contiguous() if norm is not None and norm[0] is not None else None,
        eps=float(norm[1]) if norm is not None else 0.0, HAS_NORM=norm is not None, SWIGLU=swiglu, GATE=gate,
        LAYER_NORM=layer_norm is not None, HAS_NW=norm is None or norm[0] is not None, HAS_NB=nb is not None,
        nb_ptr=nb.contiguous() if nb is not None else None, **dot_options(x.dtype, w.dtype),
        part_ptr=part, lock_ptr=locks, k_per_split=per, SPLIT_K=splits,
        res2_ptr=res2, stride_pm=res2.stride(0) if res2 is not None else 0,
        stride_pk=res2.stride(1) if res2 is not None else 0, POST_NORM=post_norm is not None,
        post_w_ptr=post_norm[1].contiguous() if post_norm is not None and post_norm[1] is not None else None,
        post_eps=float(post_norm[2]) if post_norm is not None else 0.0,
        z_ptr=z if write_z else None, stride_zm=z.stride(0) if write_z else 0, WRITE_Z=write_z,
        post_scale=float(post_scale), HAS_POST_SCALE=post_scale != 1.0,
        **{f"act_p{i}": float(v) for i, v in enumerate(act_args)},
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    y = out.reshape(*lead, N)
    return (y, z.reshape(*lead, K)) if keep_z else y


def _post_norm_rows(h: torch.Tensor, post_norm: tuple, z: torch.Tensor) -> None:
    """z [M, K] = res + rms_norm(h, w, eps) for `post_norm` = (res, w, eps): `gemm_prologue.post_norm_rows`."""
    M, K = h.shape
    res = post_norm[0].reshape(M, K) if post_norm[0] is not None else None
    pw = post_norm[1].contiguous() if post_norm[1] is not None else None
    cfg = POST_NORM_ROWS
    post_norm_rows[(triton.cdiv(M, cfg["BLOCK_M"]),)](
        h, res, pw, z, M, K, h.stride(0), h.stride(1), *(res.stride() if res is not None else (0, 0)), z.stride(0),
        float(post_norm[2]), BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"])


def _check_prologue(x: torch.Tensor, nb: torch.Tensor | None, post_norm: tuple | None, keep: bool,
                    keep_z: bool) -> None:
    """The LayerNorm bias [K]; `post_norm`'s residual (x's shape) and weight [K], not with keep flags (the K
    loop of a skipped tile would not write its z); `keep_z` only with `post_norm`."""
    K = x.shape[-1]
    if nb is not None and tuple(nb.shape) != (K,):
        raise ShapeError(f"layer_norm bias must have shape ({K},), got {tuple(nb.shape)}")
    if keep_z and post_norm is None:
        raise ShapeError("keep_z stores the post-norm residual z: it needs post_norm=(res, weight, eps)")
    if post_norm is None:
        return
    res, pw, _ = post_norm
    if (res is not None and (tuple(res.shape) != tuple(x.shape) or res.dtype != x.dtype)) or (pw is not None and tuple(pw.shape) != (K,)):
        raise ShapeError(f"post_norm needs a residual of x's shape {tuple(x.shape)} and dtype, and a weight ({K},), each or None")
    if keep:
        raise ShapeError("post_norm does not take keep flags (FFN skipping): a skipped tile writes no z")


def keep_view(keep: torch.Tensor, lead: tuple, M: int) -> torch.Tensor:
    """The [..., 1] keep flags as [M] (a view where the layout allows it)."""
    if tuple(keep.shape[:-1]) != lead or keep.shape[-1] != 1:
        raise ShapeError(f"keep {tuple(keep.shape)} must be the rows of x {lead} + (1,)")
    return keep.reshape(M)
