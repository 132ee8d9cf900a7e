"""IR text: the fast reader of the printer's canonical form (an artifact's `graph.fxir`, unedited).

    read_graph(text, weights=None) -> Graph     # same result as parse_graph(text, weights)
    read_type("f4e2m1[16, 64] #quantized<...>") -> TensorType
    read_dim("(s0 - 1)") -> dim

`fxforge.load` reads an artifact's graph on every start; lark's LALR parse of a 400-line graph costs
~50 ms idle (~0.2 s on a loaded machine) plus its tables, while this hand-written line reader takes a
few ms. It reads only the layout `printer.py` writes (one op a line, `, ` between items, no comments).

Decisions:
- lark's grammar (`grammar.lark`, `parser.py`) stays the definition of the syntax and the text stays
  the source of truth: every result of this reader is proved by printing it back, and it is used only
  when that print is exactly the text read. Any other text (comments, other spacing, a syntax or
  semantic error, a broken bound) goes to the lark parser, which accepts it or raises its
  line/column `IRParseError`; so the answer is always lark's, this reader only saves the work.
- The same bounds as the parser (`text_bounds.py`, `dim_expr.py`), the same value conversions and the
  same graph building (`parser.build_graph`), so a text lark refuses is never accepted here.
- `STATS` counts fast reads and fallbacks (with the last reason), so a test and the load benchmark see
  which path ran; a fallback is slower, never different.
"""

from __future__ import annotations

import json
import re
from typing import Any

import sympy
import torch

from fxforge.ir.dim_expr import DimExprError, dim_problem, parse_dim_expr
from fxforge.ir.dtypes import DType
from fxforge.ir.errors import IRError
from fxforge.ir.graph import Graph, Weight, freeze
from fxforge.ir.optable import OperandRef
from fxforge.ir.parser import _KEYWORDS, _GraphText, _is_dtype_key, _OpLine, build_graph, parse_dim, parse_graph, parse_type
from fxforge.ir.printer import print_dim, print_graph, print_type
from fxforge.ir.text_bounds import MAX_DIM, MAX_DIM_DIGITS, MAX_NESTING, MAX_NUMBER_CHARS, MAX_RANK, check_nesting
from fxforge.ir.types import ENCODINGS, TensorType, sym

__all__ = ["read_graph", "read_type", "read_dim", "STATS"]

STATS: dict[str, Any] = {"fast": 0, "fallback": 0, "last_fallback": None}

# the grammar's tokens (grammar.lark), anchored at the reader's position
_VALUE = re.compile(r"%[A-Za-z0-9_.]+")
_GLOBAL = re.compile(r'@(?:[A-Za-z0-9_.\-]+|"(?:[^"\\\n]|\\.)*")')
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
_STRING = re.compile(r'"([^"\\\n]|\\.)*"')
_OPREF = re.compile(r"\$[0-9]+")
_EXPR_BODY = r"[\w +\-*\/.,]"
_EXPR = re.compile(r"\((?:X|\((?:X|\((?:X|\((?:X|\((?:X|\(X*\))*\))*\))*\))*\))*\)".replace("X", _EXPR_BODY))


class _Tok(str):
    """A token's text for `parser.build_graph` (which reads `.line`/`.column` only for error messages;
    on an error this reader hands the text to lark, which says where). Lighter than lark's Token."""

    line = column = type = None


class _Unread(Exception):
    """Not the canonical form (or not readable here): the lark parser decides."""


class _Cursor:
    """One line of text and a position in it; every miss is `_Unread`."""

    def __init__(self, text: str, line: int, pos: int = 0) -> None:
        self.text, self.line, self.pos = text, line, pos

    def at(self, lit: str) -> bool:
        return self.text.startswith(lit, self.pos)

    def lit(self, lit: str) -> None:
        if not self.text.startswith(lit, self.pos):
            raise _Unread(f"line {self.line}: expected {lit!r} at column {self.pos + 1}")
        self.pos += len(lit)

    def token(self, pattern: re.Pattern, kind: str = "") -> str:
        m = pattern.match(self.text, self.pos)
        if m is None:
            raise _Unread(f"line {self.line}: expected {kind or pattern.pattern} at column {self.pos + 1}")
        self.pos = m.end()
        return m.group()

    def tok(self, pattern: re.Pattern, kind: str) -> _Tok:
        return _Tok(self.token(pattern, kind))

    def done(self) -> bool:
        return self.pos == len(self.text)


