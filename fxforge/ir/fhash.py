"""Functional hashing of the IR: a key that is equal for graphs (or kernel groups) that compute the
same thing the same way, whatever their values are called and whatever their weights hold.

The key is the SHA-256 of a canonical text: the IR printed with positional names (graph inputs
`%i0..`, op results `%r0..` in graph order; a kernel group's inputs `%x0..` and results `%t0..`), the
weights' names, dtypes, shapes and encodings (through the const ops' types) but not their values,
and, for a partitioned graph, the partition (groups by op position, kind, reason and params; the
host ops and why). `graph_key(graph, weights=True)` also hashes the weight bytes (an artifact's
identity rather than its code's).

Decisions:
- What a generated module depends on is exactly what the key prints: ops, attributes, types,
  weight names (the module reads its weights by name) and the partition. SSA names and graph names
  are left out, so eight identical decoder layers give one group key and a recompile of the same
  model gives the same graph key (the codegen caches in `codegen/module.py` key on these).
- Weight values are left out by default: they reach kernels as run-time arguments and never
  change the code; quantized payloads are likewise data (their encoding, which does change the
  code, is part of the type).
- A kernel group's key takes `extra` facts from its caller (which inputs are contiguous buffers and
  which are `full` literals), since those change the emitted kernel too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.printer import print_global, print_op, print_type, print_value


def _digest(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def canonical_params(x: Any, name: Callable[[Value], str], op_index: Callable[[Op], int]) -> str:
    """A group's kind-specific params (ops, values, lists, dicts, scalars) as position-based text."""
    if isinstance(x, Op):
        return f"op#{op_index(x)}"
    if isinstance(x, Value):
        return f"%{name(x)}"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}={canonical_params(v, name, op_index)}" for k, v in sorted(x.items())) + "}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(canonical_params(v, name, op_index) for v in x) + "]"
    try:
        return print_value(x)
    except TypeError:
        return repr(x)


def graph_lines(graph: Graph) -> list[str]:
    """The canonical text of a graph (and its partition, when it has one)."""
    names: dict[int, str] = {id(v): f"i{k}" for k, v in enumerate(graph.inputs)}
    for op in graph.ops:
        for r in op.results:
            names[id(r)] = f"r{len(names)}"
    positions = {id(op): k for k, op in enumerate(graph.ops)}

    def name(v: Value) -> str:
        return names.get(id(v), "?" + v.name)  # a value from outside the graph: a verifier error elsewhere

    lines = ["graph(" + ", ".join(f"%{name(v)}: {print_type(v.type)}" for v in graph.inputs) + ")"]
    lines += [print_op(op, name) for op in graph.ops]
    lines.append("return " + ", ".join(f"%{name(v)}" for v in graph.outputs))
    part = graph.partition
    if part is not None:
        for g in part.groups:
            ops = [positions.get(id(op), -1) for op in g.ops]
            lines.append(f"group {g.kind} {ops} {g.reason!r} "
                         f"{canonical_params(g.params, name, lambda op: positions.get(id(op), -1))}")
        lines += [f"host {positions.get(k, -1)} {v!r}" for k, v in sorted(part.host.items(),
                                                                          key=lambda kv: positions.get(kv[0], -1))]
    return lines


def graph_key(graph: Graph, weights: bool = False) -> str:
    """The functional hash of `graph` (see the module docstring); `weights=True` adds the weight bytes."""
    lines = graph_lines(graph)
    if weights:
        for wname in sorted(graph.weights):
            w = graph.weights[wname]
            lines.append(f"weight {print_global(wname)} {_tensor_digest(getattr(w, 'data', w))}")
            for k, t in sorted(getattr(w, "payload", {}).items()):
                lines.append(f"  payload {k} {_tensor_digest(t)}")
    return _digest(lines)


def _tensor_digest(t: Any) -> str:
    import torch  # the IR's weights are torch tensors; imported here to keep this module's import light

    if not isinstance(t, torch.Tensor):
        return repr(t)
    data = t.detach().contiguous().cpu().reshape(-1)  # a 0-dim tensor has no byte view
    raw = data.view(torch.uint8) if data.element_size() and data.numel() else data
    return f"{data.dtype}{tuple(t.shape)}:" + hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def group_lines(kind: str, ops: list[Op], inputs: list[Value], outputs: list[Value], reason: str,
                params: dict[str, Any], extra: Callable[[Value], str] = lambda v: "") -> list[str]:
    """The canonical text of one kernel group: its inputs (type and `extra` facts), ops, outputs."""
    names: dict[int, str] = {id(v): f"x{k}" for k, v in enumerate(inputs)}
    for op in ops:
        for r in op.results:
            names[id(r)] = f"t{len(names) - len(inputs)}"
    positions = {id(op): k for k, op in enumerate(ops)}

    def name(v: Value) -> str:
        return names.get(id(v), "?")

    lines = [f"{kind} {reason!r} {canonical_params(params, name, lambda op: positions.get(id(op), -1))}"]
    lines += [f"in %{name(v)}: {print_type(v.type)} {extra(v)}" for v in inputs]
    lines += [print_op(op, name) for op in ops]
    lines.append("out " + ", ".join(f"%{name(v)}" for v in outputs))
    return lines


def group_key(kind: str, ops: list[Op], inputs: list[Value], outputs: list[Value], reason: str,
              params: dict[str, Any], extra: Callable[[Value], str] = lambda v: "") -> str:
    """The functional hash of one kernel group (equal for the same kernel in every decoder layer)."""
    return _digest(group_lines(kind, ops, inputs, outputs, reason, params, extra))
