"""The `extern` op: a call of a torch op by qualified name, with `$i` (`OperandRef`) standing for its
i-th operand in args/kwargs; it declares its result types itself. Its traits depend on the target:
an in-place or printing target is impure (DCE keeps it), a random one is not deterministic (CSE
never merges two draws). Its results may alias its operands (torch views), so buffer planning
never reuses their storage.
"""

from __future__ import annotations

from typing import Any

import torch

from fxforge.ir.dtypes import DType
from fxforge.ir.errors import ShapeError
from fxforge.ir.ops import REQUIRED, OpDef, register


class OperandRef:
    """`$i` inside an extern's args: the extern's i-th operand."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OperandRef) and other.index == self.index

    def __hash__(self) -> int:
        return hash(("$", self.index))

    def __repr__(self) -> str:
        return f"${self.index}"


def resolve_torch_op(target: str):
    """`aten.cumsum.default` -> torch.ops.aten.cumsum.default."""
    obj: Any = torch.ops
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ShapeError(f"extern target {target!r} is not a torch op")
    return obj


def _fill(template, operands):
    if isinstance(template, OperandRef):
        return operands[template.index]
    if isinstance(template, tuple):
        return [_fill(t, operands) for t in template]
    if isinstance(template, dict):
        return {k: _fill(v, operands) for k, v in template.items()}
    if isinstance(template, DType):
        return template.torch
    if isinstance(template, str) and template.startswith("torch."):
        return getattr(torch, template.removeprefix("torch."))  # torch.strided, torch.contiguous_format, ...
    return template


def _extern(*operands, target, args, kwargs):
    return resolve_torch_op(target)(*_fill(tuple(args), operands), **_fill(dict(kwargs), operands))


_SIDE_EFFECTS = ("print", "_assert", "record_stream")
_RANDOM = ("rand", "dropout", "bernoulli", "normal", "uniform", "empty", "multinomial", "poisson",
           "exponential", "geometric", "cauchy", "seed")


def _extern_pure(attrs: dict[str, Any]) -> bool:
    """An extern is impure when it writes to its operands (an in-place `aten.<name>_`, an `out=`
    kwarg) or acts outside the graph (print, asserts, stream bookkeeping)."""
    target = str(attrs["target"])
    parts = target.split(".")
    name = parts[1] if len(parts) >= 2 else target  # aten.<name>.<overload>
    return not (name.endswith("_") or any(s in target for s in _SIDE_EFFECTS) or "out" in attrs.get("kwargs", {}))


def _extern_deterministic(attrs: dict[str, Any]) -> bool:
    """Random draws and uninitialised memory (rand, dropout, empty, ...) differ call to call."""
    target = str(attrs["target"]).lower()
    return _extern_pure(attrs) and not any(word in target for word in _RANDOM)


register(OpDef("extern", (0, None), {"target": REQUIRED, "args": (), "kwargs": {}}, None, _extern, "extern",
               "calls a torch op by qualified name; `$i` in args/kwargs stands for operand i", num_results=-1,
               pure=_extern_pure, deterministic=_extern_deterministic, aliases=True))
