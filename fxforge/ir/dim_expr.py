"""Symbolic dims in IR text: the safe, bounded reading of a parenthesised expression like `(s0 - 1)`.

The text is read by a small recursive-descent parser of its own that builds the sympy expression
with sympy's constructors; sympy never parses (or sympifies) the text, so IR text cannot run code
or make sympy compute without end. The language is what sympy prints for integer size arithmetic:

    expr  := term (('+' | '-') term)*        term := unary (('*' | '/') unary)*
    unary := ('-' | '+') unary | power       power := atom ('**' unary)?
    atom  := INT | NAME | FUNC '(' expr (',' expr)* ')' | '(' expr ')'

A NAME is the symbol `sym(NAME)`; a FUNC is one of `_FUNCS` (floor, ceiling, Mod, Max, Min, Abs,
sign). Decisions (the bounds, each an `DimExprError` when broken): at most `MAX_TOKENS` tokens and
`MAX_DEPTH` nested parentheses; integer literals of at most `MAX_DIGITS` digits and every constant
the arithmetic produces at most `MAX_CONST` in size; an exponent is a constant integer of size at
most `MAX_EXPONENT` (so no power towers); no division (or Mod) by zero; no float literals; the
result is finite and real.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import sympy

from fxforge.ir.types import normalize_dim, sym

MAX_TOKENS = 256
MAX_DEPTH = 16
MAX_DIGITS = 20
MAX_CONST = 2**64
MAX_EXPONENT = 16

# Functions that may appear in a dim expression (what sympy prints for integer size arithmetic).
_FUNCS: dict[str, tuple[Callable[..., Any], int, int | None]] = {  # name -> (function, min args, max args)
    "floor": (sympy.floor, 1, 1),
    "ceiling": (sympy.ceiling, 1, 1),
    "Mod": (sympy.Mod, 2, 2),
    "Max": (sympy.Max, 1, None),
    "Min": (sympy.Min, 1, None),
    "Abs": (sympy.Abs, 1, 1),
    "sign": (sympy.sign, 1, 1),
}
_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
                    r"|(?P<op>\*\*|[-+*/(),]))")
_BAD = (sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.I)


class DimExprError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise DimExprError(f"unexpected {text[pos:].strip()[0]!r} in dimension expression ({text})")
        pos = m.end()
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        if len(out) > MAX_TOKENS:
            raise DimExprError(f"dimension expression ({text[:40]}...) is longer than {MAX_TOKENS} tokens")
    return out


class _Reader:
    """Recursive descent over the tokens; each step checks the bounds of what it built."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def fail(self, why: str) -> DimExprError:
        return DimExprError(f"cannot read dimension expression ({self.text}): {why}")

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise self.fail("it ends too early")
        tok = self.toks[self.i]
        if want is not None and tok[1] != want:
            raise self.fail(f"expected {want!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def read(self) -> Any:
        if not self.toks:
            raise self.fail("it is empty")
        expr = self.expr()
        if self.i != len(self.toks):
            raise self.fail(f"unexpected {self.toks[self.i][1]!r}")
        return expr

    def expr(self) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH}")
        out = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            out = self.bounded(out + rhs if op == "+" else out - rhs)
        self.depth -= 1
        return out

    def term(self) -> Any:
        out = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()[1]
            rhs = self.unary()
            if op == "/" and rhs == 0:
                raise self.fail("division by zero")
            out = self.bounded(out * rhs if op == "*" else out / rhs)
        return out

    def unary(self) -> Any:
        if self.peek() in ("-", "+"):
            sign = self.take()[1]
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.fail(f"nested deeper than {MAX_DEPTH}")
            value = self.unary()
            self.depth -= 1
            return -value if sign == "-" else value
        return self.power()

    def power(self) -> Any:
        base = self.atom()
        if self.peek() != "**":
            return base
        self.take()
        exp = self.unary()
        if not (isinstance(exp, sympy.Integer) and abs(int(exp)) <= MAX_EXPONENT):
            raise self.fail(f"an exponent must be a constant integer of at most {MAX_EXPONENT} in size, not {exp}")
        if base == 0 and exp < 0:
            raise self.fail("division by zero")
        return self.bounded(base**exp)

    def atom(self) -> Any:
        kind, text = self.take()
        if kind == "num":
            if not text.isdigit():
                raise self.fail(f"{text} is not an integer")
            if len(text) > MAX_DIGITS:
                raise self.fail(f"an integer of more than {MAX_DIGITS} digits")
            return sympy.Integer(int(text))
        if kind == "name":
            if self.peek() == "(":
                return self.call(text)
            return sym(text)
        if text == "(":
            inner = self.expr()
            self.take(")")
            return inner
        raise self.fail(f"unexpected {text!r}")

    def call(self, name: str) -> Any:
        if name not in _FUNCS:
            raise DimExprError(f"unknown function {name!r} in dimension expression ({self.text}); "
                               f"known: {', '.join(sorted(_FUNCS))}")
        fn, lo, hi = _FUNCS[name]
        self.take("(")
        args = [self.expr()]
        while self.peek() == ",":
            self.take()
            args.append(self.expr())
        self.take(")")
        if len(args) < lo or (hi is not None and len(args) > hi):
            raise self.fail(f"{name} takes {lo}..{hi or 'any'} arguments, got {len(args)}")
        if name == "Mod" and args[1] == 0:
            raise self.fail("Mod by zero")
        return self.bounded(fn(*args))

    def bounded(self, value: Any) -> Any:
        if isinstance(value, sympy.Expr) and value.has(*_BAD):
            raise self.fail("it is not a finite real number")
        if isinstance(value, sympy.Number) and abs(value) > MAX_CONST:
            raise self.fail(f"a constant larger than {MAX_CONST}")
        return value


@functools.lru_cache(maxsize=4096)
def parse_dim_expr(text: str) -> Any:
    """The sympy expression of a dim's text (without its outer parens), within the bounds above."""
    expr = _Reader(text).read()
    if not isinstance(expr, sympy.Expr) or expr.has(*_BAD):
        raise DimExprError(f"dimension expression ({text}) is not a finite arithmetic expression")
    return normalize_dim(expr)


def dim_problem(d: Any) -> str | None:
    """Why d cannot be a tensor dimension (None when it can): a negative or non-integer constant,
    or an expression that is provably negative, non-integer or not finite."""
    if isinstance(d, bool):
        return "a dimension cannot be a bool"
    if isinstance(d, int):
        return f"a dimension cannot be negative ({d})" if d < 0 else None
    if not isinstance(d, sympy.Expr):
        return f"a dimension must be an integer or a symbolic expression, not {type(d).__name__}"
    if d.has(*_BAD):
        return f"dimension {d} is not finite"
    if d.is_number:
        return f"dimension {d} is not a non-negative integer"
    if d.is_negative or d.is_integer is False:
        return f"dimension {d} is {'negative' if d.is_negative else 'not an integer'}"
    return None
