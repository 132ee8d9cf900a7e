"""The closed op table: what an op is, and the shape helpers its entries share.

An `OpDef` holds everything the compiler knows about one opcode: its arity, its attribute schema
(name -> default, `REQUIRED` when it has none), a shape function (operand types + attributes ->
result types) and its reference semantics in torch (the ground truth every executor is checked
against), and the traits the passes and codegen read instead of lists of opcodes of their own:
- `kernel`: where the op can run (`KERNEL_CLASSES`): `pointwise` (an expression inside any generated
  kernel; codegen.expr_ops has a renderer per such op), `row` (anchors a row kernel), `gemm` (anchors
  a GEMM template call with an epilogue), `template` (a kernel of its own, one template call: attention),
  `view` (a torch view on the host: its result aliases operand 0), `host` (a torch call on the host;
  the default, always correct).
- `commutative`: a binary op whose two operands may be swapped bit for bit (CSE numbers them as a set).
- `pure` / `deterministic`: no side effects (DCE may drop it when unused) / equal operands give equal
  results (CSE may merge two of them); a bool, or a function of the op's attributes (`extern`).
- `activation`: the GEMM epilogue's activation name this op computes (a name, or a function of the
  attributes: gelu's `approximate`), None when it is not one.
- `aliases`: results may share operand storage (views, externs): buffer planning keeps the storage.
- `tags`: open-ended markers a module of ops defines and reads itself (`skip_ops.DATA_DEPENDENT`:
  the result's bare-symbol dims are set by the data).
The entries themselves are in `optable.py` / `lowp_ops.py`; `OPS[name]` looks one up. Adding an op is
one `register(OpDef(...))` entry with its traits.

Decisions:
- Traits that depend on attributes are functions of the attribute dict, not opcode tests at the
  reader: the reader asks `opdef.is_pure(attrs)` and never names an opcode.
- `doc` is the op's signature in words; attribute errors quote it, so a misspelt attribute shows how
  the op is called.
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
AttrPredicate = Callable[[dict[str, Any]], bool]
KERNEL_CLASSES = ("pointwise", "row", "gemm", "template", "view", "host")


@dataclass(frozen=True)
class ByAttr:
    """A trait value chosen by one attribute of the op: `ByAttr("approximate", {"none": "gelu",
    "tanh": "gelu_tanh"})`; values it does not list give None."""

    attr: str
    values: dict[Any, Any]

    def __call__(self, attrs: dict[str, Any]) -> Any:
        return self.values.get(attrs[self.attr])


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
    kernel: str = "host"  # one of KERNEL_CLASSES
    commutative: bool = False
    pure: bool | AttrPredicate = True
    deterministic: bool | AttrPredicate = True
    activation: str | Callable[[dict[str, Any]], str | None] | None = None
    aliases: bool = False
    tags: frozenset[str] = field(default_factory=frozenset)  # open-ended markers (skip_ops.DATA_DEPENDENT)

    def __post_init__(self) -> None:
        if self.kernel not in KERNEL_CLASSES:
            raise ValueError(f"op {self.name!r}: kernel class {self.kernel!r} is not one of {KERNEL_CLASSES}")

    def is_pure(self, attrs: dict[str, Any]) -> bool:
        """No side effects: unused results may be dropped."""
        return self.pure(attrs) if callable(self.pure) else self.pure

    def is_deterministic(self, attrs: dict[str, Any]) -> bool:
        """Equal operands and attributes give equal results (two such ops may merge)."""
        return self.deterministic(attrs) if callable(self.deterministic) else self.deterministic

    def activation_of(self, attrs: dict[str, Any]) -> str | None:
        """The GEMM epilogue activation this op computes, or None."""
        return self.activation(attrs) if callable(self.activation) else self.activation

    def _where(self) -> str:
        return f" (signature: {self.doc})" if self.doc else ""

    def full_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Attributes with defaults filled in; raises on unknown or missing ones."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise ShapeError(f"{self.name}: unknown attribute(s) {sorted(unknown)}; known: {sorted(self.attrs)}"
                             + self._where())
        out = {}
        for key, default in self.attrs.items():
            if key in attrs:
                out[key] = attrs[key]
            elif default is REQUIRED:
                raise ShapeError(f"{self.name}: missing required attribute {key!r}" + self._where())
            else:
                out[key] = default
        return out


OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in OPS:
        raise ValueError(f"op {opdef.name!r} registered twice")
    OPS[opdef.name] = opdef
    return opdef


def ops_with(kernel: str) -> list[str]:
    """Names of the ops of one kernel class, in table order."""
    return [name for name, d in OPS.items() if d.kernel == kernel]


def activations() -> tuple[str, ...]:
    """Every activation name an op of the table computes (under any attributes it may take)."""
    names: set[str] = set()
    for d in OPS.values():
        if isinstance(d.activation, str):
            names.add(d.activation)
        elif isinstance(d.activation, ByAttr):
            names |= {v for v in d.activation.values.values() if v is not None}
    return tuple(sorted(names))


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


_META_DTYPES: dict[Any, DType] = {}


def meta_dtype(ref: RefFn, types: list[TensorType], attrs: dict[str, Any]) -> DType:
    """The result dtype torch gives, found by running the reference on tiny meta tensors
    (rank-0 operands stay rank 0, so torch's scalar promotion rules apply). Memoised on what the
    meta run reads (the reference, each operand's rank and dtype, the attributes): a graph asks the
    same question once per op, and torch's dispatch was most of lowering's time on deep models."""
    try:
        key = (ref, tuple((t.rank, t.dtype) for t in types), tuple(attrs.items()))
        return _META_DTYPES[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable attribute value: ask torch every time
        key = None
    metas = [torch.empty((1,) * t.rank, dtype=t.dtype.torch, device="meta") for t in types]
    out = DType.from_torch(ref(*metas, **attrs).dtype)
    if key is not None:
        _META_DTYPES[key] = out
    return out


def prod(dims) -> Dim:
    return normalize_dim(sympy.Mul(*[sympy.sympify(d) for d in dims]))
