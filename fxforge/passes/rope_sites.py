"""RoPE + KV-cache-write sites after a concatenated QKV GEMM: the ops the `rope_cache` kernel group
of the fuse pass takes (`codegen/templates/rope_cache.py` runs them in one launch).

The shape matched, per decoder layer (HF's Llama/Qwen2 attention after `concat_linears` and
`frontend/kv_capture.py`), with x_h = permute(reshape(slice(qkv, h-th range), [B, S, H, D]), [0, 2, 1, 3]):

    q   = rope(x_q)                            # read by attention
    k'  = cache_write(k_cache, pos, rope(x_k))
    v'  = cache_write(v_cache, pos, x_v)
    rope(x) = add(mul(x, cos), mul(cat(neg(x[..., D/2:]), x[..., :D/2]), sin))   (either operand order)

rope is any form of `rope_forms.py` (rotate_half, or written over the two halves as GPT-OSS does; partial; interleaved,
its tables maybe one entry per pair; negated; in fp32 between casts), or none (Flint's, SmolLM3's and GPTBigCode's
layers without RoPE: the norms, if any, and the cache writes in one launch instead of norm kernels and host writes).
A single kv head may arrive as [B, 1, S, D] straight from the slice, no permute (`_one_head`: GPTBigCode's MQA).
RoPE may come before the head transpose (Gemma 4, Llama 4): rope (and the norms) on the view [B, S, H, D], or on
Llama 4's complex view [B, S, H, D/2, 2] straight from the slice, then permute(.., [0, 2, 1, 3]) for q and k
(`_head_transpose`); the tables then broadcast as [B or 1, S, 1, W] (the site's `heads_last`). v may be normed without a
weight (Gemma 4's v_norm: the site's `v_norm`, dense caches).

Per-head q/k norms (Qwen3, Gemma3, OLMo3-style `q_norm`/`k_norm` over head_dim) sit between the reshape and
the permute of q and k (x_h = permute(rms_norm(reshape(...), w[D]), [0, 2, 1, 3])) or after the permute (Gemma3);
both or neither, one eps. A norm over the whole q (k) projection, all heads of the token at once (OLMo2's q_norm /
k_norm: rms_norm(slice, w[H * D]) before the reshape), is the same variant with weights of H * D: the template takes
the row's scale over H heads. Either may weigh in fp32 before its one rounding (cast(rms_norm(cast(x, f32), w),
x.dtype): OLMo2 in fp16/bf16; the site's `norm_fp32`). Per-head norms after RoPE instead (HunYuan: rms_norm(rope(x_h),
w[D]) feeds the attention / the cache write; the site's `norm_after`, dense caches only). q after RoPE (and its norm)
may be scaled per token, mul(q, t[B or 1, 1, S, 1]) of q's dtype (Ministral3's position-dependent scaling; `q_scale`).
NanoChat: per-head q/k norms without a weight (after RoPE there; before it too): qk_norm = (None, None, eps).
v's heads may be of their own width (MiMo-V2-Flash: q/k 192, v 128; the v slice [B, S, Hkv * DV]; dense caches), and
v may be multiplied by a number before its cache write (MiMo-V2-Flash's attention_value_scale; `v_scale`).

Decisions:
- The QKV GEMM may be a dense `linear` or a `qlinear` (quantized weights stacked by `concat_linears`):
  the rope_cache kernel reads the GEMM's output, whichever template wrote it.
- Matched structurally on the IR (no new opcode): the graph stays the one the reference executor
  runs, and the fuse pass only records which ops run together.
- The caches may be packed (`cache_write`s of a KV format, both alike): the template encodes the rows.
- The q/k norms are recognised variants of the head view, not a new site: the template normalises each q/k
  head row before RoPE with the rms_norm row kernel's steps and roundings (`gemm_prologue.rms_scale`).
- Every intermediate must be single-use and of one float dtype; q and k must share cos and sin;
  the three slices must tile the GEMM's output in order q, k, v. Anything else is left to the
  generic rules (pointwise RoPE kernels and host cache writes): never a wrong fusion, at worst fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Value
from fxforge.passes.rewriter import dims_match
from fxforge.passes.rope_forms import fp32_rope, mul_by, no_rope, only_use
from fxforge.passes.xielu_rules import scalar_const, scalar_value

QKV_GEMMS = ("linear", "qlinear")  # the site reads the GEMM's output from memory: any GEMM template wrote it


@dataclass
class RopeSite:
    """One site: its ops (graph order not guaranteed), the group's reads and results, and sizes."""

    ops: list[Op]
    qkv: Value
    cos: Value | None  # None: no RoPE, the q/k norms and the cache writes only (Flint's full-attention layers)
    sin: Value | None
    pos: Value
    k_cache: Value
    v_cache: Value
    q: Value  # RoPE'd q [B, Hq, S, D]
    k_written: Value  # the cache_write results (the caches themselves)
    v_written: Value
    q_heads: int
    kv_heads: int
    head_dim: int
    format: str = "dense"  # the caches' format (`cache_ops.CACHE_FORMATS`): a KV format writes packed rows
    block: int = 32
    qk_norm: tuple[Value | None, Value | None, float] | None = None  # RMSNorm weights of q and k ([D] per head,
    # [H * D] per row; None: weightless, per head), eps
    rotary_dim: int = 0  # channels [0, rotary_dim) rotated, the rest passed through (partial RoPE); 0: head_dim
    interleaved: bool = False  # channels (2i, 2i+1) rotate together (else i with i + R/2: rotate_half)
    pair_tables: bool = False  # cos / sin hold one entry per pair (R/2), channel d reads entry d // 2
    norm_fp32: bool = False  # the q/k norm weighs in fp32 before its one rounding (cast(rms_norm(cast(x, f32), w)))
    norm_after: bool = False  # the per-head q/k norm applies to RoPE's result (HunYuan), not before it
    q_scale: Value | None = None  # q after RoPE times a per-token scale [B or 1, 1, S, 1] (Ministral3)
    negated: bool = False  # rotate(x) negated: x * cos - rotate(x) * sin (NanoChat's cat(x2, -x1))
    heads_last: bool = False  # RoPE before the head transpose: cos / sin index [B or 1, S, 1, W] (Gemma 4, Llama 4)
    v_norm: float | None = None  # the eps of v's weightless per-head RMSNorm before its cache write (Gemma 4)
    v_head_dim: int = 0  # v's heads' width when it differs from head_dim (MiMo-V2-Flash; dense caches), else 0
    v_scale: float | None = None  # v times this number before its cache write (MiMo-V2-Flash's value scale)

    @property
    def reads(self) -> list[Value]:
        """What the template reads (a repeat_interleave'd table is read through: not its copy; a weightless norm's
        weights are None)."""
        norm = [w for w in self.qk_norm[:2] if w is not None] if self.qk_norm is not None else []
        scale = [self.q_scale] if self.q_scale is not None else []
        tables = [self.cos, self.sin] if self.cos is not None else []  # (None: no RoPE)
        return [self.qkv, *tables, self.pos, self.k_cache, self.v_cache, *norm, *scale]


