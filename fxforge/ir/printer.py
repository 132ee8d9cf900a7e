"""IR text: the printer. `parser.py` reads the same syntax back (print -> parse -> print is exact).

    graph @forward(%x: f32[s0, 128], %ids: i64[s0]) {
      %w = const @layers.0.weight : f32[16, 128]
      %0 = linear(%x, %w) : f32[s0, 16]
      %1 = reshape(%0) {shape=[s0, 4, 4]} : f32[s0, 4, 4]
      %2, %3 = extern(%1) {target="aten.sort.default", args=[$0, -1]} : f32[s0, 4, 4], i64[s0, 4, 4]
      return %2, %3
    }

Weight and graph names are `@name`, or `@"..."` (a JSON string) when they hold other characters
than letters, digits and `_.-`. Attributes equal to their op's defaults are not printed. Attribute values: ints, floats (repr, and
inf/-inf/nan), strings (JSON quoted), true/false/none, dtypes by name, lists `[...]`, dicts `{k=v}`,
`$i` (an extern's operand i), and dims: a bare symbol `s0` or a parenthesised expression `(2*s0)`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sympy

from fxforge.ir.dtypes import DType
from fxforge.ir.ops import lookup
from fxforge.ir.optable import OperandRef
from fxforge.ir.types import ENCODINGS, TensorType

if TYPE_CHECKING:  # the printer reads graphs but needs no graph code: graph.py imports this module
    from fxforge.ir.graph import Graph, Op


_BARE_GLOBAL = re.compile(r"[A-Za-z0-9_.\-]+")


def print_global(name: str) -> str:
    """A weight or graph name: `@layers.0.weight` bare when it is made of letters, digits and `_.-`,
    else quoted as a JSON string, `@"blocks.a b.weight"` (any name torch allows round-trips)."""
    return f"@{name}" if _BARE_GLOBAL.fullmatch(name) else "@" + json.dumps(name)


def print_dim(d: Any) -> str:
    if isinstance(d, int):
        return str(d)
    if isinstance(d, sympy.Integer):
        return str(int(d))
    if isinstance(d, sympy.Symbol):
        return d.name
    return f"({sympy.sstr(d)})"


def print_value(v: Any) -> str:
    """One attribute value in IR syntax."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, DType):
        return v.ir_name
    if isinstance(v, OperandRef):
        return f"${v.index}"
    if isinstance(v, sympy.Expr):
        return print_dim(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(print_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={print_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot print attribute value {v!r} of type {type(v).__name__}")


def print_encoding(enc: Any) -> str:
    fields = ", ".join(f"{k}={print_value(getattr(enc, k))}" for k, f in enc.__dataclass_fields__.items()
                       if not (f.metadata.get("omit_default") and getattr(enc, k) == f.default))
    assert ENCODINGS[enc.kind] is type(enc)
    return f"#{enc.kind}<{fields}>"


def print_type(t: TensorType) -> str:
    text = f"{t.dtype.ir_name}[{', '.join(print_dim(d) for d in t.shape)}]"
    return text if t.encoding is None else f"{text} {print_encoding(t.encoding)}"


def _shown_attrs(opcode: str, attrs: dict[str, Any]) -> dict[str, Any]:
    defaults = lookup(opcode).attrs
    out = {}
    for k, v in attrs.items():
        if opcode == "const" and k == "weight":
            continue
        d = defaults.get(k)
        if type(v) is type(d) and v == d:
            continue
        out[k] = v
    return out


def _op_text(opcode: str, results: list[tuple[str, TensorType]], operands: list[str], attrs: dict[str, Any]) -> str:
    """One op from what the printer reads: (name, type) per result, operand names, attributes."""
    text = ", ".join(f"%{r}" for r, _ in results) + f" = {opcode}"
    if opcode == "const":
        text += " " + print_global(attrs["weight"])
    if operands or opcode != "const":
        text += "(" + ", ".join(f"%{v}" for v in operands) + ")"
    shown = _shown_attrs(opcode, attrs)
    if shown:
        text += " " + print_value(shown)
    return text + " : " + ", ".join(print_type(t) for _, t in results)


def print_op(op: Op, name: Callable[[Any], str] | None = None) -> str:
    """One op in IR syntax; `name` (Value -> str) replaces the values' own names (the functional hash
    prints canonical positional names)."""
    name = name or (lambda v: v.name)
    return _op_text(op.opcode, [(name(r), r.type) for r in op.results], [name(v) for v in op.operands], op.attrs)


class GraphText:
    """`print_graph`'s text of a graph as it is now, formatted only when first read (`str()`).

    Taking one copies what the printer reads (names, types, attributes; O(ops), no formatting): the
    pass trace keeps one per pass and most traces are never read. Types and attribute values are
    immutable (`graph.freeze`), so the copy of each op's attribute dict is enough; later edits of the
    graph do not change the text. `broken`: when printing fails, the text is `<{broken}: the error>`
    instead of the error raised (the trace of a pass that broke the graph keeps what went wrong).
    `memo` (id(op) -> (op, its copy), shared by the snapshots of one pass run): an op whose opcode,
    names, type objects and attribute objects are the very ones copied before shares that copy, so a
    pass that changed a few ops allocates a few copies (fewer objects for the collector to walk)."""

    __slots__ = ("_parts", "_text", "_broken")

    def __init__(self, graph: Graph, broken: str | None = None, memo: dict[int, tuple] | None = None) -> None:
        memo = {} if memo is None else memo
        ops = [_op_copy(op, memo) for op in graph.ops]
        self._parts: tuple | None = (graph.name, [(v.name, v.type) for v in graph.inputs], ops,
                                     [v.name for v in graph.outputs])
        self._text: str | None = None
        self._broken = broken

    def __str__(self) -> str:
        if self._text is None:
            assert self._parts is not None
            try:
                self._text = _graph_text(*self._parts)
            except Exception as e:
                if self._broken is None:
                    raise
                self._text = f"<{self._broken}: {type(e).__name__}: {e}>"
            self._parts = None
        return self._text


def _op_copy(op: Op, memo: dict[int, tuple]) -> tuple:
    """What `_op_text` reads of `op`: the memo's copy when nothing in it changed (compared by identity)."""
    hit = memo.get(id(op))
    if hit is not None and hit[0] is op and _unchanged(hit[1], op):
        return hit[1]
    copy = (op.opcode, tuple([(r.name, r.type) for r in op.results]), tuple([v.name for v in op.operands]), dict(op.attrs))
    memo[id(op)] = (op, copy)
    return copy


def _unchanged(copy: tuple, op: Op) -> bool:
    """Whether `op` still reads as its memo copy. Plain loops, not all() over generators: this runs for every op
    of every pass's snapshot (half the time)."""
    opcode, results, operands, attrs = copy
    now_results, now_operands, now_attrs = op.results, op.operands, op.attrs
    if (opcode != op.opcode or len(results) != len(now_results) or len(operands) != len(now_operands)
            or len(attrs) != len(now_attrs)):
        return False
    for (n, t), r in zip(results, now_results):
        if n != r.name or t is not r.type:
            return False
    for n, v in zip(operands, now_operands):
        if n != v.name:
            return False
    for k, v in attrs.items():
        if now_attrs.get(k, _MISSING) is not v:
            return False
    return True


_MISSING = object()


def _graph_text(name: str, inputs: list[tuple[str, TensorType]], ops: list[tuple], outputs: list[str]) -> str:
    params = ", ".join(f"%{v}: {print_type(t)}" for v, t in inputs)
    lines = [f"graph {print_global(name)}({params}) {{"]
    lines += [f"  {_op_text(*op)}" for op in ops]
    lines.append("  return " + ", ".join(f"%{v}" for v in outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def print_graph(graph: Graph) -> str:
    return str(GraphText(graph))
