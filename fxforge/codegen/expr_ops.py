"""Pointwise ops inside a kernel: one renderer per op (`@renders("exp")`) in `KERNEL_RENDERERS`,
and `ExprBuilder`, which prints a kernel body one `name = <expr>` line per value.

Every op whose `kernel` trait is `pointwise` has a renderer here (tests/codegen/test_renderers.py
checks it), so the partitioner may put any such op in a kernel. Values are held in a compute type
(`expr.held`: fp32 for f16/bf16; loads convert right away, because the interpreter's bf16 arithmetic
is wrong), every operand is cast to the op's compute type explicitly, and f16/bf16 results are
rounded per op like torch. Only portable `tl` functions are used (`libdevice` fails in the
interpreter): tanh, pow, integer division are spelled out by the helpers in `expr.PRELUDE`.

Decisions:
- A renderer gets an `Args` view of the op (operands as expressions of the compute type, their
  literal values, attributes) and returns one expression; adding a pointwise op is one entry in the
  op table and one renderer here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fxforge.codegen.expr import TL_DTYPES, held, literal
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Op, Value
from fxforge.ir.optable import ACTIVATION_PARAMS

Renderer = Callable[["Args"], str]
KERNEL_RENDERERS: dict[str, Renderer] = {}


def renders(*opcodes: str) -> Callable[[Renderer], Renderer]:
    """Register a kernel renderer for these opcodes."""

    def deco(fn: Renderer) -> Renderer:
        for code in opcodes:
            if code in KERNEL_RENDERERS:
                raise ValueError(f"two kernel renderers for {code!r}")
            KERNEL_RENDERERS[code] = fn
        return fn

    return deco


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
        render = KERNEL_RENDERERS.get(op.opcode)
        if render is None:
            raise NotImplementedError(f"no Triton expression for pointwise op {op.opcode!r} (add a @renders entry)")
        text = render(Args(self, op, c))
        if r in (DType.f16, DType.bf16):  # round per op like torch
            text = f"({text}).to({TL_DTYPES[r]}).to(tl.float32)"
        self.lines.append(f"{name} = {text}")
        self.bind(op.result, name, c)


@dataclass
class Args:
    """What a renderer sees: the op, its compute type `c`, and its operands as expressions."""

    b: ExprBuilder
    op: Op
    c: DType

    def __call__(self, i: int, to: DType | None = None) -> str:
        """Operand i as an expression of type `to` (default: the op's compute type)."""
        return self.b.cv(self.op.operands[i], self.c if to is None else to)

    def lit(self, i: int) -> Any:
        """Operand i's literal value (an inlined `full`), else None."""
        return self.b.refs[id(self.op.operands[i])][2]

    @property
    def attrs(self) -> dict[str, Any]:
        return self.op.attrs

    @property
    def flt(self) -> bool:
        return self.c.is_float

    @property
    def boolean(self) -> bool:
        return self.c == DType.bool


def _promote(a: DType, b: DType) -> DType:
    return DType.from_torch(torch.promote_types(a.torch, b.torch))


# -- unary ---------------------------------------------------------------------------------------

def _unary(template: str) -> Renderer:
    return lambda a: template.format(a=a(0))


for _code, _template in {
    "exp": "tl.exp({a})", "log": "tl.log({a})", "log1p": "tl.log(1.0 + {a})", "sqrt": "tl.sqrt({a})",
    "rsqrt": "tl.rsqrt({a})", "sin": "tl.sin({a})", "cos": "tl.cos({a})", "tanh": "_tanh({a})",
    "erf": "tl.math.erf({a})", "sigmoid": "tl.sigmoid({a})", "silu": "{a} * tl.sigmoid({a})",
    "reciprocal": "1.0 / {a}", "relu": "tl.where({a} < 0, 0, {a})",
    "relu2": "tl.where({a} < 0, 0, {a} * {a})", "expm1": "_expm1({a})",
}.items():
    renders(_code)(_unary(_template))


@renders("cast")
def _cast(a: Args) -> str:
    return a(0)


@renders("neg")
def _neg(a: Args) -> str:
    return f"({a(0)} == 0)" if a.boolean else f"-{a(0)}"


@renders("abs")
def _abs(a: Args) -> str:
    return a(0) if a.boolean else f"tl.abs({a(0)})"


@renders("floor", "ceil")
def _round(a: Args) -> str:
    return f"tl.{a.op.opcode}({a(0)})" if a.flt else a(0)


@renders("logical_not")
def _logical_not(a: Args) -> str:
    return f"({a(0, DType.bool)} == 0)"


@renders("bitwise_not")
def _bitwise_not(a: Args) -> str:
    return f"({a(0)} == 0)" if a.boolean else f"~{a(0)}"


@renders("gelu")
def _gelu(a: Args) -> str:
    x = a(0)
    if a.attrs["approximate"] == "tanh":
        return f"0.5 * {x} * (1.0 + _tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))"
    return f"0.5 * {x} * (1.0 + tl.math.erf({x} * 0.7071067811865476))"


@renders("softplus")
def _softplus(a: Args) -> str:
    return f"_softplus({a(0)}, {literal(a.attrs['beta'], a.c)}, {literal(a.attrs['threshold'], a.c)})"


@renders("xielu")
def _xielu(a: Args) -> str:
    """`templates/special_fns.xielu` with the op's scalars as fp32 literals (the GEMM epilogue's math)."""
    scalars = ", ".join(literal(a.attrs[k], a.c) for k in ACTIVATION_PARAMS["xielu"])
    return f"_xielu({a(0)}, {scalars})"


@renders("clamp")
def _clamp(a: Args) -> str:
    x, lo, hi = a(0), a.attrs["min"], a.attrs["max"]
    if lo is not None:
        x = f"tl.maximum({x}, {literal(lo, a.c)})"
    if hi is not None:
        x = f"tl.minimum({x}, {literal(hi, a.c)})"
    return x


# -- binary and ternary --------------------------------------------------------------------------

def _compare(sym: str) -> Renderer:
    def render(a: Args) -> str:
        xs = a.op.operands
        t = held(_promote(xs[0].type.dtype, xs[1].type.dtype))  # compared in the promoted type
        return f"{a(0, t)} {sym} {a(1, t)}"

    return render


for _code, _sym in {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}.items():
    renders(_code)(_compare(_sym))


def _infix(sym: str, on_bool: str | None = None, to: DType | None = None) -> Renderer:
    """`a sym b`; `on_bool`: the operator when the compute type is bool; `to`: operands' type."""
    return lambda a: f"{a(0, to)} {on_bool if on_bool and a.boolean else sym} {a(1, to)}"


renders("add")(_infix("+", on_bool="|"))
renders("sub")(_infix("-", on_bool="|"))
renders("mul")(_infix("*", on_bool="&"))
renders("row_keep")(_infix("*"))  # x * keep[..., 1]: the FFN-skip flags zero a row (ir/skip_ops.py)
renders("bitwise_and")(_infix("&"))
renders("bitwise_or")(_infix("|"))
renders("bitwise_xor")(_infix("^"))
renders("logical_and")(_infix("&", to=DType.bool))
renders("logical_or")(_infix("|", to=DType.bool))


@renders("maximum", "minimum")
def _extremum(a: Args) -> str:
    return f"tl.{a.op.opcode}({a(0)}, {a(1)})"


@renders("where")
def _where(a: Args) -> str:
    return f"tl.where({a(0, DType.bool)}, {a(1)}, {a(2)})"


@renders("div")
def _div(a: Args) -> str:
    mode = a.attrs["rounding_mode"]
    if mode is None:
        return f"{a(0)} / {a(1)}"
    if mode == "floor":
        return f"tl.floor({a(0)} / {a(1)})" if a.flt else f"_ifloordiv({a(0)}, {a(1)})"
    q = f"({a(0)} / {a(1)})"  # trunc
    return f"tl.where({q} < 0, tl.ceil({q}), tl.floor({q}))" if a.flt else f"{a(0)} // {a(1)}"


@renders("remainder")
def _remainder(a: Args) -> str:
    return f"{a(0)} - tl.floor({a(0)} / {a(1)}) * {a(1)}" if a.flt else f"_imod({a(0)}, {a(1)})"


_POW_LITERAL = {
    0.0: "({a} * 0 + 1)", 1.0: "{a}", 2.0: "{a} * {a}", 3.0: "{a} * {a} * {a}", 4.0: "{a} * {a} * {a} * {a}",
    0.5: "tl.sqrt({a})", -0.5: "tl.rsqrt({a})", -1.0: "1.0 / {a}", -2.0: "1.0 / ({a} * {a})",
}


@renders("pow")
def _pow(a: Args) -> str:
    lit = a.lit(1)
    if lit is not None and float(lit) in _POW_LITERAL:
        return _POW_LITERAL[float(lit)].format(a=a(0))
    base, exp = a(0), a(1)
    if a.lit(0) is not None:  # a literal operand becomes a block first
        base = f"tl.zeros_like({exp}) + {base}"
    elif lit is not None:
        exp = f"tl.zeros_like({base}) + {exp}"
    if a.flt:
        return f"_pow({base}, {exp})"
    return f"_pow(({base}).to(tl.float64), ({exp}).to(tl.float64)).to({TL_DTYPES[a.c]})"
