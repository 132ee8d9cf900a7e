"""Pointwise expression trees -> Triton source lines, and the sympy index math kernels load through.

Two jobs, both text-only (no triton import):
- `IndexSpace`: a kernel's iteration domain (the group's output shape, dims as sympy expressions of
  the graph's size symbols). It names one index variable per non-unit dim, decomposed from a flat
  index (`_offs // P % D`), and prints each operand's load offset `sum(idx_d * stride_d)` with
  stride 0 on broadcast dims. Strides are sympy: runtime kernel arguments (`x_st1`) for tensors the
  host hands over (views, inputs, template outputs), or computed from the shape for the contiguous
  buffers our own kernels write, which sympy folds back to the flat index when it can.
- `ExprBuilder`: prints ops of the op table's pointwise category as Triton expressions, one line per
  value. Values are held in a compute type (fp32 for f16/bf16; loads convert right away, because the
  interpreter's bf16 arithmetic is wrong), every operand is cast to the op's compute type explicitly,
  and f16/bf16 results are rounded per op like torch. Only portable `tl` functions are used
  (`libdevice` fails in the interpreter): tanh, pow, GELU are spelled out by helpers in `PRELUDE`.
"""

from __future__ import annotations

import keyword
import math
import re
from typing import Any

import sympy
import torch
from sympy.printing.str import StrPrinter

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Op, Value
from fxforge.ir.types import Dim

TL_DTYPES = {
    DType.f64: "tl.float64", DType.f32: "tl.float32", DType.f16: "tl.float16", DType.bf16: "tl.bfloat16",
    DType.i64: "tl.int64", DType.i32: "tl.int32", DType.i16: "tl.int16", DType.i8: "tl.int8",
    DType.u8: "tl.uint8", DType.bool: "tl.int1",
}

# Device helpers every generated module starts with (portable tl ops only).
PRELUDE = '''
@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1); exact limits at +-inf, no libdevice
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _pow(a, b):
    # torch.pow for floats: |a|^b with the sign of a for odd integer b, NaN for a < 0 and fractional b
    r = tl.exp2(b * tl.log2(tl.abs(a)))
    bi = tl.floor(b)
    is_int = bi == b
    odd = is_int & ((bi - 2.0 * tl.floor(bi * 0.5)) == 1.0)
    r = tl.where((a < 0) & odd, -r, r)
    r = tl.where((a < 0) & (bi != b), float("nan"), r)
    return tl.where(b == 0, 1.0, r)


@triton.jit
def _imod(a, b):
    # Python/torch remainder for integers (sign of the divisor); Triton's % is C's
    r = a % b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)


@triton.jit
def _ifloordiv(a, b):
    # floor division for integers; Triton's // truncates like C
    q = a // b
    return tl.where(((a % b) != 0) & ((a < 0) != (b < 0)), q - 1, q)
'''

RESERVED = frozenset({"torch", "triton", "tl", "math", "run", "weights", "device", "F", "DType", "OPS", "OperandRef",
                      "sympy", "next_pow2", "row_blocks"})
_GENERATED = re.compile(r"(k|buf)[0-9]+(_.*)?")


