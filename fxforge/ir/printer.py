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


def _shown_attrs(op: Op) -> dict[str, Any]:
    defaults = lookup(op.opcode).attrs
    out = {}
    for k, v in op.attrs.items():
        if op.opcode == "const" and k == "weight":
            continue
        d = defaults.get(k)
        if type(v) is type(d) and v == d:
            continue
        out[k] = v
    return out


def print_op(op: Op, name: Callable[[Any], str] | None = None) -> str:
    """One op in IR syntax; `name` (Value -> str) replaces the values' own names (the functional hash
    prints canonical positional names)."""
    name = name or (lambda v: v.name)
    results = ", ".join(f"%{name(r)}" for r in op.results)
    text = f"{results} = {op.opcode}"
    if op.opcode == "const":
        text += " " + print_global(op.attrs["weight"])
    if op.operands or op.opcode != "const":
        text += "(" + ", ".join(f"%{name(v)}" for v in op.operands) + ")"
    attrs = _shown_attrs(op)
    if attrs:
        text += " " + print_value(attrs)
    return text + " : " + ", ".join(print_type(r.type) for r in op.results)


def print_graph(graph: Graph) -> str:
    params = ", ".join(f"%{v.name}: {print_type(v.type)}" for v in graph.inputs)
    lines = [f"graph {print_global(graph.name)}({params}) {{"]
    lines += [f"  {print_op(op)}" for op in graph.ops]
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
