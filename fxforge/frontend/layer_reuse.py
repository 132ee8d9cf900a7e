"""Capture a deep stack of identical layers once (issue #13, item 6: compile time linear in depth).

torch.export's cost grows with depth (8 h512 Llama layers ~18 s, 32 layers ~96 s on the shared CPU),
though a decoder's layers are one function with different weights. So when a model holds a
`ModuleList` of >= 3 layers of one structure, `capture_export` exports it with only the first two
layers in the list, and this module builds the full graph from that:

1. `stack_of(model)`: the longest `ModuleList` whose layers share one *structure key*: class, every
   parameter's and buffer's name, shape and dtype, and every other attribute of every submodule
   (sliding windows, layer types, eps...) except `layer_idx`, which only indexes caches.
2. `replicate(ep, ...)`: in the two-layer exported graph, layer 1's nodes (found by their
   `nn_module_stack`) must be layer 0's node for node (same targets, same constants, operands in the
   same places): the functional check at capture. Layer 1's graph is then cloned for layers 2..N-1,
   each clone reading its own layer's weights (new placeholders named by the layer's parameters),
   the previous clone's results where layer 1 read layer 0's, and the shared values (RoPE tables,
   masks) as they are; the nodes after the stack read the last clone.
3. `check_numerics`: the replicated graph is run on the example inputs next to the eager model; any
   difference beyond float noise (or any of the conditions above failing) drops this path and
   `capture_export` exports the whole model, with a note saying why.

Decisions: the stack is cut and restored on the model object in a `finally` (exported once, with its
own config untouched); outputs that read a layer inside the stack (hidden states of every layer,
KV caches) are not replicated (the path is dropped with a note).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx
from torch.utils import _pytree as pytree

MIN_LAYERS = 3
SKIP_ATTRS = frozenset({"layer_idx", "training"})


class NoReuse(Exception):
    """This model's stack cannot be captured once (the message says why; the whole model is exported)."""


def _attrs_key(module: torch.nn.Module, reprs: dict[int, str]) -> tuple:
    """`reprs`: repr by object id, shared by the layers of one stack (each layer's attention holds the
    model's config: printing it per layer and submodule was a linear cost of its own)."""
    out = []
    for name, sub in module.named_modules():
        plain = {k: v for k, v in vars(sub).items() if not k.startswith("_") and k not in SKIP_ATTRS}
        items = []
        for k in sorted(plain):
            v = plain[k]
            if isinstance(v, torch.Tensor):
                v = ("tensor", tuple(v.shape), v.dtype)
            elif not isinstance(v, (int, float, str, bool, type(None), tuple, torch.dtype)):
                if id(v) not in reprs:
                    reprs[id(v)] = repr(v)[:200]
                v = ("obj", type(v).__qualname__, reprs[id(v)])
            items.append((k, v))
        out.append((name, type(sub).__qualname__, tuple(items)))
    return tuple(out)


def structure_key(layer: torch.nn.Module, reprs: dict[int, str] | None = None) -> tuple:
    """What makes two layers one function of their weights (`reprs`: see `_attrs_key`)."""
    tensors = [(n, tuple(t.shape), t.dtype) for n, t in [*layer.named_parameters(), *layer.named_buffers()]]
    return type(layer).__qualname__, tuple(tensors), _attrs_key(layer, {} if reprs is None else reprs)


