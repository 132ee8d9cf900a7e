"""Tensor types, symbolic dimensions and storage encodings.

A dimension is an `int` or a sympy expression over positive integer symbols (`s0`, `s1`, ...) that
stand for dynamic sizes (batch, sequence). Every symbol is made by `sym(name)` so that equal names
are equal symbols. An `Encoding` says how a tensor is stored when it is not dense and plain; its
payload (packed values, scales, sparse metadata) lives in the graph's weight table.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Union

import sympy

from fxforge.ir.dtypes import DType

Dim = Union[int, sympy.Expr]


@functools.cache
def sym(name: str) -> sympy.Symbol:
    """The one symbol of that name: a positive integer (a dynamic size)."""
    return sympy.Symbol(name, integer=True, positive=True)


def normalize_dim(d: Dim) -> Dim:
    """Ints stay ints, sympy integers become ints, other expressions stay symbolic."""
    if isinstance(d, bool):
        raise TypeError(f"a dimension cannot be a bool: {d!r}")
    if isinstance(d, int):
        return d
    expr = sympy.sympify(d)
    if expr.is_Integer:
        return int(expr)
    return expr


def dims_equal(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if a is b or a == b:  # the same expression (the common case): no subtraction, no simplify
        return True
    diff = sympy.sympify(a) - sympy.sympify(b)
    return diff == 0 or sympy.simplify(diff) == 0


def may_equal(a: Dim, b: Dim) -> bool:
    """False only when the dims are provably different (two ints, or a nonzero constant apart).
    Two independent symbols may be equal at run time (dynamo gives a KV cache's keys and values
    separate size symbols); the reference semantics check them when the op runs."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    diff = sympy.simplify(sympy.sympify(a) - sympy.sympify(b))
    return not (diff.is_number and diff != 0)


def substitute(d: Dim, bindings: dict[sympy.Symbol, int]) -> Dim:
    """Replace symbols by concrete sizes; the result is an int once every symbol is bound."""
    if isinstance(d, int):
        return d
    return normalize_dim(d.xreplace({k: sympy.Integer(v) for k, v in bindings.items()}))


def free_symbols(dims) -> set[sympy.Symbol]:
    out: set[sympy.Symbol] = set()
    for d in dims:
        if not isinstance(d, int):
            out |= d.free_symbols
    return out


# -- encodings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantized:
    """Values in a low-precision `format` with scales along `axis`, one scale per `group` elements
    (group 0: one scale per slice along axis). `zero_point`: asymmetric integer quantization.
    `layout`: how the payload's codes are stored: "" (row-major, two per byte) or a decode layout of
    `fxforge.ir.weight_layouts` (e.g. "i4w128": nibbles pre-shuffled into int32 words per 128-wide K tile
    for the in-register dequantization of the decode kernels); printed only when set."""

    format: str
    axis: int
    group: int = 0
    scale_dtype: DType = DType.f32
    zero_point: bool = False
    layout: str = field(default="", metadata={"omit_default": True})

    kind = "quantized"


@dataclass(frozen=True)
class NM:
    """N:M structured sparsity: at most n nonzeros in every m consecutive values along the last axis.
    `dtype`: the logical dtype of the decoded tensor; `scheme`/`group`: the quantization scheme of the
    kept values and its group (in kept values), None for 16-bit values. Codec: `fxforge.ir.nm`."""

    n: int
    m: int
    dtype: DType = DType.f32
    scheme: str | None = None
    group: int = 0

    kind = "nm"


@dataclass(frozen=True)
class BlockFP:
    """Block floating point (MX style): `block` values along `axis` share one power-of-two scale.
    `perm` names the weight holding the channel permutation applied at compile time, if any."""

    format: str
    block: int = 32
    axis: int = -1
    perm: str | None = None

    kind = "blockfp"


Encoding = Union[Quantized, NM, BlockFP]
ENCODINGS: dict[str, type] = {cls.kind: cls for cls in (Quantized, NM, BlockFP)}


@dataclass(frozen=True)
class TensorType:
    """The type of one SSA value: shape (ints or sympy expressions), dtype, optional encoding."""

    shape: tuple[Dim, ...]
    dtype: DType
    encoding: Encoding | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(normalize_dim(d) for d in self.shape))
        if not isinstance(self.dtype, DType):
            raise TypeError(f"TensorType dtype must be a DType, got {self.dtype!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> Dim:
        return normalize_dim(sympy.Mul(*[sympy.sympify(d) for d in self.shape]))

    def with_shape(self, shape) -> TensorType:
        return TensorType(tuple(shape), self.dtype, self.encoding)

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(self.shape, dtype, self.encoding)

    def same_as(self, other: TensorType) -> bool:
        """Equal dtype and encoding, and dims equal as expressions (not only structurally)."""
        return (
            self.dtype == other.dtype
            and self.encoding == other.encoding
            and self.rank == other.rank
            and all(dims_equal(a, b) for a, b in zip(self.shape, other.shape))
        )
