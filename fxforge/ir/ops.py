"""The closed op table: what an op is, and the shape helpers its entries share.

An `OpDef` holds everything the compiler knows about one opcode: its arity, its attribute schema
(name -> default, `REQUIRED` when it has none), a shape function (operand types + attributes ->
result types) and its reference semantics in torch (the ground truth every executor is checked
against). The entries themselves are in `optable.py`; `OPS[name]` looks one up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from fxforge.ir.dtypes import DType
from fxforge.ir.errors import ShapeError
from fxforge.ir.types import Dim, TensorType, dims_equal, normalize_dim

REQUIRED = object()  # marks an attribute without a default

ShapeFn = Callable[[list[TensorType], dict[str, Any]], list[TensorType]]
RefFn = Callable[..., Any]


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: tuple[int, int | None]  # (min, max); max None = variadic
    attrs: dict[str, Any]
    infer: ShapeFn | None  # None: result types are declared by the op itself (extern)
    ref: RefFn  # ref(*operand_tensors, **attrs) -> tensor or tuple of tensors
    category: str = "other"  # pointwise | reduction | shape | gemm | composite | source | lowp | extern
    doc: str = ""
    num_results: int = 1
    tags: frozenset[str] = field(default_factory=frozenset)

    def full_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Attributes with defaults filled in; raises on unknown or missing ones."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise ShapeError(f"{self.name}: unknown attribute(s) {sorted(unknown)}; known: {sorted(self.attrs)}")
        out = {}
        for key, default in self.attrs.items():
            if key in attrs:
                out[key] = attrs[key]
            elif default is REQUIRED:
                raise ShapeError(f"{self.name}: missing required attribute {key!r}")
            else:
                out[key] = default
        return out


OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in OPS:
        raise ValueError(f"op {opdef.name!r} registered twice")
    OPS[opdef.name] = opdef
    return opdef


def lookup(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise ShapeError(f"unknown op {name!r}: not in the op table (use `extern` for torch ops)") from None


# -- shape helpers shared by the entries ----------------------------------------------------------


def broadcast_shapes(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """numpy broadcasting over symbolic dims. A symbolic dim against an int > 1 takes the int
    (torch.export specialises such a dim to that size)."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        chosen: Dim = 1
        for d in dims:
            if d == 1:
                continue
            if chosen == 1 or dims_equal(chosen, d):
                chosen = chosen if chosen != 1 else d
            elif isinstance(chosen, int) and not isinstance(d, int):
                pass
            elif isinstance(d, int) and not isinstance(chosen, int):
                chosen = d
            else:
                raise ShapeError(f"shapes {[list(s) for s in shapes]} do not broadcast (dim {i}: {chosen} vs {d})")
        out.append(chosen)
    return tuple(out)


def norm_axis(axis: int, rank: int) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def reduce_shape(shape: tuple[Dim, ...], dims: tuple[int, ...] | None, keepdim: bool) -> tuple[Dim, ...]:
    axes = set(range(len(shape))) if dims is None or len(dims) == 0 else {norm_axis(d, len(shape)) for d in dims}
    if keepdim:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def meta_dtype(ref: RefFn, types: list[TensorType], attrs: dict[str, Any]) -> DType:
    """The result dtype torch gives, found by running the reference on tiny meta tensors
    (rank-0 operands stay rank 0, so torch's scalar promotion rules apply)."""
    metas = [torch.empty((1,) * t.rank, dtype=t.dtype.torch, device="meta") for t in types]
    out = ref(*metas, **attrs)
    return DType.from_torch(out.dtype)


def prod(dims) -> Dim:
    return normalize_dim(sympy.Mul(*[sympy.sympify(d) for d in dims]))
