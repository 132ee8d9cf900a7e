"""RoPE + KV-cache write after the concatenated QKV GEMM, in one launch (issue #13, fewer launches).

    q, k_cache, v_cache = rope_cache(qkv, cos, sin, pos, k_cache, v_cache, q_heads=Hq, kv_heads=Hkv, head_dim=D)

qkv [B, S, (Hq + 2 Hkv) * D] is the `[q; k; v]` GEMM's output (any strides); cos/sin broadcast to
[B, 1, S, D] (HF's `unsqueeze(1)` of the rotary tables); pos [S] the cache positions. Returns q with RoPE
applied, [B, Hq, S, D] contiguous, and the caches, after writing RoPE(k) and v into k_cache / v_cache
[B, Hkv, L, D] at `pos` along L, in place (the `cache_write` ops of `ir/cache_ops.py`, whose results are
the caches themselves). The rotation is HF's
`x * cos + rotate_half(x) * sin` with rotate_half(x) = cat(-x[D/2:], x[:D/2]).
With `format=` a KV format (`ir/kv_ops.py`) the caches are uint8 [B, Hkv, L, row_bytes] and each k / v
head program encodes its token's row (`templates/kv_cache.kv_encode`: bit for bit `pack_kv_rows` of the
values rounded to qkv's dtype, which is what the reference `cache_write` packs).

Decisions:
- One program per (token, head) over all Hq + 2 Hkv heads: a decode step has one token, so this is
  Hq + 2 Hkv tiny programs that each read one head row and write it where it goes, instead of two
  pointwise RoPE kernels and two host `index_copy_` launches.
- The partner half for rotate_half is loaded again from memory at (d + D/2) mod D (L1-resident)
  rather than permuted in registers: no reshape/split tricks, the same code on Triton 3.6 and 3.9.
- fp32 math, one rounding at the store (the generated pointwise kernel's convention).
- `rotary_dim` R < D (partial RoPE): channel d < R pairs with (d + R/2) mod R, channels past R are copied; the
  same code at R = D is the full rotation.
- `interleaved=True` (GLM, Helium, Cohere): channel d pairs with d ^ 1 (rotate(x)[2i] = -x[2i+1], rotate(x)[2i+1] =
  x[2i]) instead of (d + R/2) mod R; `pair_tables=True`: cos / sin hold R/2 entries, one per pair (the table
  `repeat_interleave(t, 2)` repeats, read through: channel d reads entry d // 2; rotate_half pairs, GPT-OSS's
  half tables: d reads d mod R/2). Constexprs: one kernel per pairing.
- `qk_norm=(q_w, k_w, eps)` (Qwen3's q_norm / k_norm, `rope_sites._norm`): a q or k program first takes its
  row's 1/rms, then every channel it reads (the partner too) is normalised with `gemm_prologue.rms_scale`'s steps (scale,
  round to qkv's dtype, weight, round), so RoPE sees exactly what the rms_norm row kernel wrote. The row is the
  head (weights [D]) or all the token's q (k) heads (weights [Hq * D] / [Hkv * D], OLMo2's norm over the whole
  projection): each head program sums the squares of the whole row itself (a loop over NQN / NKN heads, L1/L2
  resident, no second launch) and reads its own slice of the weights. `norm_fp32` (OLMo2 in fp16/bf16): weighted in
  fp32 and rounded once, as cast(rms_norm(cast(x, f32), w), x.dtype).
- `negated=True` (NanoChat's rotate_half, cat(x2, -x1)): the other channel of each pair is negated, a rotation by
  -theta; `qk_norm=(None, None, eps)`: weightless per-head norms (NORM_W false, one rounding).
- Packed: a k / v program computes its row as even and odd channels [blocks, block / 2] (RoPE evaluated
  at those indices), so the encoder reduces each block along one axis and pairs bfp4's nibbles without
  reshapes; q heads take the dense path (a runtime branch on the head, one kernel for all heads).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fxforge.codegen.pool import out_tensor
from fxforge.codegen.templates.kv_cache import kv_encode
from fxforge.codegen.templates.rope_steps import norm_after_rope, q_scaled, rope_at, rows_rstd, v_normed
from fxforge.errors import ShapeError
from fxforge.ir.kv_ops import kv_row_layout


@triton.jit
def rope_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr,
                      S, stride_xb, stride_xs, stride_xn, stride_cb, stride_cs, stride_cd,
                      stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
                      HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr,
                      FORMAT: tl.constexpr, KV_BLOCK: tl.constexpr, CODE_BYTES: tl.constexpr, NB: tl.constexpr,
                      qn_ptr=None, kn_ptr=None, eps=0.0, QK_NORM: tl.constexpr = False, ROT: tl.constexpr = 0,
                      INTERLEAVED: tl.constexpr = False, PAIR_TABLES: tl.constexpr = False, NQN: tl.constexpr = 1,
                      NKN: tl.constexpr = 1, NORM_F32: tl.constexpr = False, NORM_AFTER: tl.constexpr = False,
                      qs_ptr=None, stride_qsb=0, stride_qss=0, Q_SCALE: tl.constexpr = False,
                      NORM_W: tl.constexpr = True, NEGATED: tl.constexpr = False, v_eps=0.0,
                      V_NORM: tl.constexpr = False, v_scale=1.0, V_SCALE: tl.constexpr = False):
    """Head program_id(1) of token program_id(0) = b * S + s: [RMSNorm of q/k rows (NQN / NKN heads each),] RoPE on
    q/k heads [, their RMSNorm after RoPE (NORM_AFTER, dense caches), q times its token's scale (Q_SCALE), v's
    weightless RMSNorm (V_NORM, dense caches), v times `v_scale` (V_SCALE)], then store q / write the cache. v heads
    hold DV channels (D's or their own; dense caches when it differs)."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    b = t // S
    s = t % S
    token = qkv_ptr + b * stride_xb + s * stride_xs
    row = token + (h * D + tl.maximum(h - HQ - HKV, 0) * (DV - D)) * stride_xn  # v heads: DV channels each
    c_off = b * stride_cb + s * stride_cs
    p = tl.load(pos_ptr + s)
    hk = tl.minimum(tl.maximum(h - HQ, 0), HKV - 1)
    hv = tl.minimum(tl.maximum(h - HQ - HKV, 0), HKV - 1)
    is_q, is_k = h < HQ, (h >= HQ) & (h < HQ + HKV)
    rstd = 1.0
    w_off = 0
    if QK_NORM:  # q/k RMSNorm before RoPE over rows of NQN / NKN heads: 1 (Qwen3), all (OLMo2)
        first = tl.where(is_q, (h // NQN) * NQN, HQ + (tl.maximum(h - HQ, 0) // NKN) * NKN)
        w_off = (h - first) * D
        rstd = rows_rstd(token + first * D * stride_xn, stride_xn, eps, tl.where(is_q, NQN, NKN),
                          NQN if NQN > NKN else NKN, D, BLOCK_D)
    if FORMAT == "dense":
        d = tl.arange(0, BLOCK_D)
        hd = d * 0 + h  # the head index as a vector: masks of one dtype with md
        md = d < tl.where(hd >= HQ + HKV, DV, D)
        y = rope_at(row, cos_ptr + c_off, sin_ptr + c_off, d, md, stride_xn, stride_cd, hd < HQ + HKV, D,
                     qn_ptr, kn_ptr, w_off, rstd, is_q, is_k, QK_NORM, ROT,
                     INTERLEAVED, PAIR_TABLES, NORM_F32, NORM_W, NEGATED)
        if NORM_AFTER:
            y = norm_after_rope(y, d, md, qn_ptr, kn_ptr, eps, is_q, is_k, q_ptr, D, NORM_F32, NORM_W)
        if Q_SCALE:
            y = q_scaled(y, d, qs_ptr + b * stride_qsb + s * stride_qss, is_q, q_ptr)
        if V_NORM:
            y = v_normed(y, md, v_eps, hd >= HQ + HKV, DV)
        if V_SCALE:  # v times a number, rounded once at the store as the graph's mul of v by a scalar
            y = tl.where(hd >= HQ + HKV, y * v_scale, y)
        q_dst = q_ptr + ((b * HQ + tl.minimum(h, HQ - 1)) * S + s) * D + d
        tl.store(q_dst, y.to(q_ptr.dtype.element_ty), mask=md & (hd < HQ))
        k_dst = k_ptr + b * stride_kb + hk * stride_kh + p * stride_kl + d
        tl.store(k_dst, y.to(k_ptr.dtype.element_ty), mask=md & (hd >= HQ) & (hd < HQ + HKV))
        v_dst = v_ptr + b * stride_vb + hv * stride_vh + p * stride_vl + d
        tl.store(v_dst, y.to(v_ptr.dtype.element_ty), mask=md & (hd >= HQ + HKV))
    elif h < HQ:  # packed cache, a q head: plain store
        d = tl.arange(0, BLOCK_D)
        md = d < D
        y = rope_at(row, cos_ptr + c_off, sin_ptr + c_off, d, md, stride_xn, stride_cd, h < HQ, D,
                     qn_ptr, kn_ptr, w_off, rstd, is_q, is_k, QK_NORM, ROT,
                     INTERLEAVED, PAIR_TABLES, NORM_F32, NORM_W, NEGATED)
        if Q_SCALE:
            y = q_scaled(y, d, qs_ptr + b * stride_qsb + s * stride_qss, is_q, q_ptr)
        tl.store(q_ptr + ((b * HQ + h) * S + s) * D + d, y.to(q_ptr.dtype.element_ty), mask=md)
    else:  # packed cache, a k or v head: encode the token's row (even / odd channels of each block)
        is_k = h < HQ + HKV
        nb = tl.arange(0, NB)
        nb_mask = nb < D // KV_BLOCK
        de = nb[:, None] * KV_BLOCK + 2 * tl.arange(0, KV_BLOCK // 2)[None, :]
        me = nb_mask[:, None] & (de < D)
        ye = rope_at(row, cos_ptr + c_off, sin_ptr + c_off, de, me, stride_xn, stride_cd, is_k, D,
                     qn_ptr, kn_ptr, w_off, rstd, is_q, is_k, QK_NORM, ROT,
                     INTERLEAVED, PAIR_TABLES, NORM_F32, NORM_W, NEGATED)
        yo = rope_at(row, cos_ptr + c_off, sin_ptr + c_off, de + 1, me, stride_xn, stride_cd, is_k, D,
                     qn_ptr, kn_ptr, w_off, rstd, is_q, is_k, QK_NORM, ROT,
                     INTERLEAVED, PAIR_TABLES, NORM_F32, NORM_W, NEGATED)
        if V_SCALE:
            vs = tl.where(is_k, 1.0, v_scale)
            ye, yo = ye * vs, yo * vs
        ye = ye.to(q_ptr.dtype.element_ty).to(tl.float32)  # what the graph's `new` holds: the model's dtype
        yo = yo.to(q_ptr.dtype.element_ty).to(tl.float32)
        if is_k:
            dst = k_ptr + b * stride_kb + hk * stride_kh + p * stride_kl
        else:
            dst = v_ptr + b * stride_vb + hv * stride_vh + p * stride_vl
        kv_encode(dst, ye, yo, nb_mask, FORMAT, KV_BLOCK, CODE_BYTES)


def _check(qkv, cos, k_cache, v_cache, q_heads, kv_heads, head_dim, fmt, block, dv) -> None:
    B, S, N = qkv.shape
    if fmt != "dense" and dv != head_dim:
        raise ShapeError(f"rope_cache: a {fmt} cache takes one head dim (v_head_dim {dv} != head_dim {head_dim})")
    row = head_dim if fmt == "dense" else kv_row_layout(fmt, block, head_dim)[1]
    want = (B, kv_heads, k_cache.shape[2], row)
    if N != (q_heads + kv_heads) * head_dim + kv_heads * dv or head_dim % 2:
        raise ShapeError(f"rope_cache: qkv {tuple(qkv.shape)} is not [B, S, (Hq + Hkv) * D + Hkv * DV] for "
                         f"Hq={q_heads}, Hkv={kv_heads}, D={head_dim}, DV={dv} (D even)")
    want_v = want[:3] + (dv if fmt == "dense" else row,)
    if tuple(k_cache.shape) != want or tuple(v_cache.shape) != want_v:
        raise ShapeError(f"rope_cache: caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)} must be {want} and "
                         f"{want_v}")
    if fmt != "dense" and (k_cache.dtype != torch.uint8 or v_cache.dtype != torch.uint8):
        raise ShapeError(f"rope_cache: {fmt} caches hold packed rows (uint8), got {k_cache.dtype}, {v_cache.dtype}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ShapeError("rope_cache: the caches must be contiguous along head_dim (StaticKVCache allocates them so)")


def rope_cache(qkv: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, pos: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, *, q_heads: int, kv_heads: int, head_dim: int,
               format: str = "dense", block: int = 32, out: torch.Tensor | None = None,
               qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None, rotary_dim: int | None = None,
               interleaved: bool = False, pair_tables: bool = False, norm_fp32: bool = False,
               norm_after: bool = False, q_scale: torch.Tensor | None = None,
               negated: bool = False, heads_last: bool = False,
               v_norm: float | None = None, v_head_dim: int | None = None,
               v_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(RoPE'd q [B, Hq, S, D], k_cache, v_cache) with RoPE'd k and v written into the caches at `pos`
    (a KV `format`: as packed rows, `kv_ops.pack_kv_rows`); `out`: q's storage (contiguous; a planned
    buffer of the generated `run()`), else allocated. `qk_norm=(q_weight, k_weight, eps)`: q and k are rms_norm'ed
    before RoPE, each head over D with weights [D] (Qwen3's q_norm / k_norm), or the token's whole q (k) row with
    weights [Hq * D] ([Hkv * D]: OLMo2); weights None: weightless, per head (NanoChat). `rotary_dim` R (partial
    RoPE, even, <= D): channels [0, R) rotate with cos/sin of R channels, the rest pass through; cos = sin = None: no
    RoPE (the q/k norms and the cache writes only: Flint's full-attention layers). `interleaved`: pairs (2i, 2i + 1)
    rotate (GLM), not (i, i + R/2); `pair_tables`: cos/sin of R/2 entries, one per pair (interleaved: the table before
    `repeat_interleave(2)`; else the table of both halves, GPT-OSS's `_apply_rotary_emb`). `norm_fp32`: the q/k
    norm weighs in fp32 and rounds once (OLMo2's fp16/bf16 norm), not rms_norm(x, w)'s two.
    `norm_after`: the per-head `qk_norm` applies to RoPE's result instead (HunYuan; dense caches). `q_scale`: q times a
    per-token scale broadcast to [B, 1, S, 1] after RoPE (Ministral3's position-dependent scaling). `negated`: the
    rotation's sign flipped, x * cos - rotate(x) * sin (NanoChat's rotate_half, cat(x2, -x1): a rotation by -theta).
    `heads_last`: cos/sin broadcast to [B, S, 1, W], q_scale to [B, S, 1, 1] (before the head transpose: Gemma 4,
    Llama 4). `v_norm`: the eps of a weightless RMSNorm of each v head (Gemma 4's; dense caches). `v_head_dim` DV:
    v's heads are DV wide (qkv [B, S, (Hq + Hkv) * D + Hkv * DV], v_cache [.., DV]; MiMo-V2-Flash; dense caches).
    `v_scale`: v times this number before its cache write (MiMo-V2-Flash's attention_value_scale)."""
    dv = head_dim if v_head_dim is None else v_head_dim
    _check(qkv, cos, k_cache, v_cache, q_heads, kv_heads, head_dim, format, block, dv)
    B, S, _ = qkv.shape
    rot = 0 if cos is None else head_dim if rotary_dim is None else rotary_dim
    if (cos is None) != (sin is None) or rot % 2 or not (cos is None or 0 < rot <= head_dim):
        raise ShapeError(f"rope_cache: rotary_dim {rot} must be even and in (0, head_dim={head_dim}], and cos and sin "
                         "both given (or both None: no RoPE)")
    width = rot // 2 if pair_tables else rot
    want = (B, S, 1, width) if heads_last else (B, 1, S, width)
    try:  # (no RoPE: the kernel reads no table; qkv's rows stand in for them)
        cs = [t.expand(*want).select(2 if heads_last else 1, 0) for t in (cos, sin)] if rot else [qkv, qkv]
    except RuntimeError as e:
        raise ShapeError(f"rope_cache: cos/sin {tuple(cos.shape)} do not broadcast to {want}") from e
    if cs[0].stride() != cs[1].stride():  # the kernel reads both through one set of strides
        cs = [t.contiguous() for t in cs]
    more = _after_args(qk_norm, norm_after, q_scale, format, head_dim, B, S, heads_last, v_norm)
    q = out_tensor(out, (B, q_heads, S, head_dim), qkv.dtype, qkv.device, "rope_cache")
    if q.numel() == 0:
        return q, k_cache, v_cache
    rope_cache_kernel[(B * S, q_heads + 2 * kv_heads)](
        qkv, cs[0], cs[1], pos, q, k_cache, v_cache,
        S, *qkv.stride(), *cs[0].stride(),
        *k_cache.stride()[:3], *v_cache.stride()[:3],
        HQ=q_heads, HKV=kv_heads, D=head_dim, DV=dv, BLOCK_D=triton.next_power_of_2(max(head_dim, dv)),
        **({"v_scale": float(v_scale), "V_SCALE": True} if v_scale is not None else {}), **_format_constexprs(
            format, block, head_dim), **{**_norm_args(qk_norm, q_heads, kv_heads, head_dim), **more}, ROT=rot,
        INTERLEAVED=interleaved, PAIR_TABLES=pair_tables, NORM_F32=norm_fp32 and qk_norm is not None, NEGATED=negated)
    return q, k_cache, v_cache


def _after_args(qk_norm: tuple | None, norm_after: bool, q_scale: torch.Tensor | None, fmt: str, head_dim: int,
                B: int, S: int, heads_last: bool = False, v_norm: float | None = None) -> dict:
    """The steps after RoPE: the per-head q/k norm moved there (NORM_AFTER replaces QK_NORM's norm before RoPE),
    q's per-token scale ([B, S] strides of its [B, 1, S, 1] broadcast; `heads_last`: [B, S, 1, 1]), v's norm."""
    out: dict = {"v_eps": float(v_norm), "V_NORM": True} if v_norm is not None else {}
    if (norm_after or v_norm is not None) and fmt != "dense":
        raise ShapeError("rope_cache: norm_after and v_norm take dense caches")
    if norm_after:
        if qk_norm is None or any(w is not None and w.numel() != head_dim for w in qk_norm[:2]):
            raise ShapeError("rope_cache: norm_after takes per-head qk_norm weights of head_dim")
        out.update(QK_NORM=False, NORM_AFTER=True)
    if q_scale is not None:
        want = (B, S, 1, 1) if heads_last else (B, 1, S, 1)
        try:
            qs = q_scale.expand(*want).flatten(1)  # [B, S] (the other dims are 1)
        except RuntimeError as e:
            raise ShapeError(f"rope_cache: q_scale {tuple(q_scale.shape)} does not broadcast to {want}") from e
        out.update(qs_ptr=qs, stride_qsb=qs.stride(0), stride_qss=qs.stride(1), Q_SCALE=True)
    return out


def _norm_args(qk_norm: tuple | None, q_heads: int, kv_heads: int, head_dim: int) -> dict:
    """The norm's arguments; NQN / NKN: heads per normalised q / k row (weights [D]: 1, [H * D]: all H)."""
    if qk_norm is None:
        return {}
    qn, kn, eps = qk_norm
    if qn is None and kn is None:  # weightless (NanoChat's q/k norm): per head
        return {"eps": float(eps), "QK_NORM": True, "NORM_W": False}
    if qn is None or kn is None:
        raise ShapeError("rope_cache: qk_norm weights are both tensors or both None (weightless)")
    if qn.dim() != 1 or kn.dim() != 1 or qn.numel() not in (head_dim, q_heads * head_dim) or kn.numel() not in (
            head_dim, kv_heads * head_dim):
        raise ShapeError(f"rope_cache: qk_norm weights {tuple(qn.shape)}, {tuple(kn.shape)} must be ({head_dim},) "
                         f"per head or ({q_heads * head_dim},), ({kv_heads * head_dim},) over all heads")
    return {"qn_ptr": qn.contiguous(), "kn_ptr": kn.contiguous(), "eps": float(eps), "QK_NORM": True,
            "NQN": qn.numel() // head_dim, "NKN": kn.numel() // head_dim}


def _format_constexprs(fmt: str, block: int, head_dim: int) -> dict:
    if fmt == "dense":
        return {"FORMAT": "dense", "KV_BLOCK": 16, "CODE_BYTES": 0, "NB": 1}
    return {"FORMAT": fmt, "KV_BLOCK": block, "CODE_BYTES": kv_row_layout(fmt, block, head_dim)[0],
            "NB": triton.next_power_of_2(head_dim // block)}


def rope_cache_spec(dtype: str, q_heads: int, kv_heads: int, head_dim: int, format: str = "dense",
                    block: int = 32, qk_norm: bool = False, norm_rows: bool = False, interleaved: bool = False,
                    norm_fp32: bool = False, after: bool = False, weightless: bool = False, negated: bool = False,
                    half_tables: bool = False, nope: bool = False, v_norm: bool = False, v_head_dim: int = 0,
                    v_scale: bool = False) -> dict:
    """Build spec (`fxforge.codegen.build.build_spec`) of `rope_cache_kernel` for a contiguous qkv and caches
    (`qk_norm`: with the per-head q/k RMSNorm, `norm_rows`: over all heads, `norm_fp32`: weighted in fp32; `interleaved`: pairs (2i, 2i + 1) with
    tables of one entry per pair and half the head rotated, GLM's; `after`: the per-head norm after RoPE and q's
    per-token scale, HunYuan's and Ministral3's; `weightless`: the per-head norm after RoPE without weights and the
    rotation negated, NanoChat's; `half_tables`: rotate_half pairs with tables of one entry per pair, GPT-OSS's; `nope`:
    no RoPE, Flint's; `v_norm`: v's weightless norm, Gemma 4's; `v_head_dim`: v heads of their own width, `v_scale`:
    v times a number, MiMo-V2-Flash's)."""
    dv = v_head_dim or head_dim
    t = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[dtype]
    ptrs = {name: f"*{t}" for name in ("qkv_ptr", "cos_ptr", "sin_ptr", "q_ptr")}
    ptrs.update(dict.fromkeys(("k_ptr", "v_ptr"), f"*{t}" if format == "dense" else "*u8"))
    strides = ("S", "stride_xb", "stride_xs", "stride_cb", "stride_cs", "stride_kb", "stride_kh", "stride_kl",
               "stride_vb", "stride_vh", "stride_vl")
    sig = {**ptrs, "pos_ptr": "*i64", **dict.fromkeys(strides, "i32")}
    const = {"stride_xn": 1, "stride_cd": 1, "HQ": q_heads, "HKV": kv_heads, "D": head_dim, "DV": dv,
             "V_SCALE": v_scale, "BLOCK_D": triton.next_power_of_2(max(head_dim, dv)),
             **_format_constexprs(format, block, head_dim),
             "QK_NORM": qk_norm, "ROT": 0 if nope else head_dim // 2 if interleaved else head_dim,
             "INTERLEAVED": interleaved,
             "PAIR_TABLES": interleaved or half_tables, "NQN": q_heads if norm_rows else 1, "NKN": kv_heads if norm_rows else 1,
             "NORM_F32": norm_fp32, "NORM_W": not weightless, "NEGATED": negated or weightless}
    if weightless:
        sig["eps"] = "fp32"
        const.update({"qn_ptr": None, "kn_ptr": None})
    elif qk_norm or after:
        sig.update({"qn_ptr": f"*{t}", "kn_ptr": f"*{t}", "eps": "fp32"})
    else:
        const.update({"qn_ptr": None, "kn_ptr": None, "eps": 0.0})
    if after:
        const.update(QK_NORM=False, NORM_AFTER=True, Q_SCALE=True, stride_qsb=0)
        sig.update(qs_ptr=f"*{t}", stride_qss="i32")
    else:
        const.update(NORM_AFTER=weightless, Q_SCALE=False, qs_ptr=None, stride_qsb=0, stride_qss=0)
    sig.update({"v_eps": "fp32"} if v_norm else {})
    sig.update({"v_scale": "fp32"} if v_scale else {})
    const.update({} if v_scale else {"v_scale": 1.0})
    const.update({"V_NORM": v_norm} if v_norm else {"V_NORM": False, "v_eps": 0.0})
    return {"module": __name__, "kernel": "rope_cache_kernel", "signature": sig, "constexprs": const,
            "divisible": [s for s in strides if s != "S"], "num_warps": 4, "num_stages": 3,
            "label": f"rope_cache {dtype} Hq={q_heads} Hkv={kv_heads} D={head_dim} {format}"
                      f"{' qk_norm' * qk_norm}{' rows' * norm_rows}{' fp32' * norm_fp32}{' interleaved' * interleaved}"
                      f"{' norm_after q_scale' * after}{' weightless norm_after negated' * weightless}{' half_tables' * half_tables}"
                      f"{' nope' * nope}{' v_norm' * v_norm}{f' DV={dv}' * (dv != head_dim)}{' v_scale' * v_scale}"}
