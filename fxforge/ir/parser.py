"""IR text: the parser. Reads back what `printer.py` prints (print -> parse -> print is exact).

The syntax is in `grammar.lark` (lark, LALR with the contextual lexer); a transformer run inside the
parser turns types and attribute values into IR objects as they are reduced, and `parse_graph` then
builds the `Graph` op by op, with the result types taken from the text and value names kept exactly
as written. Every error, syntactic or semantic, is an `IRParseError` naming line and column.

    parse_graph(text, weights=None) -> Graph
    parse_type("f16[s0, (s0 - 1)] #nm<n=2, m=4>") -> TensorType
    parse_value("[s0, 4, -1]") -> (s0, 4, -1)          # attribute values, lists frozen to tuples
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lark
import sympy
import torch
from lark import Lark, Token, Transformer

from fxforge.ir.dim_expr import DimExprError, dim_problem, parse_dim_expr
from fxforge.ir.dtypes import DType
from fxforge.ir.errors import IRError, IRParseError
from fxforge.ir.graph import Graph, Value, Weight, freeze
from fxforge.ir.ops import OPS
from fxforge.ir.optable import OperandRef
from fxforge.ir.parse_errors import syntax_error
from fxforge.ir.text_bounds import MAX_DIM, MAX_DIM_DIGITS, MAX_NUMBER_CHARS, MAX_RANK, check_nesting
from fxforge.ir.types import ENCODINGS, TensorType, sym

__all__ = ["parse_graph", "parse_type", "parse_value", "parse_dim", "use_parser_cache", "build_graph"]

_GRAMMAR = Path(__file__).with_name("grammar.lark")

# -- transformer: tokens -> IR objects ------------------------------------------------------------


def _err(message: str, tok: Token | None) -> IRParseError:
    if tok is None or getattr(tok, "line", None) is None:
        return IRParseError(message)
    return IRParseError(message, tok.line, tok.column)


def _dtype(tok: Token) -> DType:
    try:
        return DType[str(tok)]
    except KeyError:
        close = difflib.get_close_matches(str(tok), DType.__members__, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        known = ", ".join(DType.__members__)
        raise _err(f"unknown dtype {str(tok)!r}{hint} (known dtypes: {known})", tok) from None


def _global_name(tok: Token) -> str:
    """The name of `@name` or `@"quoted name"` (JSON)."""
    text = str(tok)[1:]
    if not text.startswith('"'):
        return text
    try:
        name = json.loads(text)
    except json.JSONDecodeError as e:
        raise _err(f"bad quoted name @{text}: {e.msg}", tok) from None
    if not name:
        raise _err("a name cannot be empty", tok)
    return name


def _is_dtype_key(key: str) -> bool:
    return key == "dtype" or key.endswith("_dtype")


_KEYWORDS = {"true": True, "false": False, "none": None, "inf": float("inf"), "nan": float("nan")}


@dataclass
class _OpLine:
    results: list[Token]
    opcode: Token
    weight: Token | None
    operands: list[Token] | None
    attrs: dict[str, Any] | None
    types: list[TensorType]


@dataclass
class _GraphText:
    name: Token
    params: list[tuple[Token, TensorType]]
    ops: list[_OpLine]
    ret: Token
    outputs: list[Token]


class _ToIR(Transformer):
    """Run inline by the LALR parser: each callback gets its rule's children already converted."""

    def __init__(self) -> None:
        super().__init__(visit_tokens=False)
        self.last_name: Token | None = None  # the most recent bare name value (for dtype errors)

    # graph structure
    def graph(self, c):
        _, name, *rest = c
        ret = rest.pop()
        params = [p for p in rest if isinstance(p, tuple)]
        ops = [o for o in rest if isinstance(o, _OpLine)]
        return _GraphText(name, params, ops, ret[0], ret[1])

    def param(self, c):
        return (c[0], c[1])

    def op(self, c):
        i = 0
        while c[i].type == "VALUE":
            i += 1
        results, (opcode, weight, operands, attrs), types = c[:i], c[i:i + 4], c[i + 4:]
        return _OpLine(results, opcode, weight, operands, attrs, types)

    def operands(self, c):
        return list(c)

    def attrs(self, c):
        return self.dict(c)

    def ret(self, c):
        return (c[0], list(c[1:]))

    # types
    def type(self, c):
        tok, *dims, enc = c
        if len(dims) > MAX_RANK:
            raise _err(f"a type of rank {len(dims)}: at most {MAX_RANK} dims", tok)
        try:
            return TensorType(tuple(dims), _dtype(tok), enc)
        except (TypeError, ValueError) as e:
            raise _err(f"bad type: {e}", tok) from None

    def encoding(self, c):
        tok, *fields = c
        kind = str(tok)[1:]
        cls = ENCODINGS.get(kind)
        if cls is None:
            raise _err(f"unknown encoding #{kind}; known encodings: {', '.join('#' + k for k in ENCODINGS)}", tok)
        values = dict(fields)
        try:
            return cls(**{k: freeze(v) for k, v in values.items()})
        except TypeError as e:
            known = ", ".join(cls.__dataclass_fields__)
            raise _err(f"bad encoding #{kind}: {e} (fields: {known})", tok) from None

    def dim_int(self, c):
        tok = c[0]
        if not tok.isdigit():
            raise _err(f"a dimension must be an integer, a symbol or a (expression), not {str(tok)!r}", tok)
        if len(tok) > MAX_DIM_DIGITS or int(tok) > MAX_DIM:
            raise _err(f"dimension {str(tok)[:24]}... is larger than {MAX_DIM}", tok)
        return int(tok)

    def dim_sym(self, c):
        return sym(str(c[0]))

    def dim_expr(self, c):
        d = self.expr(c)
        problem = dim_problem(d)
        if problem:
            raise _err(problem, c[0])
        return d

    # attribute values
    def field(self, c):
        key, value = c
        if _is_dtype_key(str(key)) and isinstance(value, sympy.Symbol):
            _dtype(self.last_name or key)  # raises: not a dtype name
        return (str(key), value)

    def number(self, c):
        text = str(c[0])
        if len(text) > MAX_NUMBER_CHARS:
            raise _err(f"a number of more than {MAX_NUMBER_CHARS} characters ({text[:24]}...)", c[0])
        if text.isdigit():
            return int(text)
        return float(text)

    def neg_number(self, c):
        return -self.number(c)

    def name(self, c):
        tok = self.last_name = c[0]
        text = str(tok)
        if text in _KEYWORDS:
            return _KEYWORDS[text]
        if text in DType.__members__:
            return DType[text]
        return sym(text)

    def neg_name(self, c):
        tok = c[0]
        if str(tok) != "inf":
            raise _err(f"expected a number or inf after '-', got {str(tok)!r}", tok)
        return float("-inf")

    def string(self, c):
        try:
            return json.loads(c[0])
        except json.JSONDecodeError as e:
            raise _err(f"bad string literal {str(c[0])}: {e.msg}", c[0]) from None

    def opref(self, c):
        return OperandRef(int(c[0][1:]))

    def expr(self, c):
        tok = self.last_name = c[0]
        try:
            return parse_dim_expr(str(tok)[1:-1])
        except DimExprError as e:
            raise _err(str(e), tok) from None

    def list(self, c):
        return list(c)

    def dict(self, c):
        return dict(c)


