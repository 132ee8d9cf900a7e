"""The verifier: checks the invariants every pass must keep.

- every operand is a graph input or a result of an earlier op (dominance in straight-line SSA);
- value names are unique; use lists match the operands exactly (use-def chains);
- each op's arity and attributes fit its op table entry;
- each op's declared result types equal what its shape function infers (externs declare their own);
- `const` ops name weights of the table, with the weight's shape;
- outputs are defined values;
- every type is well formed: a DType, dims that are non-negative integers or expressions that are
  not provably negative, non-integer or infinite.

Decisions: `verify` never lets another exception out; a graph parsed from untrusted text can make
an op's shape function fail in any way (an attribute of the wrong type, an out-of-range axis), and
that is reported as a VerifyError naming the op (the original exception is chained).
"""

from __future__ import annotations

from collections import Counter

from fxforge.ir.dim_expr import dim_problem
from fxforge.ir.dtypes import DType
from fxforge.ir.errors import IRError, VerifyError
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.ops import lookup
from fxforge.ir.printer import print_op, print_type
from fxforge.ir.types import TensorType


def verify(graph: Graph) -> None:
    """Raise VerifyError naming the first broken invariant (the op and what is wrong)."""
    defined: set[int] = set()
    names: set[str] = set()
    expected_uses: dict[int, Counter] = {}

    def define(value: Value, where: str) -> None:
        if value.name in names:
            raise VerifyError(f"{where}: value %{value.name} is defined twice")
        problem = _type_problem(value.type)
        if problem:
            raise VerifyError(f"{where}: %{value.name} has a bad type: {problem}")
        names.add(value.name)
        defined.add(id(value))

    for v in graph.inputs:
        define(v, "graph inputs")
    for op in graph.ops:
        for v in op.operands:
            if id(v) not in defined:
                raise VerifyError(f"{_show(op)}: operand %{v.name} is used before it is defined")
            expected_uses.setdefault(id(v), Counter())[id(op)] += 1
        _check_op(graph, op)
        for r in op.results:
            if r.producer is not op:
                raise VerifyError(f"{_show(op)}: result %{r.name} does not point back to its op")
            define(r, _show(op))
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
        if opdef.num_results >= 0 and len(op.results) != opdef.num_results:
            raise VerifyError(f"has {opdef.num_results} result(s), declares {len(op.results)}")
        opdef.full_attrs(op.attrs)
        if op.opcode == "extern" or (op.opcode == "const" and op.attrs["weight"] not in graph.weights):
            return
        inferred = graph.infer_types(op.opcode, op.operands, op.attrs)
        if len(inferred) != len(op.results):
            raise VerifyError(f"declares {len(op.results)} results, its op gives {len(inferred)}")
        for r, t in zip(op.results, inferred):
            if not r.type.same_as(t):
                raise VerifyError(f"result %{r.name} is declared {print_type(r.type)} but the op gives {print_type(t)}")
    except IRError as e:
        raise VerifyError(f"{_show(op)}: {e}") from None
    except Exception as e:  # noqa: BLE001  (a shape function given attributes it cannot take)
        raise VerifyError(f"{_show(op)}: its operands or attributes do not fit the op ({type(e).__name__}: {e})") from e


def _type_problem(t: object) -> str | None:
    if not isinstance(t, TensorType) or not isinstance(t.dtype, DType):
        return f"{t!r} is not a TensorType"
    for d in t.shape:
        problem = dim_problem(d)
        if problem:
            return problem
    return None


def _show(op: Op) -> str:
    """The op as text for a message; an op whose attributes cannot be printed by its opcode."""
    try:
        return print_op(op)
    except Exception:  # noqa: BLE001  (a message must not fail on the op it describes)
        return f"{op.opcode} op"
