"""Shape propagation: re-infer every op's result types from its operands with the op table.

Walking the ops in order, each op's types are inferred from its operands' (already propagated)
types. Where the declared type equals the inferred one only up to the form of a symbolic expression
(`s0*2` vs `2*s0`, `(s0 + 1) - 1` vs `s0`), the value takes the simplified inferred form; where they
disagree, `ShapePropError` names the op, both types and what to fix.

Decisions:
- `extern` ops keep their declared types (torch recorded them; the op table cannot infer them);
  `const` ops are checked against their weight like any other op.
- Dims take a normal form: symbols stay, polynomials in the size symbols are expanded (a unique
  form, cheap), anything else (floor, Mod, Max, ...) goes through `sympy.simplify`; memoised per
  expression, so a model with a handful of distinct symbolic dims pays for each once. Graph inputs
  are never retyped.
"""

from __future__ import annotations

import functools

import sympy

from fxforge.ir.errors import IRError, ShapeError
from fxforge.ir.graph import Graph
from fxforge.ir.printer import print_op, print_type
from fxforge.ir.types import Dim, TensorType, normalize_dim
from fxforge.passes.manager import PassContext
from fxforge.passes.rewriter import same_type


class ShapePropError(ShapeError):
    """A declared result type that the op's operands do not give."""


@functools.lru_cache(maxsize=4096)
def _simplify(d: sympy.Expr) -> Dim:
    if d.is_Atom:
        return normalize_dim(d)
    if d.is_polynomial():  # expanded polynomials are a normal form, and far cheaper than simplify
        return normalize_dim(sympy.expand(d))
    return normalize_dim(sympy.simplify(d))


def simplify_dim(d: Dim) -> Dim:
    return d if isinstance(d, int) else _simplify(d)


def simplify_type(t: TensorType) -> TensorType:
    if t.is_static:
        return t
    return TensorType(tuple(simplify_dim(d) for d in t.shape), t.dtype, t.encoding)


def propagate_shapes(graph: Graph) -> dict[str, int]:
    """Re-infer and simplify every result type; returns {"ops_checked", "types_updated"}."""
    checked = updated = 0
    simplified: dict[int, tuple[TensorType, TensorType]] = {}  # id(type) -> (type, simplified): layers share types
    for op in graph.ops:
        checked += 1
        if op.opcode == "extern":
            continue
        try:
            inferred = graph.infer_types(op.opcode, op.operands, op.attrs)
        except IRError as e:
            raise ShapePropError(f"{print_op(op)}: its operands' types do not fit the op: {e}") from None
        if len(inferred) != len(op.results):
            raise ShapePropError(f"{print_op(op)}: declares {len(op.results)} results, the op gives {len(inferred)}")
        for r, t in zip(op.results, inferred, strict=True):
            if not same_type(r.type, t):
                raise ShapePropError(
                    f"{print_op(op)}: %{r.name} is declared {print_type(r.type)} but its operands give "
                    f"{print_type(t)}; the pass that built or retyped this op is wrong (run with verify on "
                    "to find the first pass that leaves it so)")
            hit = simplified.get(id(t))
            if hit is None or hit[0] is not t:
                hit = simplified[id(t)] = (t, simplify_type(t))
            new = hit[1]
            if new is not r.type and new != r.type:
                r.type = new
                updated += 1
    return {"ops_checked": checked, "types_updated": updated}


class ShapePropagation:
    """stats: ops_checked, types_updated."""

    name = "shape_prop"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        ctx.stats.update(propagate_shapes(graph))
        return graph
