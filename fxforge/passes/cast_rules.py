"""canonicalize's `CAST_RULES`: a float cast moves above exact data movement where that saves a kernel.

- `cast_to_sources`: a cast of a tree of moves whose sources are cast to that dtype anyway reads those casts (cse
  merges them with their twins): every path reads the one cast.
- `cast_before_view`: cast(view(y)) -> view(cast(y)) for a single-use pointwise y: the cast joins y's kernel rather
  than running as one of its own behind the view (the fuser does not fuse across views).

ERNIE 4.5's interleaved RoPE in an fp16 model rotates in fp16 and casts around it (`cast_to_sources`):

    add(mul(cast(x, f32), cos), mul(cast(reshape(cat(reshape(neg(x[..., 1::2])), reshape(x[..., 0::2]))), f32), sin))
 -> add(mul(cast(x, f32), cos), mul(reshape(cat(reshape(neg(cast(x, f32)[..., 1::2])), ...)), sin))

which is Cohere's form, RoPE of cast(x, f32) (`rope_forms.fp32_rope`): one rope_cache site, the cache write in it.
Ministral3's Llama-4 q scale (`1 + beta * log(1 + floor(pos / n))` in fp32, viewed [1, 1, T, 1], cast to an fp16
model's dtype) is one kernel with its cast (`cast_before_view`).

Decisions:
- Exact: each element of slice / reshape / permute / expand / cat is one source element, and neg commutes with a
  float-to-float cast (round to nearest is symmetric), so the values are the same bits; the multiplies and adds
  around them stay where they were, in the dtype eager uses. Integer casts are left alone (neg of the most
  negative integer wraps).
- Only when every source already has a cast to that dtype (the "twin"): the move then removes a cast rather than
  adding work, and casts elsewhere stay where other rules look for them (`reshape(linear(...))` sandwiches,
  norms between casts). The movement ops must be single use (no op is computed twice).
- `cast_before_view` moves only narrowing casts (the kernel then stores the narrow values), past nothing but a view
  (no element dropped: slices are not taken), and asks a pointwise producer: a view of a GEMM's or a norm's result
  keeps its cast, and widening casts stay where the norm rules look for them (`cast(x, f32)` before a norm).
- The cast is rebuilt before the root and cse merges it with its twin (the pipeline runs cse between its two
  canonicalize runs); the old movement ops are left dead for dce.
"""

from __future__ import annotations

from fxforge.ir.graph import Graph, Op, Value
from fxforge.passes.rewriter import P, Rule

EXACT_MOVES = ("slice", "reshape", "permute", "expand", "cat", "neg")  # each result element: one source element (negated)


def _single_use(v: Value, graph: Graph) -> bool:
    return len(v.uses) == 1 and not any(v is o for o in graph.outputs)


def _has_twin(v: Value, root: Op) -> bool:
    """v is cast to root's dtype by an op other than those under root."""
    return any(u.opcode == "cast" and u.attrs["dtype"] == root.attrs["dtype"] and u is not root for u in v.uses)


def _moved(g: Graph, root: Op, v: Value, memo: dict[int, Value]) -> Value:
    """v rebuilt before root from casts of its sources (`_sources` checked the tree)."""
    if id(v) not in memo:
        p = v.producer
        if p is not None and p.opcode in EXACT_MOVES and _single_use(v, g):
            memo[id(v)] = g.insert_before(root, p.opcode, [_moved(g, root, x, memo) for x in p.operands],
                                          dict(p.attrs)).result
        else:
            memo[id(v)] = g.insert_before(root, "cast", [v], {"dtype": root.attrs["dtype"]}).result
    return memo[id(v)]


def _sources(g: Graph, v: Value) -> list[Value]:
    """The values a tree of single-use exact moves reads (v itself if it is no such move)."""
    p = v.producer
    if p is None or p.opcode not in EXACT_MOVES or not _single_use(v, g):
        return [v]
    return [s for x in p.operands for s in _sources(g, x)]


def _cast_to_sources(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    moved, dtype = b["moved"], op.attrs["dtype"]
    if not (dtype.is_float and moved.type.dtype.is_float and moved.type.encoding is None):
        return None
    if not _single_use(moved, g) or not all(_has_twin(s, op) for s in _sources(g, moved)):
        return None
    return _moved(g, op, moved, {})


def _cast_before_view(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """cast(view(y)) -> view(cast(y)) for y a single-use pointwise result and a narrowing cast: the cast joins y's
    pointwise kernel rather than being one of its own behind the view (Ministral3's Llama-4 q scale, fp32 math cast
    to an fp16 model's dtype)."""
    view, y = b["view"], b["y"]
    p = y.producer
    to = op.attrs["dtype"]
    if not (to.is_float and y.type.dtype.is_float and to.bits < y.type.dtype.bits and y.type.encoding is None):
        return None
    if p is None or p.opdef.kernel != "pointwise" or not _single_use(y, g) or not _single_use(view, g):
        return None
    cast = g.insert_before(op, "cast", [y], {"dtype": op.attrs["dtype"]}).result
    return g.insert_before(op, view.producer.opcode, [cast], dict(view.producer.attrs)).result


CAST_RULES: list[Rule] = [
    Rule(P.op("cast", P.op(EXACT_MOVES, name="moved")), _cast_to_sources, "cast_to_sources"),
    Rule(P.op("cast", P.op(("reshape", "permute", "expand"), P.any("y"), name="view")), _cast_before_view,
         "cast_before_view"),
]