@dataclass
class _Norm:
    ops: list[Op]
    result: Value
    op: Op  # the rms_norm (its weight and eps)
    fp32: bool  # normalised and weighted in fp32 between casts, one rounding

    @property
    def weight(self) -> Value | None:
        return self.op.operands[1] if len(self.op.operands) > 1 else None

    def same_kind(self, other: _Norm) -> bool:
        """q's and k's norms must be one: eps, fp32 and whether weighted."""
        return (self.op.attrs["eps"], self.fp32, self.weight is None) == (other.op.attrs["eps"], other.fp32,
                                                                          other.weight is None)


def _norm(v: Value, graph: Graph, width: int, weightless: bool = True) -> _Norm | None:
    """`rms_norm(v, w[width])`, v's only use, or cast(rms_norm(cast(v, f32), w), v.dtype) (OLMo2's fp16/bf16 norm:
    the weight multiplies in fp32 before the one rounding; canonicalize makes it rms_norm(v, w_f32), the same);
    `weightless`: w may be absent (NanoChat; a per-head norm, whose template reads the head width from the site, not
    from a weight); else None."""
    up = only_use(v, graph, "cast")
    fp32 = up is not None and up.result.type.dtype == DType.f32 and v.type.dtype != DType.f32
    x = up.result if fp32 else v
    n = only_use(x, graph, "rms_norm")
    if n is None or len(n.operands) not in ((1, 2) if weightless else (2,)) or n.result.type != x.type:
        return None
    w = n.operands[-1].type
    one_rounding = len(n.operands) == 2 and w.dtype == DType.f32 and x.type.dtype != DType.f32  # rms_norm(x16, w32)
    if len(n.operands) == 2 and (w.rank != 1 or w.shape[0] != width
                                 or (w.dtype not in (x.type.dtype, v.type.dtype) and not one_rounding)):
        return None
    down = only_use(n.result, graph, "cast") if fp32 else None
    if fp32 and (down is None or down.result.type != v.type):
        return None
    return _Norm([up, n, down], down.result, n, True) if fp32 else _Norm([n], n.result, n, one_rounding)