# -- values and types -------------------------------------------------------------------------------

def _number(text: str) -> int | float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Unread("number too long")
    return int(text) if text.isdigit() else float(text)


def _name(text: str) -> Any:
    if text in _KEYWORDS:
        return _KEYWORDS[text]
    return DType[text] if text in DType.__members__ else sym(text)


def _expr(text: str) -> Any:
    try:
        return parse_dim_expr(text[1:-1])
    except DimExprError as e:
        raise _Unread(str(e)) from None


def _items(c: _Cursor, close: str, item, depth: int) -> list:
    out: list = []
    if c.at(close):
        c.pos += 1
        return out
    while True:
        out.append(item(c, depth))
        if c.at(close):
            c.pos += 1
            return out
        c.lit(", ")


def _field(c: _Cursor, depth: int) -> tuple[str, Any]:
    key = c.token(_NAME)
    c.lit("=")
    value = _value(c, depth)
    if _is_dtype_key(key) and isinstance(value, sympy.Symbol):
        raise _Unread(f"{key}={value} is not a dtype")
    return key, value


def _value(c: _Cursor, depth: int) -> Any:
    if depth > MAX_NESTING:
        raise _Unread("nested too deep")
    ch = c.text[c.pos:c.pos + 1]
    if ch == "[":
        c.pos += 1
        return _items(c, "]", _value, depth + 1)
    if ch == "{":
        c.pos += 1
        return dict(_items(c, "}", _field, depth + 1))
    if ch == '"':
        return json.loads(c.token(_STRING))
    if ch == "$":
        return OperandRef(int(c.token(_OPREF)[1:]))
    if ch == "(":
        return _expr(c.token(_EXPR))
    if ch == "-":
        c.pos += 1
        if c.at("inf"):
            c.lit("inf")
            return float("-inf")
        return -_number(c.token(_NUMBER))
    if ch.isdigit():
        return _number(c.token(_NUMBER))
    return _name(c.token(_NAME))


def _dim(c: _Cursor) -> Any:
    ch = c.text[c.pos:c.pos + 1]
    if ch.isdigit():
        text = c.token(_NUMBER)
        if not text.isdigit() or len(text) > MAX_DIM_DIGITS or int(text) > MAX_DIM:
            raise _Unread(f"bad dimension {text[:24]}")
        return int(text)
    if ch == "(":
        d = _expr(c.token(_EXPR))
        if dim_problem(d):
            raise _Unread(dim_problem(d))
        return d
    return sym(c.token(_NAME))


def _type(c: _Cursor) -> TensorType:
    dtype = DType[c.token(_NAME)]
    c.lit("[")
    dims = _items(c, "]", lambda cc, _: _dim(cc), 0)
    if len(dims) > MAX_RANK:
        raise _Unread("rank too large")
    enc = None
    if c.at(" #"):
        c.pos += 2
        cls = ENCODINGS[c.token(_NAME)]
        c.lit("<")
        fields = dict(_items(c, ">", _field, 1))
        enc = cls(**{k: freeze(v) for k, v in fields.items()})
    return TensorType(tuple(dims), dtype, enc)


# -- the graph ----------------------------------------------------------------------------------------