_CACHE_DIR: list[Path | Callable[[], Path | None] | None] = [None]


def use_parser_cache(directory: Path | Callable[[], Path | None] | None) -> None:
    """Keep lark's analysed grammar (its LALR tables) in `directory`, so a new process builds the parser in
    ~30 ms instead of ~0.5 s. Lark reads the file back with pickle and checks it against the grammar's
    hash: pass only a private directory of this user (the runtime passes the kernel cache's,
    `codegen.loader.private_dir`), or a function giving it, called only when lark is first needed (an
    artifact's canonical text never is: `reader.py`). None: no cache."""
    if _CACHE_DIR[0] != directory:
        _CACHE_DIR[0] = directory
        _lark.cache_clear()


@functools.cache
def _lark() -> Lark:
    d = _CACHE_DIR[0]
    d = d() if callable(d) else d
    return Lark(_GRAMMAR.read_text(), parser="lalr", lexer="contextual", start=["graph", "type", "value"],
                transformer=_ToIR(), maybe_placeholders=True, cache=str(d / "ir-grammar.lark-cache") if d else False)


def _parse(text: str, start: str) -> Any:
    if not isinstance(text, str):
        raise IRParseError(f"IR text must be a str, got {type(text).__name__}")
    check_nesting(text)
    parser = _lark()
    try:
        return parser.parse(text, start=start)
    except IRParseError:
        raise
    except lark.exceptions.VisitError as e:  # a transformer callback failed (should not happen)
        if isinstance(e.orig_exc, IRParseError):
            raise e.orig_exc from None
        raise
    except lark.exceptions.UnexpectedInput as e:
        raise syntax_error(e, text, parser) from None


# -- public API -----------------------------------------------------------------------------------


def parse_type(text: str) -> TensorType:
    """A type, as `print_type` prints it: `f32[s0, 128]`, `f32[]`, `f4e2m1[16, 64] #quantized<...>`."""
    return _parse(text, "type")