def _one_head(x: Value, y: Value) -> bool:
    """Is y = reshape(x [B, S, D]) of shape [B, 1, S, D] (one head, heads first)?"""
    (b, s, d), (b2, one, s2, d2) = x.type.shape, y.type.shape
    return one == 1 and isinstance(d, int) and d % 2 == 0 and all(
        dims_match(m, n) for m, n in ((b, b2), (s, s2), (d, d2)))


def _heads(sl: Op, graph: Graph) -> tuple[Value, list[Op], int, int, _Norm | None, bool] | None:
    """slice -> [rms_norm over the row] -> reshape [B, S, H, D] -> [rms_norm over D] -> permute [0, 2, 1, 3]
    [-> rms_norm over D]: (x_h, the ops, H, D, the norm, False). Without the permute (RoPE before the head transpose:
    Gemma 4, Llama 4), the view [B, S, H, D] (after its norm) or Llama 4's complex view [B, S, H, D/2, 2] straight from
    the slice: (that view, ..., True), the permute to find after RoPE (`_head_transpose`)."""
    row = _norm(sl.result, graph, sl.result.type.shape[-1], weightless=False)  # over all heads of the token (OLMo2)
    r = only_use((row or sl).result, graph, "reshape")
    if r is not None and _complex_view(r.result) and row is None:
        _, _, h, half, _ = r.result.type.shape
        return r.result, [sl, r], h, 2 * half, None, True
    if r is None or r.result.type.rank != 4:
        return None
    _, _, h, d = r.result.type.shape
    if _one_head(sl.result, r.result):  # [B, S, D] -> [B, 1, S, D]: already the heads-first view (GPTBigCode's MQA)
        norm = row or _norm(r.result, graph, d)
        return (norm or r).result, [sl, r] + (norm.ops if norm else []), 1, d, norm, False
    if not isinstance(h, int) or not isinstance(d, int) or d % 2:
        return None
    norm = row or _norm(r.result, graph, d)  # per head (Qwen3)
    view = (r if row else norm or r).result
    p = _head_transpose(view, graph)
    if p is None:  # RoPE on [B, S, H, D], the transpose after it (else no site: `_site` finds none there)
        return view, [sl, r] + (norm.ops if norm else []), h, d, norm, True
    after = _norm(p.result, graph, d) if norm is None else None  # Gemma3 norms the heads after the transpose
    norm = norm or after
    return (after or p).result, [sl, r, p] + (norm.ops if norm else []), h, d, norm, False


