"""Runs a graph op by op with each op's torch reference semantics: the semantic ground truth.

The runtime's reference executor wraps `evaluate`; passes use it (with an `observe` callback) to
calibrate without importing the runtime. Symbols in input shapes are bound from the actual input
sizes, then substituted into attributes (reshape targets, slice bounds, ...) before each op runs.
Values are dropped after their last use so peak memory stays near eager's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sympy
import torch

from fxforge.ir.errors import IRError, ShapeError
from fxforge.ir.graph import Graph, Op, Weight
from fxforge.ir.ops import lookup
from fxforge.ir.printer import print_op, print_type
from fxforge.ir.types import TensorType, substitute

Observer = Callable[[Op, list[torch.Tensor]], None]
# Decoders for encoded weights, by encoding kind; filled by the modules that define the encodings.
WEIGHT_DECODERS: dict[str, Callable[[Weight], torch.Tensor]] = {}


def bind_symbols(types: Sequence[TensorType], tensors: Sequence[torch.Tensor], names: Sequence[str]) -> dict[sympy.Symbol, int]:
    """Match input types against real tensors: check dtypes, ranks and static dims, bind symbols."""
    if len(tensors) != len(types):
        raise ShapeError(f"the graph takes {len(types)} inputs, got {len(tensors)}")
    bindings: dict[sympy.Symbol, int] = {}
    pending = []
    for name, t, x in zip(names, types, tensors):
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"input %{name} must be a tensor of type {print_type(t)}, got {type(x).__name__}")
        if x.dtype != t.dtype.torch or x.dim() != t.rank:
            raise ShapeError(f"input %{name} must be {print_type(t)}, got {dtype_name(x.dtype)}{list(x.shape)}")
        for d, n in zip(t.shape, x.shape):
            if isinstance(d, int):
                if d != n:
                    raise ShapeError(f"input %{name} must be {print_type(t)}, got shape {list(x.shape)}")
            elif isinstance(d, sympy.Symbol):
                if bindings.setdefault(d, int(n)) != n:
                    raise ShapeError(f"input %{name}: {d} is {bindings[d]} elsewhere but {n} here (shape {list(x.shape)})")
            else:
                pending.append((name, t, d, int(n)))
    for name, t, d, n in pending:
        if substitute(d, bindings) != n:
            raise ShapeError(f"input %{name} must be {print_type(t)}: {d} = {substitute(d, bindings)} here, got {n}")
    return bindings


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def concrete(value: Any, bindings: dict[sympy.Symbol, int]) -> Any:
    """An attribute value with every symbol replaced by its bound size."""
    if isinstance(value, sympy.Expr):
        out = substitute(value, bindings)
        if not isinstance(out, int):
            raise IRError(f"attribute {value} has unbound symbols {sorted(map(str, out.free_symbols))}")
        return out
    if isinstance(value, tuple):
        return tuple(concrete(v, bindings) for v in value)
    if isinstance(value, dict):
        return {k: concrete(v, bindings) for k, v in value.items()}
    return value


def weight_tensor(graph: Graph, name: str) -> torch.Tensor:
    """The dense tensor a `const` stands for: the weight itself, or its payload decoded."""
    w = graph.weight(name)
    if w.encoding is None:
        return w.data
    return WEIGHT_DECODERS[w.encoding.kind](w)


def last_uses(graph: Graph) -> dict[int, list[int]]:
    """op index -> ids of values whose last use is that op (outputs are never released)."""
    keep = {id(v) for v in graph.outputs}
    last: dict[int, int] = {}
    for i, op in enumerate(graph.ops):
        for v in op.operands:
            last[id(v)] = i
    out: dict[int, list[int]] = {}
    for vid, i in last.items():
        if vid not in keep:
            out.setdefault(i, []).append(vid)
    return out


def run_op(graph: Graph, op: Op, args: list[torch.Tensor], bindings: dict[sympy.Symbol, int]) -> list[torch.Tensor]:
    if op.opcode == "const":
        return [weight_tensor(graph, op.attrs["weight"])]
    attrs = concrete(op.attrs, bindings)
    out = lookup(op.opcode).ref(*args, **attrs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(outs) != len(op.results):
        raise IRError(f"{print_op(op)}: produced {len(outs)} results, declares {len(op.results)}")
    for r, t in zip(op.results, outs):
        if not isinstance(t, torch.Tensor) or t.dtype != r.type.dtype.torch:
            got = dtype_name(t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
            raise IRError(f"{print_op(op)}: produced {got} for %{r.name}, declared {print_type(r.type)}")
    return outs


def evaluate(graph: Graph, inputs: Sequence[torch.Tensor], observe: Observer | None = None,
             bindings: dict[sympy.Symbol, int] | None = None) -> list[torch.Tensor]:
    """Run the graph on concrete tensors; `observe(op, results)` sees every op's results.
    `bindings`: sizes of symbols known from elsewhere (symbolic-int arguments of a JIT graph)."""
    bindings = {**(bindings or {}), **bind_symbols([v.type for v in graph.inputs], inputs, [v.name for v in graph.inputs])}
    env: dict[int, torch.Tensor] = {id(v): x for v, x in zip(graph.inputs, inputs)}
    release = last_uses(graph)
    for i, op in enumerate(graph.ops):
        outs = run_op(graph, op, [env[id(v)] for v in op.operands], bindings)
        if observe is not None:
            observe(op, outs)
        for r, t in zip(op.results, outs):
            env[id(r)] = t
        for vid in release.get(i, ()):
            env.pop(vid, None)
    return [env[id(v)] for v in graph.outputs]