def ident(name: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A Python identifier for an IR value name (`add_4` stays, `10` becomes `v_10`)."""
    out = name.replace(".", "_")
    if (not out.isidentifier() or keyword.iskeyword(out) or out in RESERVED or out.startswith("_") or out in taken
            or _GENERATED.fullmatch(out)):
        out = "v_" + out
    return out


class _Printer(StrPrinter):
    """sympy -> Python/Triton integer arithmetic (powers as products)."""

    def _print_Pow(self, expr):
        base, exp = expr.as_base_exp()
        if exp.is_Integer and int(exp) > 0:
            return "*".join([self.parenthesize(base, 100)] * int(exp))
        raise ValueError(f"cannot print index expression {expr}")


def pyexpr(expr: Any) -> str:
    """An int or sympy expression as Python source."""
    if isinstance(expr, int):
        return str(expr)
    return _Printer().doprint(sympy.sympify(expr))


def held(dtype: DType) -> DType:
    """The type a value is computed and kept in inside a kernel."""
    return DType.f32 if dtype in (DType.f16, DType.bf16) else dtype


def literal(value: Any, dtype: DType) -> str:
    """A Python literal for `value` seen as `dtype`."""
    if dtype == DType.bool:
        return "True" if value else "False"
    if dtype.is_float:
        v = float(value)
        if math.isnan(v):
            return 'float("nan")'
        if math.isinf(v):
            return 'float("inf")' if v > 0 else 'float("-inf")'
        return repr(v)
    return str(int(value))


class IndexSpace:
    """The iteration domain of a kernel and the offset of each operand inside it.

    `flat` is the flat index variable and `dims` the domain shape; `rows`: the row kernel's form, where
    the last dim is indexed by `_c` (columns) and the leading dims are decomposed from `_r` (rows)."""

    def __init__(self, dims: tuple[Dim, ...], rows: bool = False) -> None:
        self.dims = [sympy.sympify(d) for d in dims]
        self.rows = rows
        self.index_lines: list[str] = []
        self.idx: list[sympy.Expr | int] = []
        lead = self.dims[:-1] if rows else self.dims
        flat = "_r" if rows else "_offs"
        first = next((i for i, d in enumerate(lead) if d != 1), None)
        for i, d in enumerate(lead):
            if d == 1:
                self.idx.append(0)
                continue
            sym = sympy.Symbol(f"_i{i}", integer=True, nonnegative=True)
            p = sympy.Mul(*lead[i + 1:])
            text = flat if p == 1 else f"{flat} // ({pyexpr(p)})"
            if i != first:
                text = f"({text}) % ({pyexpr(d)})" if p != 1 else f"{flat} % ({pyexpr(d)})"
            self.index_lines.append(f"_i{i} = {text}")
            self.idx.append(sym)
        if rows:
            self.idx.append(sympy.Symbol("_c", integer=True, nonnegative=True) if self.dims[-1] != 1 else 0)
        self.flat_symbol = sympy.Symbol(flat)

    def contiguous_strides(self, shape: tuple[Dim, ...]) -> list[sympy.Expr]:
        s = [sympy.sympify(d) for d in shape]
        return [sympy.Mul(*s[i + 1:]) for i in range(len(s))]

    def broadcast(self, shape: tuple[Dim, ...]) -> list[bool]:
        """Per domain dim: is the operand broadcast along it (size 1 there, or missing)?"""
        pad = len(self.dims) - len(shape)
        out = []
        for i, d in enumerate(self.dims):
            s = sympy.sympify(shape[i - pad]) if i >= pad else sympy.Integer(1)
            out.append(s == 1 and d != 1)
        return out

    def offset(self, shape: tuple[Dim, ...], strides: list[Any] | None, subs: dict | None = None) -> str:
        """Offset expression of an operand of `shape` with `strides` (sympy, per operand dim; None:
        contiguous). Dims the operand is broadcast along get stride 0. `subs` shifts index variables
        (an operand of a fused `cat` is read at `i_d - start`). The result always spans the whole
        tile (a block of pointers, never a scalar or a single row/column)."""
        pad = len(self.dims) - len(shape)
        r, c = sympy.Symbol("_r"), sympy.Symbol("_c")
        if not subs and strides is None and pad == 0 and all(sympy.sympify(a) == b for a, b in zip(shape, self.dims)):
            total = (r * self.dims[-1] + self.idx[-1]) if self.rows else self.flat_symbol
        else:
            strides = self.contiguous_strides(shape) if strides is None else strides
            total = sympy.Integer(0)
            bcast = self.broadcast(shape)
            for i in range(len(self.dims)):
                if i < pad or bcast[i] or self.idx[i] == 0:
                    continue
                total += self.idx[i] * sympy.sympify(strides[i - pad])
            total = sympy.expand(total.xreplace(subs) if subs else total)
        text = pyexpr(total)
        free = total.free_symbols if isinstance(total, sympy.Expr) else set()
        lead = {s for s in self.index_symbols() if s != c} | {r, self.flat_symbol}
        zeros = []
        if not free & lead:
            zeros.append("_r" if self.rows else "_offs")
        if self.rows and c not in free:
            zeros.append("_c")
        if zeros:
            z = f"({' + '.join(zeros)}) * 0" if len(zeros) > 1 else f"{zeros[0]} * 0"
            text = z if total == 0 else f"{text} + {z}"
        return text

    def index_symbols(self) -> list[sympy.Symbol]:
        return [i for i in self.idx if isinstance(i, sympy.Symbol)]


class ExprBuilder:
    """Prints pointwise ops as lines of a kernel body. `refs` maps id(Value) -> (text, held dtype,
    literal value or None)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.refs: dict[int, tuple[str, DType, Any]] = {}

    def bind(self, value: Value, text: str, dtype: DType, lit: Any = None) -> None:
        self.refs[id(value)] = (text, dtype, lit)

    def cv(self, value: Value, to: DType) -> str:
        """The operand as an expression of compute type `to`."""
        text, have, lit = self.refs[id(value)]
        if lit is not None:
            return literal(lit, to)
        if have == to:
            return text
        if to == DType.bool:
            return f"({text} != 0)"
        return f"{text}.to({TL_DTYPES[to]})"

    def emit(self, op: Op, name: str) -> None:
        """One line `name = <expr>` for a pointwise op; binds its result to `name`."""
        r = op.result.type.dtype
        c = held(r)
        text = self._expr(op, c)
        if r in (DType.f16, DType.bf16):  # round per op like torch
            text = f"({text}).to({TL_DTYPES[r]}).to(tl.float32)"
        self.lines.append(f"{name} = {text}")
        self.bind(op.result, name, c)

    def _expr(self, op: Op, c: DType) -> str:
        code, xs = op.opcode, op.operands
        a = (lambda i, t=c: self.cv(xs[i], t))
        flt = c.is_float
        if code == "cast":
            return a(0)
        if code in _UNARY_FLOAT:
            return _UNARY_FLOAT[code].format(a=a(0))
        if code == "neg":
            return f"-{a(0)}" if c != DType.bool else f"({a(0)} == 0)"
        if code == "abs":
            return f"tl.abs({a(0)})" if c != DType.bool else a(0)
        if code == "relu":
            return f"tl.where({a(0)} < 0, 0, {a(0)})"
        if code in ("floor", "ceil"):
            return f"tl.{code}({a(0)})" if flt else a(0)
        if code == "logical_not":
            return f"({self.cv(xs[0], DType.bool)} == 0)"
        if code == "bitwise_not":
            return f"({a(0)} == 0)" if c == DType.bool else f"~{a(0)}"
        if code == "gelu":
            x = a(0)
            if op.attrs["approximate"] == "tanh":
                return f"0.5 * {x} * (1.0 + _tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))"
            return f"0.5 * {x} * (1.0 + tl.math.erf({x} * 0.7071067811865476))"
        if code == "clamp":
            x, lo, hi = a(0), op.attrs["min"], op.attrs["max"]
            if lo is not None:
                x = f"tl.maximum({x}, {literal(lo, c)})"
            if hi is not None:
                x = f"tl.minimum({x}, {literal(hi, c)})"
            return x
        if code == "where":
            return f"tl.where({self.cv(xs[0], DType.bool)}, {a(1)}, {a(2)})"
        if code in _COMPARE:
            t = held(_promote(xs[0].type.dtype, xs[1].type.dtype))
            return f"{self.cv(xs[0], t)} {_COMPARE[code]} {self.cv(xs[1], t)}"
        if code in ("logical_and", "logical_or"):
            sym = "&" if code == "logical_and" else "|"
            return f"{self.cv(xs[0], DType.bool)} {sym} {self.cv(xs[1], DType.bool)}"
        if code in ("bitwise_and", "bitwise_or", "bitwise_xor"):
            return f"{a(0)} {_BITWISE[code]} {a(1)}"
        if code in ("add", "sub", "mul") and c == DType.bool:
            return f"{a(0)} {'&' if code == 'mul' else '|'} {a(1)}"
        if code in ("add", "sub", "mul"):
            return f"{a(0)} {_ARITH[code]} {a(1)}"
        if code in ("maximum", "minimum"):
            return f"tl.{code}({a(0)}, {a(1)})"
        if code == "div":
            mode = op.attrs["rounding_mode"]
            if mode is None:
                return f"{a(0)} / {a(1)}"
            if mode == "floor":
                return f"tl.floor({a(0)} / {a(1)})" if flt else f"_ifloordiv({a(0)}, {a(1)})"
            q = f"({a(0)} / {a(1)})"
            return f"tl.where({q} < 0, tl.ceil({q}), tl.floor({q}))" if flt else f"{a(0)} // {a(1)}"
        if code == "remainder":
            return f"{a(0)} - tl.floor({a(0)} / {a(1)}) * {a(1)}" if flt else f"_imod({a(0)}, {a(1)})"
        if code == "pow":
            lit = self.refs[id(xs[1])][2]
            if lit is not None and float(lit) in _POW_LITERAL:
                return _POW_LITERAL[float(lit)].format(a=a(0))
            base, exp = a(0), a(1)
            if self.refs[id(xs[0])][2] is not None:  # a literal operand becomes a block first
                base = f"tl.zeros_like({exp}) + {base}"
            elif lit is not None:
                exp = f"tl.zeros_like({base}) + {exp}"
            if flt:
                return f"_pow({base}, {exp})"
            return f"_pow(({base}).to(tl.float64), ({exp}).to(tl.float64)).to({TL_DTYPES[c]})"
        raise NotImplementedError(f"no Triton expression for pointwise op {code!r}")


def _promote(a: DType, b: DType) -> DType:
    return DType.from_torch(torch.promote_types(a.torch, b.torch))


_UNARY_FLOAT = {
    "exp": "tl.exp({a})", "log": "tl.log({a})", "log1p": "tl.log(1.0 + {a})", "sqrt": "tl.sqrt({a})",
    "rsqrt": "tl.rsqrt({a})", "sin": "tl.sin({a})", "cos": "tl.cos({a})", "tanh": "_tanh({a})",
    "erf": "tl.math.erf({a})", "sigmoid": "tl.sigmoid({a})", "silu": "{a} * tl.sigmoid({a})",
    "reciprocal": "1.0 / {a}",
}
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_BITWISE = {"bitwise_and": "&", "bitwise_or": "|", "bitwise_xor": "^"}
_ARITH = {"add": "+", "sub": "-", "mul": "*"}
_POW_LITERAL = {
    0.0: "({a} * 0 + 1)", 1.0: "{a}", 2.0: "{a} * {a}", 3.0: "{a} * {a} * {a}", 4.0: "{a} * {a} * {a} * {a}",
    0.5: "tl.sqrt({a})", -0.5: "tl.rsqrt({a})", -1.0: "1.0 / {a}", -2.0: "1.0 / ({a} * {a})",
}