def _complex_view(v: Value) -> bool:
    """Is v [B, S, H, D/2, 2] with H and D/2 static (Llama 4's `view_as_complex` of the head view, as real pairs)?"""
    return v.type.rank == 5 and v.type.shape[-1] == 2 and all(isinstance(n, int) for n in v.type.shape[2:4])


def _head_transpose(v: Value, graph: Graph) -> Op | None:
    """v's only use permute(v, [0, 2, 1, 3]) (the head transpose, after the head view or after RoPE), else None."""
    p = only_use(v, graph, "permute")
    return p if p is not None and list(p.attrs["dims"]) == [0, 2, 1, 3] else None


def _heads_last(t: Value | None) -> bool:
    """Does a table of RoPE before the head transpose broadcast as [B or 1, S, 1, W] (heads at dim 2)? None (no
    RoPE): yes."""
    return t is None or (t.type.rank == 4 and t.type.shape[2] == 1)


def _site(qkv: Value, graph: Graph) -> RopeSite | None:
    rank = qkv.type.rank
    slices = sorted((u for u in qkv.uses), key=lambda u: u.attrs.get("start", -1))
    if rank != 3 or len(slices) != 3 or any(u.opcode != "slice" or u.attrs["dim"] % rank != 2 or u.attrs["step"] != 1
                                            for u in slices):
        return None
    ends = [0] + [u.attrs["end"] for u in slices]
    if any(u.attrs["start"] != ends[i] for i, u in enumerate(slices)) or ends[-1] != qkv.type.shape[2]:
        return None
    heads = [_heads(u, graph) for u in slices]
    if any(h is None for h in heads) or heads[0][3] != heads[1][3] or heads[1][2] != heads[2][2]:
        return None
    (xq, oq, hq, d, nq, q_late), (xk, ok, hkv, _, nk, k_late), (xv, ov, _, dv, nv, v_late) = heads
    if (nv is not None and nv.weight is not None) or v_late or (nq is None) != (nk is None) or (
            nq is not None and not nq.same_kind(nk)):
        return None  # (v's norm: weightless only, Gemma 4's)
    qk_norm = (nq.weight, nk.weight, float(nq.op.attrs["eps"])) if nq is not None else None
    rq, rk = fp32_rope(xq, graph, d), fp32_rope(xk, graph, d)
    if rq is None and rk is None:  # no RoPE (Flint's full-attention layers, SmolLM3's NoPE layers)
        rq, rk = no_rope(xq), no_rope(xk)
    if rq is None or rk is None or not rq.same_variant(rk) or (q_late != k_late and rq.cos is not None):
        return None  # (q and k transposed late or early alike where RoPE reads tables)
    aq, ak = _norm(rq.result, graph, d), _norm(rk.result, graph, d)  # per-head norms after RoPE (HunYuan)
    if (aq is None) != (ak is None) or (aq is not None and (qk_norm is not None or not aq.same_kind(ak))):
        return None
    if aq is not None:
        qk_norm, nq = (aq.weight, ak.weight, float(aq.op.attrs["eps"])), aq
    q, k = (aq.result, ak.result) if aq is not None else (rq.result, rk.result)
    pre = _q_scale(q, graph, seq_dim=1) if q_late else ()  # q scaled on [B, S, H, D] (Llama 4's NoPE layers)
    q = pre[1][-1].result if pre else q
    transposes = [_head_transpose(v, graph) for v, late in ((q, q_late), (k, k_late)) if late]
    if None in transposes or (q_late and not (_heads_last(rq.cos) and _heads_last(rq.sin))):
        return None
    q, k = transposes[0].result if q_late else q, transposes[-1].result if k_late else k
    post = () if pre else _q_scale(q, graph)
    if post and q_late and rq.cos is not None:
        return None  # (one layout for the tables and the scale)
    scaled = pre or post
    v_mul = _v_scale(xv, graph)
    v = v_mul[0].result if v_mul else xv
    cw_k, cw_v = only_use(k, graph, "cache_write"), only_use(v, graph, "cache_write")
    if cw_k is None or cw_v is None or cw_k.operands[2] is not k or cw_v.operands[2] is not v:
        return None
    fmt = (cw_k.attrs["format"], cw_k.attrs["block"])
    if cw_k.operands[1] is not cw_v.operands[1] or any(c.attrs["dim"] % 4 != 2 for c in (cw_k, cw_v)) or fmt != (
            cw_v.attrs["format"], cw_v.attrs["block"]) or ((aq is not None or nv is not None or dv != d)
                                                          and fmt[0] != "dense"):
        return None
    ops = [*oq, *ok, *ov, *rq.ops, *rk.ops, *(aq.ops + ak.ops if aq else []), *transposes,
           *(scaled[1] if scaled else []), *v_mul[:1], cw_k, cw_v]
    return RopeSite(ops, qkv, rq.cos, rq.sin, cw_k.operands[1], cw_k.operands[0], cw_v.operands[0],
                    post[1][-1].result if post else q, cw_k.result, cw_v.result, hq, hkv, d, *fmt, qk_norm,
                    rq.rotary_dim, rq.interleaved, rq.pair_tables, nq is not None and nq.fp32, norm_after=aq is not None,
                    q_scale=scaled[0] if scaled else None, negated=rq.negated,
                    heads_last=q_late and (rq.cos is not None or bool(pre)),
                    v_norm=float(nv.op.attrs["eps"]) if nv is not None else None, v_head_dim=dv if dv != d else 0,
                    v_scale=v_mul[1] if v_mul else None)