def stack_of(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The qualified name and the list of the longest stack of >= MIN_LAYERS same-structure layers."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) >= MIN_LAYERS and (best is None or len(mod) > len(best[1])):
            best = (name, mod)
    if best is None:
        return None
    reprs: dict[int, str] = {}  # the objects stay alive (held by the layers) while their ids are keys
    key = structure_key(best[1][0], reprs)
    if any(structure_key(layer, reprs) != key for layer in best[1]):
        return None
    return best


@contextmanager
def cut_to_two(model: torch.nn.Module, path: str) -> Iterator[None]:
    """The stack at `path` holds only its first two layers while the block runs."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    full = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList(list(full)[:2]))
    try:
        yield
    finally:
        setattr(parent, attr, full)


def _layer(node: torch.fx.Node, path: str) -> int | None:
    stack = node.meta.get("nn_module_stack") or {}
    for fqn, _ in stack.values():
        fqn = str(fqn)
        for i in (0, 1):
            if fqn == f"{path}.{i}" or fqn.startswith(f"{path}.{i}."):
                return i
    return None


def _split(graph: torch.fx.Graph, path: str) -> tuple[list, list, list]:
    """Layer 0's and layer 1's call nodes (in order) and the nodes after the stack."""
    layers: tuple[list, list] = ([], [])
    after: list = []
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        i = _layer(node, path) if node.op == "call_function" else None
        if i is not None:
            if after or (i == 0 and layers[1]):
                raise NoReuse(f"the layers of {path} are not contiguous in the exported graph ({node.name})")
            layers[i].append(node)
        elif layers[1]:
            after.append(node)
    if not layers[0] or len(layers[0]) != len(layers[1]):
        raise NoReuse(f"{path}.0 and {path}.1 export to {len(layers[0])} and {len(layers[1])} nodes")
    return layers[0], layers[1], after


def _param_suffix(node: torch.fx.Node, targets: dict[str, str], prefix: str) -> str | None:
    target = targets.get(node.name) if isinstance(node, torch.fx.Node) and node.op == "placeholder" else None
    return target[len(prefix):] if target and target.startswith(prefix) else None


def _match(l0: list, l1: list, targets: dict[str, str], path: str) -> dict:
    """Check layer 1 is layer 0 node for node; return layer 1's carried inputs: node of layer 0 -> its
    index in layer 0 (layer k reads the clone of that index in layer k-1)."""
    index0 = {n: i for i, n in enumerate(l0)}
    index1 = {n: i for i, n in enumerate(l1)}
    for a, b in zip(l0, l1):
        if a.target != b.target or len(a.args) != len(b.args) or a.kwargs.keys() != b.kwargs.keys():
            raise NoReuse(f"{path}.1 differs from {path}.0 at {b.name} ({b.target} vs {a.target})")
        pairs, pairs_b = _leaves((a.args, a.kwargs)), _leaves((b.args, b.kwargs))
        if len(pairs) != len(pairs_b):
            raise NoReuse(f"{path}.1 differs from {path}.0 at {b.name} ({len(pairs_b)} vs {len(pairs)} operands)")
        for x, y in zip(pairs, pairs_b):
            if not _same_operand(x, y, index0, index1, targets, path):
                raise NoReuse(f"{path}.1 differs from {path}.0 at {b.name} (operand {y} vs {x})")
    return index0


def _same_operand(x: Any, y: Any, index0: dict, index1: dict, targets: dict[str, str], path: str) -> bool:
    """Operand y of a layer-1 node plays the part of operand x of its layer-0 twin."""
    if y in index0:  # layer 1 reads layer 0 where layer 0 reads its input: carried from layer to layer
        return True
    if x in index0 or y in index1:  # a result of the layer itself, at the same position
        return x in index0 and y in index1 and index0[x] == index1[y]
    suffix = _param_suffix(x, targets, f"{path}.0.")
    if suffix is not None:  # the layer's own weight, the same one
        return suffix == _param_suffix(y, targets, f"{path}.1.")
    if isinstance(x, torch.fx.Node):  # a value both read (RoPE tables, masks, shared weights)
        return x is y
    return type(x) is type(y) and x == y  # a constant


def replicate(gm: torch.fx.GraphModule, targets: dict[str, str], path: str, layers: int,
              state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Clone layer 1 of the two-layer graph `gm` for layers 2..layers-1, in place; `targets` maps
    placeholder names to weight names (new placeholders are added to it) and is returned."""
    graph = gm.graph
    l0, l1, after = _split(graph, path)
    index0 = _match(l0, l1, targets, path)
    outputs = [n for n in graph.nodes if n.op == "output"]
    if any(a in index0 for a in _flat_nodes(outputs[0])):  # e.g. every layer's hidden states: N outputs, not 2
        raise NoReuse(f"an output reads {path}.0 directly")
    params1 = {n: _param_suffix(n, targets, f"{path}.1.") for n in graph.nodes if n.op == "placeholder"}
    params1 = {n: s for n, s in params1.items() if s is not None}
    last_placeholder = max(params1, key=_position(graph))  # layer k's weights follow layer k-1's, as export orders them
    prev = {i: n for i, n in enumerate(l1)}  # the latest layer's nodes by index
    insert_after = l1[-1]
    for k in range(2, layers):
        env: dict = {}
        for node, suffix in params1.items():
            name = f"{path}.{k}.{suffix}"
            if name not in state:
                raise NoReuse(f"{name} is not a parameter or buffer of the model")
            with graph.inserting_after(last_placeholder):
                ph = graph.placeholder(f"p_{name.replace('.', '_')}")
            ph.meta = dict(node.meta)
            targets[ph.name] = name
            env[node] = ph
            last_placeholder = ph
        for i, node in enumerate(l1):
            def arg(x, i=i):
                if x in env:
                    return env[x]
                if x in index0:
                    return prev[index0[x]]
                return x
            with graph.inserting_after(insert_after):
                new = graph.node_copy(node, arg)
            env[node] = new
            insert_after = new
        prev = {i: env[n] for i, n in enumerate(l1)}
    last = {n: prev[i] for i, n in enumerate(l1)}
    for node in [*after, *outputs]:
        node.args = torch.fx.node.map_arg(node.args, lambda x: last.get(x, x))
        node.kwargs = torch.fx.node.map_arg(node.kwargs, lambda x: last.get(x, x))
    graph.lint()
    gm.recompile()
    return targets


def _leaves(value: Any) -> list:
    out: list = []
    torch.fx.node.map_aggregate(value, lambda x: out.append(x))
    return out


def _flat_nodes(node: torch.fx.Node) -> list:
    out: list = []
    torch.fx.node.map_arg(node.args, lambda x: out.append(x))
    return out


def _position(graph: torch.fx.Graph):
    order = {n: i for i, n in enumerate(graph.nodes)}
    return lambda n: order[n]


def check_numerics(gm: torch.fx.GraphModule, targets: dict[str, str], state: dict[str, Any], model: torch.nn.Module,
                   args: tuple, kwargs: dict) -> None:
    """Run the replicated graph and the eager model on the examples; NoReuse if they differ."""
    user = iter(pytree.tree_leaves((args, kwargs)))
    inputs = [state[targets[n.name]] if n.name in targets else next(user) for n in gm.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():
        got = pytree.tree_leaves(gm(*inputs))
        want = [t for t in pytree.tree_leaves(model(*args, **kwargs)) if isinstance(t, torch.Tensor)]
    got = [t for t in got if isinstance(t, torch.Tensor)]
    if len(got) != len(want) or any(g.shape != w.shape or not torch.allclose(g, w, rtol=1e-4, atol=1e-5)
                                    for g, w in zip(got, want)):
        raise NoReuse("the replicated graph's outputs differ from the eager model's on the examples")
