"""RoPE + KV-cache-write sites after a concatenated QKV GEMM: the ops the `rope_cache` kernel group
of the fuse pass takes (`codegen/templates/rope_cache.py` runs them in one launch).

The shape matched, per decoder layer (HF's Llama/Qwen2 attention after `concat_linears` and
`frontend/kv_capture.py`), with x_h = permute(reshape(slice(qkv, h-th range), [B, S, H, D]), [0, 2, 1, 3]):

    q   = rope(x_q)                            # read by attention
    k'  = cache_write(k_cache, pos, rope(x_k))
    v'  = cache_write(v_cache, pos, x_v)
    rope(x) = add(mul(x, cos), mul(cat(neg(x[..., D/2:]), x[..., :D/2]), sin))   (either operand order)

Partial RoPE (StableLM; Phi3 below partial_rotary_factor 1): rope(x) = cat(rope_R(x[..., :R]), x[..., R:]), cos and
sin of R channels; the site's `rotary_dim` is R.

Interleaved RoPE (GLM, Helium, Cohere: channels (2i, 2i+1) rotate together), as the frontend lowers
`stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)`: rotate(x) = reshape(cat(reshape(neg(x[..., 1::2]), [.., R/2, 1]),
reshape(x[..., 0::2], [.., R/2, 1]), -1), [.., R]) (`ROTATIONS`; the site's `interleaved`). Its cos/sin may be
`repeat_interleave(t, 2, -1)` of a table of one entry per pair (GLM, Helium: reshape(expand(reshape(t)))): the site
reads t itself (`pair_tables`), so the repeated copy is never made.

The rotation may run in fp32 and round once at its cast back to x_h's dtype (fp16/bf16 models): of cast(x_h, f32)
(Cohere) or with fp32 tables promoting its products (OLMo2).

Per-head q/k norms (Qwen3, Gemma3, OLMo3-style `q_norm`/`k_norm` over head_dim) sit between the reshape and
the permute of q and k (x_h = permute(rms_norm(reshape(...), w[D]), [0, 2, 1, 3])) or after the permute (Gemma3);
both or neither, one eps. A norm over the whole q (k) projection, all heads of the token at once (OLMo2's q_norm /
k_norm: rms_norm(slice, w[H * D]) before the reshape), is the same variant with weights of H * D: the template takes
the row's scale over H heads. Either may weigh in fp32 before its one rounding (cast(rms_norm(cast(x, f32), w),
x.dtype): OLMo2 in fp16/bf16; the site's `norm_fp32`). Per-head norms after RoPE instead (HunYuan: rms_norm(rope(x_h),
w[D]) feeds the attention / the cache write; the site's `norm_after`, dense caches only). q after RoPE (and its norm)
may be scaled per token, mul(q, t[B or 1, 1, S, 1]) of q's dtype (Ministral3's position-dependent scaling; `q_scale`).
NanoChat: rotate_half negated, cat(x[..., D/2:], neg(x[..., :D/2])) (the site's `negated`: a rotation by -theta), and
per-head q/k norms without a weight (after RoPE there; before it too): qk_norm = (None, None, eps).

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

QKV_GEMMS = ("linear", "qlinear")  # the site reads the GEMM's output from memory: any GEMM template wrote it


@dataclass
class RopeSite:
    """One site: its ops (graph order not guaranteed), the group's reads and results, and sizes."""

    ops: list[Op]
    qkv: Value
    cos: Value
    sin: Value
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

    @property
    def reads(self) -> list[Value]:
        """What the template reads (a repeat_interleave'd table is read through: not its copy; a weightless norm's
        weights are None)."""
        norm = [w for w in self.qk_norm[:2] if w is not None] if self.qk_norm is not None else []
        scale = [self.q_scale] if self.q_scale is not None else []
        return [self.qkv, self.cos, self.sin, self.pos, self.k_cache, self.v_cache, *norm, *scale]