def _op_line(c: _Cursor, types_cache: dict[str, list[TensorType]]) -> _OpLine:
    results = [c.tok(_VALUE, "VALUE")]
    while not c.at(" = "):
        c.lit(", ")
        results.append(c.tok(_VALUE, "VALUE"))
    c.pos += 3
    opcode = c.tok(_NAME, "NAME")
    weight = operands = attrs = None
    if c.at(" @"):
        c.pos += 1
        weight = c.tok(_GLOBAL, "GLOBAL")
    if c.at("("):
        c.pos += 1
        operands = _items(c, ")", lambda cc, _: cc.tok(_VALUE, "VALUE"), 0)
    if c.at(" {"):
        c.pos += 2
        attrs = dict(_items(c, "}", _field, 1))
    c.lit(" : ")
    key = c.text[c.pos:]
    types = types_cache.get(key)
    if types is None:
        types = types_cache[key] = _types_to_end(c)
    c.pos = len(c.text)
    return _OpLine(results, opcode, weight, operands, attrs, list(types))


def _types_to_end(c: _Cursor) -> list[TensorType]:
    types = [_type(c)]
    while not c.done():
        c.lit(", ")
        types.append(_type(c))
    return types


def _graph_text(text: str) -> _GraphText:
    lines = text.split("\n")
    if len(lines) < 3 or lines[-1] != "" or lines[-2] != "}":
        raise _Unread("not a printed graph (it must end with '}' and a newline)")
    head = _Cursor(lines[0], 1)
    head.lit("graph ")
    name = head.tok(_GLOBAL, "GLOBAL")
    head.lit("(")

    def param(cc: _Cursor, _: int) -> tuple[_Tok, TensorType]:
        tok = cc.tok(_VALUE, "VALUE")
        cc.lit(": ")
        return tok, _type(cc)

    params = _items(head, ")", param, 0)
    head.lit(" {")
    if not head.done():
        raise _Unread("text after the graph's '{'")
    types_cache: dict[str, list[TensorType]] = {}
    ops = []
    for i, line in enumerate(lines[1:-3], start=2):
        c = _Cursor(line, i, 2)
        if not line.startswith("  %"):
            raise _Unread(f"line {i} is not an op")
        ops.append(_op_line(c, types_cache))
        if not c.done():
            raise _Unread(f"line {i}: text after the types")
    ret = _Cursor(lines[-3], len(lines) - 2)
    ret_tok = _Tok("return")
    ret.lit("  return")
    outputs = []
    if ret.at(" %"):
        ret.pos += 1
        outputs = [ret.tok(_VALUE, "VALUE")]
        while not ret.done():
            ret.lit(", ")
            outputs.append(ret.tok(_VALUE, "VALUE"))
    return _GraphText(name, params, ops, ret_tok, outputs)


def _fallback(reason: str) -> None:
    STATS["fallback"] += 1
    STATS["last_fallback"] = reason


def read_graph(text: str, weights: dict[str, Weight | torch.Tensor] | None = None) -> Graph:
    """`parse_graph(text, weights)`, without lark when the text is exactly what the printer writes."""
    if isinstance(text, str):
        check_nesting(text)  # lark's first check, with its error
        try:
            graph = build_graph(_graph_text(text), weights)
            if print_graph(graph) == text:
                STATS["fast"] += 1
                return graph
            _fallback("the graph read prints differently")
        except (_Unread, IRError, KeyError, ValueError, TypeError, IndexError) as e:
            # not canonical, or an error: lark's parse decides, and says where with its own message
            _fallback(f"{type(e).__name__}: {e}")
    return parse_graph(text, weights)


def _read_one(text: str, read: Any, printer: Any, parse: Any, what: str) -> Any:
    """`read` the one printed item `text` proved by printing it back, else lark's `parse` (which decides)."""
    try:
        c = _Cursor(text, 1)
        item = read(c)
        if c.done() and printer(item) == text:
            return item
    except (_Unread, KeyError, ValueError, TypeError, IndexError) as e:
        _fallback(f"{what}: {type(e).__name__}: {e}")
    return parse(text)


def read_type(text: str) -> TensorType:
    """`parse_type(text)`, without lark for a printed type."""
    return _read_one(text, _type, print_type, parse_type, "type")


def read_dim(text: str) -> Any:
    """`parse_dim(text)`, without lark for a printed dim."""
    return _read_one(text, _dim, print_dim, parse_dim, "dim")
