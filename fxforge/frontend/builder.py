"""What a lowering function gets: a small builder that emits IR ops into the graph being built,
plus helpers for torch's conventions (python scalars as operands, negative dims, meta shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fxforge.frontend.symbols import SymbolTable
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.types import Dim, TensorType

COMPLEX_PARTS = {torch.complex64: DType.f32, torch.complex128: DType.f64}  # a complex dtype -> its pair form's


def ir_type(meta: torch.Tensor, shape: tuple[Dim, ...]) -> TensorType:
    """The IR type of a value torch recorded as `meta` with (symbolic) `shape`: a complex one as its real pairs
    [*shape, 2] (`view_as_real`'s form, how `aten_complex` carries it)."""
    if meta.dtype in COMPLEX_PARTS:
        return TensorType(tuple(shape) + (2,), COMPLEX_PARTS[meta.dtype])
    return TensorType(shape, DType.from_torch(meta.dtype))


class Unsupported(Exception):
    """Raised by a lowering that cannot express this particular call; the node becomes an extern."""


@dataclass
class Builder:
    graph: Graph
    symbols: SymbolTable
    meta: Any = None  # the fx node's meta["val"] (FakeTensor or tuple of them) for the node being lowered
    name_hint: str | None = None
    notes: list[str] = field(default_factory=list)
    used: frozenset[int] = frozenset({0})  # which results of the node its users read (getitem indices)
    pairs: set[Value] = field(default_factory=set)  # Values carrying complex values as real pairs (`aten_complex`)

    def op(self, opcode: str, *operands: Value, **attrs: Any) -> Value:
        return self.graph.add_op(opcode, list(operands), attrs, name=self.name_hint).result

    def multi(self, opcode: str, *operands: Value, **attrs: Any) -> Op:
        """An op with several results (its `.results`), named after the node being lowered."""
        return self.graph.add_op(opcode, list(operands), attrs, name=self.name_hint)

    def tensor(self, x: Any, like: Value | None = None) -> Value:
        """A Value for x: itself if already one, else a rank-0 `full` with torch's scalar dtype rule
        (a python float beside an int tensor is f32, beside a float tensor it takes that tensor's
        precision role: f64 so the value is exact, or a 0-d tensor's own dtype; ints are i64, bools bool)."""
        if isinstance(x, Value):
            return x
        if isinstance(x, bool):
            dtype = DType.bool
        elif isinstance(x, int):
            dtype = like.type.dtype if like is not None and like.type.dtype.is_float else DType.i64
        elif isinstance(x, float) and like is not None and like.type.dtype.is_float and like.type.rank == 0:
            dtype = like.type.dtype  # beside a 0-d tensor an f64 scalar would promote it; torch keeps its dtype
        elif isinstance(x, float):
            dtype = DType.f64 if like is not None and like.type.dtype.is_float else DType.f32
        else:
            raise Unsupported(f"cannot make a tensor of {type(x).__name__}")
        return self.graph.add_op("full", [], {"shape": (), "value": x, "dtype": dtype}).result

    def meta_type(self, index: int | None = None) -> TensorType:
        val = self.meta if index is None else self.meta[index]
        if not isinstance(val, torch.Tensor):
            raise Unsupported("no tensor metadata for this node")
        return ir_type(val, self.symbols.shape(val.shape))

    def meta_shape(self, index: int | None = None) -> tuple[Dim, ...]:
        return self.meta_type(index).shape
