"""Common subexpression elimination by value numbering.

Two ops compute the same values when they have the same opcode, the same operands (by identity)
and equal attributes; the later one's results are redirected to the earlier one's and it is erased.
Walking the ops in order and redirecting as we go makes one sweep enough: operands are already
canonical when an op is numbered.

Decisions:
- Attribute keys are exact: floats are compared by their bit pattern (`-0.0` is not `0.0`, a NaN
  equals the same NaN), and `1`, `1.0` and `True` are different keys.
- Operands of ops with the `commutative` trait (add, mul, maximum, minimum, eq, ne, logical/bitwise
  and, or, xor) are numbered as an unordered pair: IEEE addition and multiplication are commutative,
  so `add(a, b)` and `add(b, a)` are the same value bit for bit.
- Ops without the `deterministic` trait (externs that are random or stateful: rand, dropout,
  bernoulli, empty, ..., or impure) never merge: two draws are two different values. Two `const` ops
  of the same weight do merge.
- An op whose result an impure op writes (its first operand: `zeros_like` then `scatter_`) never merges:
  two fresh tensors written in place are two tensors, and keeping them apart lets DCE drop a write nobody
  reads (`dce.unseen_write`).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from fxforge.ir.graph import Graph, Op
from fxforge.passes.dce import has_side_effects
from fxforge.passes.manager import PassContext
from fxforge.passes.rewriter import same_type


def may_merge(op: Op) -> bool:
    """The op table's `deterministic` trait (random or stateful externs never merge), and no result written in place
    (the first operand of an impure op: an in-place aten op's self, a `cache_write`'s cache)."""
    return op.opdef.is_deterministic(op.attrs) and not any(
        has_side_effects(u) and u.operands[0] is r for r in op.results for u in r.uses)


def attr_key(value: Any) -> Hashable:
    """A hashable key equal only for attribute values that mean exactly the same thing."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", value)
    if isinstance(value, float):
        return ("f", value.hex())
    if isinstance(value, (list, tuple)):
        return ("t", tuple(attr_key(v) for v in value))
    if isinstance(value, dict):
        return ("d", tuple(sorted((str(k), attr_key(v)) for k, v in value.items())))
    return (type(value).__name__, value)


def op_key(op: Op) -> Hashable:
    operands: Any = tuple(id(v) for v in op.operands)
    if op.opdef.commutative and len(operands) == 2:
        operands = frozenset(operands) if operands[0] != operands[1] else operands
    return (op.opcode, operands, attr_key(op.attrs), len(op.results))


def eliminate_common_subexpressions(graph: Graph) -> dict[str, int]:
    """Merge duplicate ops; returns {opcode: ops merged}."""
    seen: dict[Hashable, Op] = {}
    merged: dict[str, int] = {}
    for op in list(graph.ops):
        if not may_merge(op):
            continue
        key = op_key(op)
        first = seen.get(key)
        if first is None:
            seen[key] = op
            continue
        if any(not same_type(a.type, b.type) for a, b in zip(op.results, first.results, strict=True)):
            continue  # externs declare their types; different declarations are different calls
        graph.replace_op(op, list(first.results))
        merged[op.opcode] = merged.get(op.opcode, 0) + 1
    return merged


class CommonSubexpressionElimination:
    """stats: merged (total) and merged_by_opcode."""

    name = "cse"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        merged = eliminate_common_subexpressions(graph)
        ctx.stats["merged"] = sum(merged.values())
        ctx.stats["merged_by_opcode"] = dict(sorted(merged.items()))
        return graph