def parse_value(text: str) -> Any:
    """An attribute value, as `print_value` prints it; lists come back as tuples (as in `op.attrs`)."""
    return freeze(_parse(text, "value"))


def parse_dim(text: str) -> Any:
    """A dimension: `128`, `s0` or `(s0 - 1)` (as `print_dim` prints it)."""
    t = parse_type(f"f32[{text}]")
    if t.rank != 1:
        raise IRParseError(f"expected one dimension, got {text!r}")
    return t.shape[0]


def parse_graph(text: str, weights: dict[str, Weight | torch.Tensor] | None = None) -> Graph:
    """A graph, as `print_graph` prints it. `weights`, if given, fill the graph's weight table, and
    a `const` of a plain (unencoded) one must have the weight's type. `const` ops of weights not
    given still parse (their types come from the text), as the verifier allows."""
    return build_graph(_parse(text, "graph"), weights)


def build_graph(g: _GraphText, weights: dict[str, Weight | torch.Tensor] | None = None) -> Graph:
    """The Graph of a read graph text (lark's, or `reader.py`'s for the canonical form): the same checks."""
    graph = Graph(_global_name(g.name))
    if weights is not None:
        for wname, w in weights.items():
            try:
                graph.add_weight(wname, w)
            except IRError as e:
                raise IRParseError(f"weights: {e}") from None
    env: dict[str, tuple[Value, Token]] = {}

    def define(tok: Token, value: Value) -> None:
        name = str(tok)[1:]
        if name in env:
            first = env[name][1]
            raise _err(f"value %{name} is defined twice (first at line {first.line}, column {first.column})", tok)
        graph.rename_value(value, name)
        env[name] = (value, tok)

    def use(tok: Token) -> Value:
        name = str(tok)[1:]
        if name not in env:
            close = difflib.get_close_matches(name, env, n=3)
            hint = f"; did you mean {', '.join('%' + n for n in close)}?" if close else ""
            raise _err(f"undefined value %{name} used at line {tok.line}{hint}", tok)
        return env[name][0]

    for tok, t in g.params:
        define(tok, graph.add_input(None, t))

    for line in g.ops:
        _add_op(graph, line, use, define, weights)

    graph.set_outputs([use(tok) for tok in g.outputs])
    return graph


def _add_op(graph: Graph, line: _OpLine, use, define, weights) -> None:
    opcode, tok = str(line.opcode), line.opcode
    opdef = OPS.get(opcode)
    if opdef is None:
        close = difflib.get_close_matches(opcode, OPS, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; use `extern` for torch ops"
        raise _err(f"unknown op {opcode!r}{hint}", tok)
    if len(line.results) != len(line.types):
        raise _err(f"{opcode}: {len(line.results)} result(s) but {len(line.types)} result type(s)", tok)
    if opdef.num_results >= 0 and len(line.results) != opdef.num_results:
        raise _err(f"{opcode} has {opdef.num_results} result(s), not {len(line.results)}", tok)
    attrs = dict(line.attrs or {})
    if opcode == "const":
        if line.weight is None:
            raise _err("const needs a weight: `const @name : type`", tok)
        if line.operands is not None:
            raise _err("const takes no operand list: `const @name : type`", tok)
        if "weight" in attrs:
            raise _err("const names its weight as `const @name`, not as an attribute", tok)
        attrs["weight"] = _global_name(line.weight)
        _check_weight(graph, line, attrs["weight"], weights)
    else:
        if line.weight is not None:
            raise _err(f"only const names a weight (@name); {opcode} takes operands (%x, ...)", line.weight)
        if line.operands is None:
            raise _err(f"{opcode} needs an operand list: `{opcode}(%a, ...)`", tok)
    operands = [use(v) for v in line.operands or ()]
    try:
        op = graph.add_op(opcode, operands, attrs, result_types=list(line.types))
    except IRError as e:
        raise _err(str(e), tok) from None
    for rtok, value in zip(line.results, op.results, strict=True):
        define(rtok, value)


def _check_weight(graph: Graph, line: _OpLine, name: str, weights) -> None:
    if weights is None or name not in graph.weights:  # a const may name a missing weight (as verify allows)
        return
    declared = line.types[0]
    if graph.weights[name].encoding is None and declared.encoding is None and declared.is_static:
        (actual,) = graph.infer_types("const", [], {"weight": name})
        if not declared.same_as(actual):
            from fxforge.ir.printer import print_type

            raise _err(f"weight @{name} has type {print_type(actual)}, the text says {print_type(declared)}",
                       line.weight)