def _only_use(v: Value, graph: Graph, opcode: str) -> Op | None:
    if len(v.uses) != 1 or any(v is o for o in graph.outputs):
        return None
    u = v.uses[0]
    return u if u.opcode == opcode else None


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
    the weight multiplies in fp32 before the one rounding); `weightless`: w may be absent (NanoChat; a per-head norm,
    whose template reads the head width from the site, not from a weight); else None."""
    up = _only_use(v, graph, "cast")
    fp32 = up is not None and up.result.type.dtype == DType.f32 and v.type.dtype != DType.f32
    x = up.result if fp32 else v
    n = _only_use(x, graph, "rms_norm")
    if n is None or len(n.operands) not in ((1, 2) if weightless else (2,)) or n.result.type != x.type:
        return None
    w = n.operands[-1].type
    if len(n.operands) == 2 and (w.rank != 1 or w.shape[0] != width or w.dtype not in (x.type.dtype, v.type.dtype)):
        return None
    down = _only_use(n.result, graph, "cast") if fp32 else None
    if fp32 and (down is None or down.result.type != v.type):
        return None
    return _Norm([up, n, down], down.result, n, True) if fp32 else _Norm([n], n.result, n, False)


def _heads(sl: Op, graph: Graph) -> tuple[Value, list[Op], int, int, _Norm | None] | None:
    """slice -> [rms_norm over the row] -> reshape [B, S, H, D] -> [rms_norm over D] -> permute [0, 2, 1, 3]
    [-> rms_norm over D]: (x_h, the ops, H, D, the norm)."""
    row = _norm(sl.result, graph, sl.result.type.shape[-1], weightless=False)  # over all heads of the token (OLMo2)
    r = _only_use((row or sl).result, graph, "reshape")
    if r is None or r.result.type.rank != 4:
        return None
    _, _, h, d = r.result.type.shape
    if not isinstance(h, int) or not isinstance(d, int) or d % 2:
        return None
    norm = row or _norm(r.result, graph, d)  # per head (Qwen3)
    p = _only_use((r if row else norm or r).result, graph, "permute")
    if p is None or list(p.attrs["dims"]) != [0, 2, 1, 3]:
        return None
    after = _norm(p.result, graph, d) if norm is None else None  # Gemma3 norms the heads after the transpose
    norm = norm or after
    return (after or p).result, [sl, r, p] + (norm.ops if norm else []), h, d, norm


def _mul_by(m: Op, x: Value) -> Value | None:
    if m.opcode != "mul" or len(m.operands) != 2:
        return None
    a, b = m.operands
    return b if a is x else a if b is x else None


def _single_use(v: Value, graph: Graph) -> bool:
    return len(v.uses) == 1 and not any(v is o for o in graph.outputs)


def _last_dim_slices(x: Value, step: int) -> dict[int, Op]:
    """x's uses that slice its last dim with `step`, by start."""
    return {u.attrs["start"]: u for u in x.uses if u.opcode == "slice" and u.attrs["dim"] == x.type.rank - 1
            and u.attrs["step"] == step}


