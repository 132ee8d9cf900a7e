"""Torch's symbolic sizes -> the IR's symbols.

torch.export and dynamo name dynamic sizes `s27`, `s77`, ... and build expressions with torch's own
sympy functions (FloorDiv, CeilDiv, Mod, ...). The IR uses plain sympy over `sym("s0")`, `sym("s1")`
in order of first appearance, so IR text is stable across runs.
"""

from __future__ import annotations

import sympy
import torch
import torch.utils._sympy.functions as tf

from fxforge.ir.types import Dim, normalize_dim, sym

_PLAIN = {
    tf.FloorDiv: lambda a, b: sympy.floor(a / b),
    tf.CeilDiv: lambda a, b: sympy.ceiling(a / b),
    tf.CleanDiv: lambda a, b: a / b,
    tf.IntTrueDiv: lambda a, b: a / b,
    tf.Mod: sympy.Mod,
    tf.PythonMod: sympy.Mod,
    tf.Max: sympy.Max,
    tf.Min: sympy.Min,
    tf.PowByNatural: sympy.Pow,
    tf.ModularIndexing: lambda x, d, m: sympy.Mod(sympy.floor(x / d), m),
    tf.TruncToInt: lambda x: x,
    tf.FloorToInt: sympy.floor,
    tf.CeilToInt: sympy.ceiling,
    tf.Identity: lambda x: x,
}


class SymbolTable:
    """Renames torch's size symbols to s0, s1, ... and converts its expressions to plain sympy."""

    def __init__(self) -> None:
        self.mapping: dict[sympy.Symbol, sympy.Symbol] = {}
        self._exprs: dict[sympy.Expr, Dim] = {}  # torch's expression -> its IR dim, once converted

    def symbol(self, torch_symbol: sympy.Symbol) -> sympy.Symbol:
        if torch_symbol not in self.mapping:
            self.mapping[torch_symbol] = sym(f"s{len(self.mapping)}")
        return self.mapping[torch_symbol]

    def expr(self, e: sympy.Expr) -> Dim:
        """Memoised: a graph repeats a handful of size expressions in every node's shape (the
        mapping only grows, so a converted expression never changes)."""
        done = self._exprs.get(e)
        if done is None:
            done = self._exprs[e] = self._convert(e)
        return done

    def _convert(self, e: sympy.Expr) -> Dim:
        for fn, plain in _PLAIN.items():
            if e.has(fn):
                e = e.replace(fn, plain)
        for s in sorted(e.free_symbols, key=str):
            self.symbol(s)
        return normalize_dim(e.xreplace(self.mapping))

    def dim(self, d) -> Dim:
        """An int, a torch.SymInt, or a sympy expression -> an IR dim."""
        if isinstance(d, torch.SymInt):
            return self.expr(d.node.expr)
        if isinstance(d, sympy.Expr):
            return self.expr(d)
        return int(d)

    def shape(self, shape) -> tuple[Dim, ...]:
        return tuple(self.dim(d) for d in shape)
