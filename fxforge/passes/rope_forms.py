"""The RoPE forms `rope_sites` recognises on a q / k head view x_h (`fp32_rope`): what the `rope_cache` template
computes, and the tables it reads.

    rope(x) = add(mul(x, cos), mul(cat(neg(x[..., D/2:]), x[..., :D/2]), sin))   (either operand order)

Two halves (GPT-OSS's `_apply_rotary_emb`): the same rotate_half written per half x1 = x[..., :D/2], x2 = x[..., D/2:],
cat(sub(mul(x1, c), mul(x2, s)), add(mul(x2, c), mul(x1, s))), with tables of D/2 entries used by both halves
(`pair_tables`: one entry per pair (i, i + D/2)) or the halves t[..., :D/2], t[..., D/2:] of full tables.

Partial RoPE (StableLM; Phi3 below partial_rotary_factor 1): rope(x) = cat(rope_R(x[..., :R]), x[..., R:]), cos and
sin of R channels; the site's `rotary_dim` is R.

Interleaved RoPE (GLM, Helium, Cohere: channels (2i, 2i+1) rotate together), as the frontend lowers
`stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)`: rotate(x) = reshape(cat(reshape(neg(x[..., 1::2]), [.., R/2, 1]),
reshape(x[..., 0::2], [.., R/2, 1]), -1), [.., R]) (`ROTATIONS`; the site's `interleaved`). Its cos/sin may be
`repeat_interleave(t, 2, -1)` of a table of one entry per pair (GLM, Helium: reshape(expand(reshape(t)))): the site
reads t itself (`pair_tables`), so the repeated copy is never made.

NanoChat: rotate_half negated, cat(x[..., D/2:], neg(x[..., :D/2])) (`negated`: a rotation by -theta); in the
two-halves form, add first and sub(mul(x2, c), mul(x1, s)) second.

The rotation may run in fp32 and round once at its cast back to x_h's dtype (fp16/bf16 models): of cast(x_h, f32)
(Cohere) or with fp32 tables promoting its products (OLMo2).
"""

from __future__ import annotations

from dataclasses import dataclass

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Value


def only_use(v: Value, graph: Graph, opcode: str) -> Op | None:
    """v's only use if it is an `opcode` op (v no graph output), else None."""
    if len(v.uses) != 1 or any(v is o for o in graph.outputs):
        return None
    u = v.uses[0]
    return u if u.opcode == opcode else None


