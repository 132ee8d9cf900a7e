"""The verifier: checks the invariants every pass must keep.

- every operand is a graph input or a result of an earlier op (dominance in straight-line SSA);
- value names are unique; use lists match the operands exactly (use-def chains);
- each op's arity and attributes fit its op table entry;
- each op's declared result types equal what its shape function infers (externs declare their own);
- `const` ops name weights of the table, with the weight's shape;
- outputs are defined values.
"""

from __future__ import annotations

from collections import Counter

from fxforge.ir.errors import IRError, VerifyError
from fxforge.ir.graph import Graph, Op
from fxforge.ir.ops import lookup
from fxforge.ir.printer import print_op, print_type


def verify(graph: Graph) -> None:
    """Raise VerifyError naming the first broken invariant (the op and what is wrong)."""
    defined: set[int] = set()
    names: set[str] = set()
    expected_uses: dict[int, Counter] = {}

    def define(value, where: str) -> None:
        if value.name in names:
            raise VerifyError(f"{where}: value %{value.name} is defined twice")
        names.add(value.name)
        defined.add(id(value))

    for v in graph.inputs:
        define(v, "graph inputs")
    for op in graph.ops:
        for v in op.operands:
            if id(v) not in defined:
                raise VerifyError(f"{print_op(op)}: operand %{v.name} is used before it is defined")
            expected_uses.setdefault(id(v), Counter())[id(op)] += 1
        _check_op(graph, op)
        for r in op.results:
            if r.producer is not op:
                raise VerifyError(f"{print_op(op)}: result %{r.name} does not point back to its op")
            define(r, print_op(op))
    for v in graph.outputs:
        if id(v) not in defined:
            raise VerifyError(f"return: %{v.name} is not defined in the graph")
    for v in graph.values():
        actual = Counter(id(u) for u in v.uses)
        want = expected_uses.get(id(v), Counter())
        if actual != want:
            raise VerifyError(f"use list of %{v.name} is stale: {len(v.uses)} recorded uses, {sum(want.values())} real")


def _check_op(graph: Graph, op: Op) -> None:
    try:
        opdef = lookup(op.opcode)
        lo, hi = opdef.arity
        if len(op.operands) < lo or (hi is not None and len(op.operands) > hi):
            raise VerifyError(f"takes {lo}..{hi} operands, has {len(op.operands)}")
        opdef.full_attrs(op.attrs)
        if op.opcode == "extern" or (op.opcode == "const" and op.attrs["weight"] not in graph.weights):
            return
        inferred = graph.infer_types(op.opcode, op.operands, op.attrs)
    except IRError as e:
        raise VerifyError(f"{print_op(op)}: {e}") from None
    if len(inferred) != len(op.results):
        raise VerifyError(f"{print_op(op)}: declares {len(op.results)} results, its op gives {len(inferred)}")
    for r, t in zip(op.results, inferred):
        if not r.type.same_as(t):
            raise VerifyError(f"{print_op(op)}: result %{r.name} is declared {print_type(r.type)} but the op gives {print_type(t)}")