def _v_scale(v: Value, graph: Graph) -> tuple[Op, float] | tuple[()]:
    """(the mul, c) of v's only use mul(v, c) with c a number of v's type's result (MiMo-V2-Flash's value scale
    before the cache), else ()."""
    m = only_use(v, graph, "mul")
    c = mul_by(m, v) if m is not None else None
    if c is None or c is v or not scalar_const(c) or m.result.type != v.type:
        return ()
    return m, scalar_value(graph, c)


def _q_scale(q: Value, graph: Graph, seq_dim: int = 2) -> tuple[Value, list[Op]] | tuple[()]:
    """(t, the ops, the last giving scaled q) of q's only use mul(q, t) with t a per-token scale, [B or 1, 1, S, 1]
    (Ministral3's position-dependent q scaling after RoPE) or with S at `seq_dim` 1, [B or 1, S, 1, 1] (Llama 4's
    attention temperature on q before its head transpose), of q's dtype, or fp32 with the product cast back to q's
    dtype (Llama 4 in 16 bits: the same math as the template's, a product in fp32 rounded once), else ()."""
    m = only_use(q, graph, "mul")
    t = mul_by(m, q) if m is not None else None
    if t is None or t.type.rank != 4 or m.result.type.shape != q.type.shape:
        return ()
    ops = [m]
    if t.type.dtype != q.type.dtype:  # fp32 t: mul(q, t) in fp32, cast back to q's dtype
        back = only_use(m.result, graph, "cast")
        if t.type.dtype != DType.f32 or m.result.type.dtype != DType.f32 or back is None or back.result.type != q.type:
            return ()
        ops.append(back)
    elif m.result.type != q.type:
        return ()
    b, *rest = t.type.shape
    ones = [n for i, n in enumerate(rest, 1) if i != seq_dim]
    ok = ones == [1, 1] and rest[seq_dim - 1] == q.type.shape[seq_dim] and b in (1, q.type.shape[0])
    return (t, ops) if ok else ()


def rope_sites(graph: Graph) -> list[RopeSite]:
    """Every RoPE + cache-write site after a `linear` or `qlinear` (the concatenated QKV projection)."""
    out = []
    for op in graph.ops:
        if op.opcode in QKV_GEMMS:
            site = _site(op.result, graph)
            if site is not None:
                out.append(site)
    return out