def mul_by(m: Op, x: Value) -> Value | None:
    """y where m = mul(x, y) or mul(y, x), else None."""
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
    negated = only_use(hi.result, graph, "neg") is None  # then lo is the negated half
    neg, kept = (only_use(lo.result, graph, "neg"), hi) if negated else (only_use(hi.result, graph, "neg"), lo)
    cat = only_use(neg.result, graph, "cat") if neg is not None else None
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
    neg = only_use(odd.result, graph, "neg")
    cols = [only_use(v, graph, "reshape") for v in (neg.result, even.result)] if neg is not None else [None]
    if any(c is None or tuple(c.result.type.shape) != (*x.type.shape[:-1], d // 2, 1) for c in cols):
        return None
    cat = only_use(cols[0].result, graph, "cat")
    flat = only_use(cat.result, graph, "reshape") if cat is not None else None
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
    cos: Value | None  # the tables the template reads (None: no RoPE, `no_rope`)
    sin: Value | None
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


def no_rope(x: Value) -> _Rope:
    """x as it is, no tables (the rope_cache site of a layer without RoPE)."""
    return _Rope(x, None, None, [], 0, False, False)


def _halves_table(lo: Value, hi: Value, d: int) -> tuple[Value, bool] | None:
    """The table both halves of the two-halves form read: one table of D/2 entries for both (lo is hi; channel c
    reads entry c % (D/2)), or the two halves of one table of D entries, t[..., :D/2] and t[..., D/2:]: (the table,
    half?), else None. A table broadcasts over the heads (dim -3 of 1): not a head view."""
    if any(t.type.rank >= 3 and t.type.shape[-3] != 1 for t in (lo, hi)):
        return None
    if lo is hi:
        return lo, True
    a, b = lo.producer, hi.producer
    if a is None or b is None or a.opcode != "slice" or b.opcode != "slice" or a.operands[0] is not b.operands[0]:
        return None
    t = a.operands[0]
    if t.type.shape[-1] != d or any(s.attrs["dim"] % t.type.rank != t.type.rank - 1 or s.attrs["step"] != 1
                                    for s in (a, b)):
        return None
    spans = [(s.attrs["start"], min(s.attrs["end"], d)) for s in (a, b)]
    return (t, False) if spans == [(0, d // 2), (d // 2, d)] else None


def _rope_halves(x: Value, graph: Graph, d: int) -> _Rope | None:
    """rotate_half RoPE written over the two halves x1 = x[..., :D/2], x2 = x[..., D/2:] (GPT-OSS's
    `_apply_rotary_emb`): cat(sub(mul(x1, c), mul(x2, s)), add(mul(x2, c), mul(x1, s))) = x * [c, c] +
    rotate_half(x) * [s, s]; negated (add first, sub(mul(x2, c), mul(x1, s)) second: a rotation by -theta). The
    tables are halves (`_halves_table`): of D/2 entries (`pair_tables`, one entry per pair) or of a full table."""
    halves = _last_dim_slices(x, 1) if len(x.uses) == 2 and not any(x is o for o in graph.outputs) else {}
    lo, hi = halves.get(0), halves.get(d // 2)
    if lo is None or hi is None or lo.attrs["end"] != d // 2 or min(hi.attrs["end"], d) != d:
        return None
    x1, x2 = lo.result, hi.result
    terms = {}  # (half, the combine it feeds) -> (the mul, its table)
    for h in (x1, x2):
        if len(h.uses) != 2 or any(h is o for o in graph.outputs):
            return None
        for m in h.uses:
            t, use = mul_by(m, h), m.result.uses
            if t is None or len(use) != 1 or use[0].opcode not in ("add", "sub") or not _single_use(m.result, graph):
                return None
            terms[(h, use[0])] = (m, t)
    combines = list(dict.fromkeys(c for _, c in terms))
    cat = only_use(combines[0].result, graph, "cat") if len(combines) == 2 else None
    if cat is None or cat.attrs["dim"] % 4 != 3 or len(cat.operands) != 2 or len(terms) != 4:
        return None
    first, second = (v.producer for v in cat.operands)  # first = x1 c -+ x2 s, second = x2 c +- x1 s
    if {first, second} != set(combines) or cat.result.type.shape != x.type.shape:
        return None
    (c1, s1), (c2, s2) = ((terms[(a, f)], terms[(b, f)]) for a, b, f in ((x1, x2, first), (x2, x1, second)))
    negated = first.opcode == "add"
    sub, cos_term = (second, c2) if negated else (first, c1)
    if {first.opcode, second.opcode} != {"add", "sub"} or sub.operands[0] is not cos_term[0].result:
        return None
    cos, sin = _halves_table(c1[1], c2[1], d), _halves_table(s1[1], s2[1], d)
    if cos is None or sin is None or cos[1] != sin[1]:
        return None
    ops = [lo, hi, c1[0], s1[0], c2[0], s2[0], first, second, cat]
    if any(o.result.type.dtype not in (x.type.dtype, DType.f32) for o in ops):
        return None
    return _Rope(cat.result, cos[0], sin[0], ops, d, False, cos[1], negated)


def _complex_parts(v: Value, graph: Graph) -> list[Value] | None:
    """[a, b] where a = reshape(v[..., 0:1]), b = reshape(v[..., 1:2]) of a pair view v [.., n, 2] (the real and
    imaginary parts as `aten_complex` lowers them), each single-use, else None."""
    parts = _last_dim_slices(v, 1)
    cuts = [parts.get(i) for i in (0, 1)]
    if len(v.uses) != 2 or any(c is None or c.attrs["end"] != i + 1 for i, c in enumerate(cuts)):
        return None
    views = [only_use(c.result, graph, "reshape") for c in cuts]
    if any(r is None or tuple(r.result.type.shape) != tuple(v.type.shape[:-1]) for r in views):
        return None
    return [r.result for r in views]


def _rope_complex(x: Value, graph: Graph, d: int) -> _Rope | None:
    """Llama 4's complex RoPE, `view_as_real(view_as_complex(x.reshape(.., D/2, 2)) * freqs_cis).flatten(-2)`, as the
    frontend lowers it on real pairs: with a, b the parts of the pair view x2 [.., D/2, 2] (`_complex_parts`) and c, s
    those of the table, reshape(cat(reshape(a c - b s, [.., D/2, 1]), reshape(a s + b c, [.., D/2, 1]), -1), [.., D]).
    Interleaved RoPE (channels 2i, 2i + 1) with tables of one entry per pair. x is the pair view, or its only use
    reshapes it to one."""
    view = only_use(x, graph, "reshape") if x.type.rank == 4 else None
    x2 = view.result if view is not None else x
    if x2.type.rank != 5 or tuple(x2.type.shape[-2:]) != (d // 2, 2) or (
            view is not None and tuple(x2.type.shape[:-2]) != tuple(x.type.shape[:-1])):
        return None
    ab = _complex_parts(x2, graph)
    if ab is None or any(len(v.uses) != 2 for v in ab):
        return None
    terms = {}  # (part, the combine it feeds) -> (the mul, its table)
    for v in ab:
        for m in v.uses:
            t = mul_by(m, v)
            if t is None or not _single_use(m.result, graph) or m.result.uses[0].opcode not in ("add", "sub"):
                return None
            terms[(v, m.result.uses[0].opcode)] = (m, t)
    if len(terms) != 4:
        return None
    (a, b), (ac, bs, as_, bc) = ab, (terms[k] for k in ((ab[0], "sub"), (ab[1], "sub"), (ab[0], "add"), (ab[1], "add")))
    re, im = ac[0].result.uses[0], as_[0].result.uses[0]
    if (list(re.operands) != [ac[0].result, bs[0].result] or set(im.operands) != {as_[0].result, bc[0].result}
            or ac[1] is not bc[1] or bs[1] is not as_[1]):
        return None
    cols = [only_use(v.result, graph, "reshape") for v in (re, im)]
    cat = only_use(cols[0].result, graph, "cat") if cols[0] is not None else None
    flat = only_use(cat.result, graph, "reshape") if cat is not None else None
    if (flat is None or list(cat.operands) != [c.result for c in cols] or cat.attrs["dim"] % 5 != 4
            or tuple(cols[1].result.type.shape) != (*a.type.shape, 1) or tuple(flat.result.type.shape) != (
                *x2.type.shape[:-2], d)):
        return None
    ops = [*([view] if view else []), *(v.producer for v in (a, b)), *(v.producer.operands[0].producer for v in (a, b)),
           ac[0], bs[0], as_[0], bc[0], re, im, *cols, cat, flat]
    if any(o.result.type.dtype not in (x.type.dtype, DType.f32) for o in ops):
        return None
    return _Rope(flat.result, ac[1], as_[1], ops, d, True, True)


def _rope(x: Value, graph: Graph, d: int) -> _Rope | None:
    """rope(x) = add(mul(x, cos), mul(rotate(x), sin)), either rotation of `ROTATIONS`, or its two-halves form
    (`_rope_halves`), or the complex form (`_rope_complex`), else None."""
    if x.type.rank == 5 or (x.type.rank == 4 and len(x.uses) == 1):
        return _rope_complex(x, graph, d)
    if len(x.uses) == 2:
        return _rope_halves(x, graph, d)
    if len(x.uses) != 3 or any(x is o for o in graph.outputs):
        return None
    muls = [u for u in x.uses if u.opcode == "mul"]
    found = next(((i, r) for i, match in ROTATIONS.items() if (r := match(x, graph, d)) is not None), None)
    if len(muls) != 1 or found is None:
        return None
    interleaved, (rot, rot_ops, negated) = found
    m1, m2 = muls[0], only_use(rot, graph, "mul")
    cos = mul_by(m1, x)
    sin = mul_by(m2, rot) if m2 is not None else None
    add = only_use(m1.result, graph, "add")
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
    cat = only_use(inner.result, graph, "cat") if inner is not None else None
    if cat is None or cat.attrs["dim"] % 4 != 3 or list(cat.operands) != [inner.result, rest.result] or not _single_use(
            rest.result, graph) or cat.result.type.shape != x.type.shape:
        return None
    inner.ops, inner.result = [rot, rest, *inner.ops, cat], cat.result
    return inner


def fp32_rope(x: Value, graph: Graph, d: int) -> _Rope | None:
    """RoPE of the head view x, or for an fp16/bf16 x RoPE in fp32 cast back to x's dtype: of cast(x, f32) (Cohere), or
    with fp32 tables promoting the products (OLMo2): rope_cache's own math, one rounding at the store."""
    up = only_use(x, graph, "cast")
    upcast = up is not None and up.result.type.dtype == DType.f32 and x.type.dtype != DType.f32
    rope = _partial_rope(up.result if upcast else x, graph, d)
    if rope is None or rope.result.type.dtype == x.type.dtype:
        return rope
    down = only_use(rope.result, graph, "cast")
    if down is None or down.result.type.dtype != x.type.dtype:
        return None
    rope.ops, rope.result = [*([up] if upcast else []), *rope.ops, down], down.result
    return rope