def _rotate_half(x: Value, graph: Graph, d: int) -> tuple[Value, list[Op], bool] | None:
    """cat(neg(x[..., D/2:]), x[..., :D/2]) (Llama's rotate_half), or its negation cat(x[..., D/2:], neg(x[..., :D/2]))
    (NanoChat's): (its result, its ops, negated?), else None."""
    halves = _last_dim_slices(x, 1)
    lo, hi = halves.get(0), halves.get(d // 2)
    if lo is None or hi is None or lo.attrs["end"] != d // 2 or hi.attrs["end"] != d:
        return None
    negated = _only_use(hi.result, graph, "neg") is None  # then lo is the negated half
    neg, kept = (_only_use(lo.result, graph, "neg"), hi) if negated else (_only_use(hi.result, graph, "neg"), lo)
    cat = _only_use(neg.result, graph, "cat") if neg is not None else None
    order = [kept.result, neg.result] if negated else [neg.result, kept.result]
    if cat is None or cat.attrs["dim"] % 4 != 3 or list(cat.operands) != order or not _single_use(kept.result, graph):
        return None
    return cat.result, [lo, hi, neg, cat], negated


def _rotate_pairs(x: Value, graph: Graph, d: int) -> tuple[Value, list[Op], bool] | None:
    """reshape(cat(reshape(neg(x[..., 1::2]), [.., D/2, 1]), reshape(x[..., 0::2], [.., D/2, 1]), -1), [.., D])
    (interleaved pairs, `stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)`): (its result, its ops), else None."""
    strided = _last_dim_slices(x, 2)
    even, odd = strided.get(0), strided.get(1)
    if even is None or odd is None or even.attrs["end"] != d or odd.attrs["end"] != d:
        return None
    neg = _only_use(odd.result, graph, "neg")
    cols = [_only_use(v, graph, "reshape") for v in (neg.result, even.result)] if neg is not None else [None]
    if any(c is None or tuple(c.result.type.shape) != (*x.type.shape[:-1], d // 2, 1) for c in cols):
        return None
    cat = _only_use(cols[0].result, graph, "cat")
    flat = _only_use(cat.result, graph, "reshape") if cat is not None else None
    if flat is None or list(cat.operands) != [c.result for c in cols] or cat.attrs["dim"] != x.type.rank or tuple(
            flat.result.type.shape) != tuple(x.type.shape):
        return None
    return flat.result, [even, odd, neg, *cols, cat, flat], False


ROTATIONS = {False: _rotate_half, True: _rotate_pairs}  # interleaved? -> the rotation's matcher


def _pair_table(c: Value) -> Value | None:
    """t where c = repeat_interleave(t, 2, -1) as the frontend lowers it (reshape(expand(reshape(t, [.., n, 1]),
    [.., n, 2]), [.., 2n])): one table entry per rotated pair; else None."""
    chain, v = [], c
    for opcode in ("reshape", "expand", "reshape"):
        if v.producer is None or v.producer.opcode != opcode:
            return None
        chain.append(v)
        v = v.producer.operands[0]
    s = tuple(v.type.shape)
    if not s or not isinstance(s[-1], int):
        return None
    want = [(*s[:-1], 2 * s[-1]), (*s, 2), (*s, 1)]
    return v if all(tuple(x.type.shape) == w for x, w in zip(chain, want)) else None


@dataclass
class _Rope:
    result: Value
    cos: Value  # the tables the template reads
    sin: Value
    ops: list[Op]
    rotary_dim: int
    interleaved: bool
    pair_tables: bool
    negated: bool = False

    def same_variant(self, other: _Rope) -> bool:
        """q's and k's RoPE must be one: the same tables, rotary dim, pairing and sign."""
        return self.cos is other.cos and self.sin is other.sin and (self.rotary_dim, self.interleaved,
                                                                    self.pair_tables, self.negated) == (
            other.rotary_dim, other.interleaved, other.pair_tables, other.negated)


def _rope(x: Value, graph: Graph, d: int) -> _Rope | None:
    """rope(x) = add(mul(x, cos), mul(rotate(x), sin)), either rotation of `ROTATIONS`, else None."""
    if len(x.uses) != 3 or any(x is o for o in graph.outputs):
        return None
    muls = [u for u in x.uses if u.opcode == "mul"]
    found = next(((i, r) for i, match in ROTATIONS.items() if (r := match(x, graph, d)) is not None), None)
    if len(muls) != 1 or found is None:
        return None
    interleaved, (rot, rot_ops, negated) = found
    m1, m2 = muls[0], _only_use(rot, graph, "mul")
    cos = _mul_by(m1, x)
    sin = _mul_by(m2, rot) if m2 is not None else None
    add = _only_use(m1.result, graph, "add")
    if cos is None or sin is None or add is None or not any(v is m2.result for v in add.operands):
        return None
    ops = [m1, *rot_ops, m2, add]
    if any(o.result.type.dtype not in (x.type.dtype, DType.f32) for o in ops) or add.result.type.shape != x.type.shape:
        return None
    tables = [_pair_table(t) if interleaved else None for t in (cos, sin)]
    pairs = all(t is not None for t in tables)
    return _Rope(add.result, *(tables if pairs else (cos, sin)), ops, d, interleaved, pairs, negated)


def _partial_rope(x: Value, graph: Graph, d: int) -> _Rope | None:
    """rope over all D channels (rotary dim D), or partial RoPE (StableLM, Phi3 with partial_rotary_factor < 1, GLM):
    cat(rope(x[..., :R]), x[..., R:]) with R even, else None."""
    full = _rope(x, graph, d)
    if full is not None:
        return full
    parts = {(u.attrs["start"], min(u.attrs["end"], d)): u for u in x.uses if u.opcode == "slice" and u.attrs["dim"] % 4 == 3
             and u.attrs["step"] == 1}
    if len(x.uses) != 2 or len(parts) != 2 or any(x is o for o in graph.outputs):
        return None
    rot = next((u for (a, b), u in parts.items() if a == 0 and 0 < b < d and b % 2 == 0), None)
    r = rot.attrs["end"] if rot is not None else 0
    rest = parts.get((r, d))
    inner = _rope(rot.result, graph, r) if rot is not None and rest is not None else None
    cat = _only_use(inner.result, graph, "cat") if inner is not None else None
    if cat is None or cat.attrs["dim"] % 4 != 3 or list(cat.operands) != [inner.result, rest.result] or not _single_use(
            rest.result, graph) or cat.result.type.shape != x.type.shape:
        return None
    inner.ops, inner.result = [rot, rest, *inner.ops, cat], cat.result
    return inner


def _fp32_rope(x: Value, graph: Graph, d: int) -> _Rope | None:
    """RoPE of the head view x, or for an fp16/bf16 x RoPE in fp32 cast back to x's dtype: of cast(x, f32) (Cohere), or
    with fp32 tables promoting the products (OLMo2): rope_cache's own math, one rounding at the store."""
    up = _only_use(x, graph, "cast")
    upcast = up is not None and up.result.type.dtype == DType.f32 and x.type.dtype != DType.f32
    rope = _partial_rope(up.result if upcast else x, graph, d)
    if rope is None or rope.result.type.dtype == x.type.dtype:
        return rope
    down = _only_use(rope.result, graph, "cast")
    if down is None or down.result.type.dtype != x.type.dtype:
        return None
    rope.ops, rope.result = [*([up] if upcast else []), *rope.ops, down], down.result
    return rope


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
    if any(h is None for h in heads) or len({h[3] for h in heads}) != 1 or heads[1][2] != heads[2][2]:
        return None
    (xq, oq, hq, d, nq), (xk, ok, hkv, _, nk), (xv, ov, _, _, nv) = heads
    if nv is not None or (nq is None) != (nk is None) or (nq is not None and not nq.same_kind(nk)):
        return None
    qk_norm = (nq.weight, nk.weight, float(nq.op.attrs["eps"])) if nq is not None else None
    rq, rk = _fp32_rope(xq, graph, d), _fp32_rope(xk, graph, d)
    if rq is None or rk is None or not rq.same_variant(rk):
        return None
    aq, ak = _norm(rq.result, graph, d), _norm(rk.result, graph, d)  # per-head norms after RoPE (HunYuan)
    if (aq is None) != (ak is None) or (aq is not None and (qk_norm is not None or not aq.same_kind(ak))):
        return None
    if aq is not None:
        qk_norm, nq = (aq.weight, ak.weight, float(aq.op.attrs["eps"])), aq
    q, k = (aq.result, ak.result) if aq is not None else (rq.result, rk.result)
    scaled = _q_scale(q, graph)
    cw_k, cw_v = _only_use(k, graph, "cache_write"), _only_use(xv, graph, "cache_write")
    if cw_k is None or cw_v is None or cw_k.operands[2] is not k or cw_v.operands[2] is not xv:
        return None
    fmt = (cw_k.attrs["format"], cw_k.attrs["block"])
    if cw_k.operands[1] is not cw_v.operands[1] or any(c.attrs["dim"] % 4 != 2 for c in (cw_k, cw_v)) or fmt != (
            cw_v.attrs["format"], cw_v.attrs["block"]) or (aq is not None and fmt[0] != "dense"):
        return None
    ops = [*oq, *ok, *ov, *rq.ops, *rk.ops, *(aq.ops + ak.ops if aq else []), *scaled[:1], cw_k, cw_v]
    return RopeSite(ops, qkv, rq.cos, rq.sin, cw_k.operands[1], cw_k.operands[0], cw_v.operands[0],
                    scaled[0].result if scaled else q, cw_k.result, cw_v.result, hq, hkv, d, *fmt, qk_norm,
                    rq.rotary_dim, rq.interleaved, rq.pair_tables, nq is not None and nq.fp32, norm_after=aq is not None,
                    q_scale=scaled[1] if scaled else None, negated=rq.negated)


def _q_scale(q: Value, graph: Graph) -> tuple[Op, Value] | tuple[()]:
    """(the mul, t) of q's only use mul(q, t) with t a per-token scale [B or 1, 1, S, 1] of q's dtype (Ministral3's
    position-dependent q scaling after RoPE), else ()."""
    m = _only_use(q, graph, "mul")
    t = _mul_by(m, q) if m is not None else None
    if t is None or m.result.type != q.type or t.type.dtype != q.type.dtype or t.type.rank != 4:
        return ()
    b, h, s, one = t.type.shape
    return (m, t) if h == 1 and one == 1 and s == q.type.shape[2] and b in (1, q.type.shape[0]) else ()


def rope_sites(graph: Graph) -> list[RopeSite]:
    """Every RoPE + cache-write site after a `linear` or `qlinear` (the concatenated QKV projection)."""
    out = []
    for op in graph.ops:
        if op.opcode in QKV_GEMMS:
            site = _site(op.result, graph)
            if site is not None:
                out.append(site)
    return out
