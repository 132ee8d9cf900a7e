"""Symbolic dims in IR text: the safe reading of a parenthesised sympy expression such as `(s0 - 1)`.

Only names, numbers, `+ - * / **`, commas and parentheses are allowed, and a name followed by `(` must
be a known function, so IR text can never run code through sympy; every other name is `sym(name)`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import sympy
from sympy.parsing.sympy_parser import parse_expr, standard_transformations

from fxforge.ir.types import normalize_dim, sym

# Functions that may appear in a dim expression (what sympy prints for integer size arithmetic).
_FUNCS = {
    name: getattr(sympy, name)
    for name in ("floor", "ceiling", "Mod", "Max", "Min", "Abs", "sign", "sqrt", "log", "exp", "Rational")
}
_EXPR_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
                         r"|(?P<op>\*\*|[-+*/(),]))")
_GLOBALS = {"Integer": sympy.Integer, "Float": sympy.Float, "Rational": sympy.Rational, "Symbol": sympy.Symbol,
            "__builtins__": {}}


class DimExprError(ValueError):
    pass


@functools.lru_cache(maxsize=4096)
def parse_dim_expr(text: str) -> Any:
    """The sympy expression of a dim's text (without its outer parens). Only names, numbers,
    + - * / ** , and parentheses are allowed; a name followed by `(` must be a known function
    (`_FUNCS`), any other name is the symbol `sym(name)`."""
    pos, names, tokens = 0, {}, []
    while pos < len(text):
        m = _EXPR_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise DimExprError(f"unexpected {text[pos:].strip()[0]!r} in dimension expression ({text})")
        pos = m.end()
        tokens.append(m)
    for i, m in enumerate(tokens):
        name = m.group("name")
        if name is None:
            continue
        called = i + 1 < len(tokens) and tokens[i + 1].group("op") == "("
        if called:
            if name not in _FUNCS:
                known = ", ".join(sorted(_FUNCS))
                raise DimExprError(f"unknown function {name!r} in dimension expression ({text}); known: {known}")
            names[name] = _FUNCS[name]
        else:
            names[name] = sym(name)
    try:
        expr = parse_expr(text, local_dict=names, global_dict=dict(_GLOBALS), transformations=standard_transformations)
    except Exception as e:  # noqa: BLE001  (sympy raises many kinds on malformed text)
        raise DimExprError(f"cannot read dimension expression ({text}): {type(e).__name__}: {e}") from None
    if not isinstance(expr, sympy.Expr):
        raise DimExprError(f"dimension expression ({text}) is not an arithmetic expression")
    return normalize_dim(expr)
