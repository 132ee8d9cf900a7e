"""Pointwise expression trees -> Triton source lines, and the sympy index math kernels load through.

Two jobs, both text-only (no triton import):
- `IndexSpace`: a kernel's iteration domain (the group's output shape, dims as sympy expressions of
  the graph's size symbols). It names one index variable per non-unit dim, decomposed from a flat
  index (`_offs // P % D`), and prints each operand's load offset `sum(idx_d * stride_d)` with
  stride 0 on broadcast dims. Strides are sympy: runtime kernel arguments (`x_st1`) for tensors the
  host hands over (views, inputs, template outputs), or computed from the shape for the contiguous
  buffers our own kernels write, which sympy folds back to the flat index when it can.
- the printers every emitter shares: `pyexpr` (sympy -> Python), `literal`, `held` (the compute type
  of a dtype), `ident` (IR names -> Python identifiers), `TL_DTYPES`, and `PRELUDE`, the portable
  device helpers (`_tanh`, `_pow`, `_imod`, `_ifloordiv`; the assembler keeps the ones a module uses).
Pointwise ops are rendered by `expr_ops.py` (one renderer per op).
"""

from __future__ import annotations

import keyword
import math
import re
from typing import Any

import sympy
from sympy.printing.str import StrPrinter

from fxforge.ir.dtypes import DType
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


class _HostPrinter(_Printer):
    """Host Python (run()'s sizes): also max / min (a sliding window's `max(0, s0 - w)` start)."""

    def _print_Max(self, expr):
        return f"max({', '.join(self._print(a) for a in expr.args)})"

    def _print_Min(self, expr):
        return f"min({', '.join(self._print(a) for a in expr.args)})"


def pyexpr(expr: Any, host: bool = False) -> str:
    """An int or sympy expression as Python source (`host`: run()'s Python, where max / min exist)."""
    if isinstance(expr, int):
        return str(expr)
    return (_HostPrinter() if host else _Printer()).doprint(sympy.sympify(expr))


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
        r = sympy.Symbol("_r")
        c = self.idx[-1] if self.rows else None  # the column index (0 when there is one column)
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
        lead = set(self.index_symbols()) | {r, self.flat_symbol}
        zeros = []
        if not free & lead:
            zeros.append("_r" if self.rows else "_offs")
        if self.rows and not (isinstance(c, sympy.Symbol) and c in free):  # span the columns too
            zeros.append("_c")
        if zeros:
            z = f"({' + '.join(zeros)}) * 0" if len(zeros) > 1 else f"{zeros[0]} * 0"
            text = z if total == 0 else f"{text} + {z}"
        return text

    def index_symbols(self) -> list[sympy.Symbol]:
        return [i for i in self.idx if isinstance(i, sympy.Symbol)]
