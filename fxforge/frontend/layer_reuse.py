"""Capture a deep stack of layers once per kind (issue #13, item 6: compile time linear in depth).

torch.export's cost grows with depth (8 h512 Llama layers ~18 s, 32 layers ~96 s on the shared CPU),
though a decoder's layers are one function with different weights (or a few: Gemma 2 alternates
local and global attention, Gemma 3 has 5 local to 1 global). So when a model holds a `ModuleList`
of >= 3 layers, `capture_export` exports it with a prefix of the list and this module builds the full
graph from that:

1. `stack_of(model)`: the longest `ModuleList`; each layer's *kind* is its *structure key*: class,
   every parameter's and buffer's name, shape and dtype, and every other attribute of every submodule
   (sliding windows, layer types, eps...) except `layer_idx`, which only indexes caches. `plan_for`:
   the shortest prefix (>= 2 layers) holding every (kind, next kind) pair of the stack at a position
   >= 1 and ending on the last layer's kind (a uniform stack: two layers; Gemma 2: 3 or 4); None (full
   export) when only the whole stack does (a kind that occurs once, last).
2. `replicate(ep, ...)`: in the exported graph, each layer's nodes (found by their `nn_module_stack`)
   must be those of the first exported layer of its kind node for node (same targets, same constants,
   operands in the same places, reading nothing but its predecessor and values from before the
   stack): the functional check at capture. Layer k >= prefix is a clone of the exported layer of
   the pair (kind k-1, kind k), reading its own weights (new placeholders named by the layer's
   parameters), the previous layer's results where the template read its predecessor's, and the
   shared values (RoPE tables, each kind's mask) as they are; the nodes after the stack read the last clone.
3. `check_numerics`: the replicated graph is run (node by node, `run_graph`: its module's code is not
   regenerated, which cost more than the run) on the example inputs next to the eager model; any
   difference beyond float noise (or any of the conditions above failing) drops this path and
   `capture_export` exports the whole model, with a note saying why.

Decisions: the stack is cut to a prefix (not any subset: models index per-layer settings by position,
`config.layer_types[i]`) and restored on the model object in a `finally` (exported once, with its own
config untouched); outputs or nodes after the stack that read a layer before the last exported one
(hidden states of every layer, KV caches) are not replicated (the path is dropped with a note).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Plan:
    """How the stack at `path` is captured: `kinds[i]` numbers layer i's structure key; its first `prefix`
    layers are exported and layer k >= prefix is cloned from exported layer `templates[kinds[k-1], kinds[k]]`
    (a layer that follows a layer of the same kind as its clone's does)."""

    path: str
    kinds: tuple[int, ...]
    prefix: int
    templates: dict[tuple[int, int], int]


def plan_for(path: str, kinds: tuple[int, ...]) -> Plan | None:
    """The shortest prefix (>= 2 layers) holding every (kind of a layer, kind of the next) pair of the
    stack at a position >= 1 and ending on the stack's last kind; None if only the whole stack does."""
    needed = {(kinds[k - 1], kinds[k]) for k in range(1, len(kinds))}
    seen: dict[tuple[int, int], int] = {}
    for m in range(2, len(kinds)):
        seen[kinds[m - 2], kinds[m - 1]] = m - 1
        if needed <= seen.keys() and kinds[m - 1] == kinds[-1]:
            return Plan(path, kinds, m, dict(seen))
    return None


def stack_of(model: torch.nn.Module) -> Plan | None:
    """How to capture the longest `ModuleList` of >= MIN_LAYERS layers (None: no such list, or its
    layers' kinds never repeat in a way a clone can follow)."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) >= MIN_LAYERS and (best is None or len(mod) > len(best[1])):
            best = (name, mod)
    if best is None:
        return None
    reprs: dict[int, str] = {}  # the objects stay alive (held by the layers) while their ids are keys
    distinct: list[tuple] = []  # compared with ==: a key may hold unhashable values
    kinds = []
    for layer in best[1]:
        key = structure_key(layer, reprs)
        if key not in distinct:
            distinct.append(key)
        kinds.append(distinct.index(key))
    return plan_for(best[0], tuple(kinds))


@contextmanager
def cut_to(model: torch.nn.Module, path: str, count: int) -> Iterator[None]:
    """The stack at `path` holds only its first `count` layers while the block runs (a prefix: models
    index per-layer settings by position, e.g. `config.layer_types[i]`)."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    full = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList(list(full)[:count]))
    try:
        yield
    finally:
        setattr(parent, attr, full)


def _layer(node: torch.fx.Node, path: str) -> int | None:
    head = f"{path}."
    for fqn, _ in (node.meta.get("nn_module_stack") or {}).values():
        fqn = str(fqn)
        if fqn.startswith(head):
            index = fqn[len(head):].split(".", 1)[0]
            if index.isdigit():
                return int(index)
    return None


def _split(graph: torch.fx.Graph, plan: Plan) -> tuple[list[list], list]:
    """Each exported layer's call nodes (in order) and the nodes after the stack."""
    layers: list[list] = [[] for _ in range(plan.prefix)]
    after: list = []
    current = -1
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        i = _layer(node, plan.path) if node.op == "call_function" else None
        if i is not None:
            if after or i < current or i >= plan.prefix or (i > current and layers[i]):
                raise NoReuse(f"the layers of {plan.path} are not contiguous in the exported graph ({node.name})")
            current = i
            layers[i].append(node)
        elif current >= 0:
            after.append(node)
    if any(not nodes for nodes in layers):
        raise NoReuse(f"a layer of {plan.path} exports to no node")
    return layers, after


def _param_suffix(node: torch.fx.Node, targets: dict[str, str], prefix: str) -> str | None:
    target = targets.get(node.name) if isinstance(node, torch.fx.Node) and node.op == "placeholder" else None
    return target[len(prefix):] if target and target.startswith(prefix) else None


@dataclass
class _Pair:
    """Exported layer b checked against the first exported layer a of its kind (a < b)."""

    a: int
    b: int
    own_a: dict
    own_b: dict
    prev_a: dict
    prev_b: dict
    same_prev: bool  # their predecessors are of one kind: a carried value is the same one of each


def _index(nodes: list) -> dict:
    return {n: i for i, n in enumerate(nodes)}


def _match(layers: list[list], a: int, b: int, plan: Plan, owner: dict, targets: dict[str, str]) -> None:
    """Layer b is layer a node for node (NoReuse where not): same targets and constants, own results
    and weights in the same places, the same shared values, and what b reads of its predecessor where
    a reads its input (its predecessor's, when those two are of one kind, at the same place)."""
    path = plan.path
    pair = _Pair(a, b, _index(layers[a]), _index(layers[b]), _index(layers[a - 1]) if a else {}, _index(layers[b - 1]),
                 a > 0 and plan.kinds[a - 1] == plan.kinds[b - 1])
    if len(layers[a]) != len(layers[b]):
        raise NoReuse(f"{path}.{a} and {path}.{b} export to {len(layers[a])} and {len(layers[b])} nodes")
    for x_node, y_node in zip(layers[a], layers[b]):
        if x_node.target != y_node.target or len(x_node.args) != len(y_node.args) or x_node.kwargs.keys() != y_node.kwargs.keys():
            raise NoReuse(f"{path}.{b} differs from {path}.{a} at {y_node.name} ({y_node.target} vs {x_node.target})")
        xs, ys = _leaves((x_node.args, x_node.kwargs)), _leaves((y_node.args, y_node.kwargs))
        if len(xs) != len(ys):
            raise NoReuse(f"{path}.{b} differs from {path}.{a} at {y_node.name} ({len(ys)} vs {len(xs)} operands)")
        for x, y in zip(xs, ys):
            if isinstance(y, torch.fx.Node) and owner.get(y, b) not in (b, b - 1):
                raise NoReuse(f"{path}.{b} reads {path}.{owner[y]} ({y.name}), not only the layer before it")
            if not _same_operand(x, y, pair, targets, path):
                raise NoReuse(f"{path}.{b} differs from {path}.{a} at {y_node.name} (operand {y} vs {x})")


def _same_operand(x: Any, y: Any, pair: _Pair, targets: dict[str, str], path: str) -> bool:
    """Operand y of a node of layer b plays the part of operand x of its twin in layer a."""
    if y in pair.prev_b:  # carried from the layer before
        if pair.same_prev:
            return pair.prev_a.get(x) == pair.prev_b[y]
        return x not in pair.own_a and _param_suffix(x, targets, f"{path}.{pair.a}.") is None  # layer a's input
    if x in pair.own_a or y in pair.own_b:  # a result of the layer itself, at the same position
        return x in pair.own_a and y in pair.own_b and pair.own_a[x] == pair.own_b[y]
    suffix = _param_suffix(x, targets, f"{path}.{pair.a}.")
    if suffix is not None:  # the layer's own weight, the same one
        return suffix == _param_suffix(y, targets, f"{path}.{pair.b}.")
    if isinstance(x, torch.fx.Node):  # a value both read (RoPE tables, masks, shared weights)
        return x is y
    return type(x) is type(y) and x == y  # a constant


def _check(graph: torch.fx.Graph, plan: Plan, targets: dict[str, str]) -> tuple[list[list], list, list]:
    """Split the exported graph and check its layers (`_match`) and what reads them: the exported
    layers, the nodes after the stack, and the output node."""
    layers, after = _split(graph, plan)
    owner = {n: i for i, nodes in enumerate(layers) for n in nodes}
    first: dict[int, int] = {}
    for i in range(plan.prefix):
        a = first.setdefault(plan.kinds[i], i)
        if a != i:
            _match(layers, a, i, plan, owner, targets)
    outputs = [n for n in graph.nodes if n.op == "output"]
    for node in [*after, *outputs]:
        early = [owner[x] for x in _flat_nodes(node) if owner.get(x, plan.prefix - 1) != plan.prefix - 1]
        if early:  # e.g. every layer's hidden states: N outputs, not `prefix`
            what = "an output" if node.op == "output" else f"{node.name} after the stack"
            raise NoReuse(f"{what} reads {plan.path}.{early[0]} directly")
    return layers, after, outputs


def _add_weights(graph: torch.fx.Graph, template: dict, k: int, plan: Plan, state: dict, targets: dict[str, str],
                 last: torch.fx.Node) -> tuple[dict, torch.fx.Node]:
    """Placeholders for layer k's weights, after `last`, by the template's (node -> suffix): env, last."""
    env = {}
    for node, suffix in template.items():
        name = f"{plan.path}.{k}.{suffix}"
        if name not in state:
            raise NoReuse(f"{name} is not a parameter or buffer of the model")
        with graph.inserting_after(last):
            ph = graph.placeholder(f"p_{name.replace('.', '_')}")
        ph.meta = dict(node.meta)
        targets[ph.name] = name
        env[node] = ph
        last = ph
    return env, last


def replicate(gm: torch.fx.GraphModule, targets: dict[str, str], plan: Plan, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Clone the exported layers of `gm` for layers prefix..N-1 by `plan`, in place; `targets` maps
    placeholder names to weight names (new placeholders are added to it) and is returned."""
    graph = gm.graph
    layers, after, outputs = _check(graph, plan, targets)
    used = sorted(set(plan.templates.values()))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    weights = {t: {n: s for n in placeholders if (s := _param_suffix(n, targets, f"{plan.path}.{t}.")) is not None}
               for t in used}
    carried = {t: _index(layers[t - 1]) for t in used}  # what each template reads of the layer before it
    # layer k's weights follow layer k-1's, as export orders them
    last_placeholder = max((n for w in weights.values() for n in w), key=_position(graph))
    prev = layers[-1]  # the latest layer's nodes, in order
    insert_after = prev[-1]
    for k in range(plan.prefix, len(plan.kinds)):
        t = plan.templates[plan.kinds[k - 1], plan.kinds[k]]
        env, last_placeholder = _add_weights(graph, weights[t], k, plan, state, targets, last_placeholder)

        def arg(x, env=env, t=t, prev=prev):
            if x in env:
                return env[x]
            if x in carried[t]:
                return prev[carried[t][x]]
            return x
        for node in layers[t]:
            with graph.inserting_after(insert_after):
                new = graph.node_copy(node, arg)
            env[node] = new
            insert_after = new
        prev = [env[n] for n in layers[t]]
    last = dict(zip(layers[-1], prev))
    for node in [*after, *outputs]:
        node.args = torch.fx.node.map_arg(node.args, lambda x: last.get(x, x))
        node.kwargs = torch.fx.node.map_arg(node.kwargs, lambda x: last.get(x, x))
    graph.lint()  # the module's Python code is not regenerated: see `run_graph`
    return targets


def _leaves(value: Any) -> list:
    out: list = []
    torch.fx.node.map_aggregate(value, lambda x: out.append(x))
    return out


def _flat_nodes(node: torch.fx.Node) -> list:
    out: list = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda x: out.append(x))
    return out


def _position(graph: torch.fx.Graph):
    order = {n: i for i, n in enumerate(graph.nodes)}
    return lambda n: order[n]


def run_graph(gm: torch.fx.GraphModule, inputs: list) -> Any:
    """`gm.graph` run node by node on `inputs` (one per placeholder, `torch.fx.Interpreter`): what `gm(*inputs)`
    returns once `gm.recompile()` has run. `replicate` leaves the module's code as export made it (regenerating
    the Python of ~70 nodes a layer cost ~3 ms a layer, more than the run itself adds): the lowering reads the
    graph, and this runs it."""
    return torch.fx.Interpreter(gm).run(*inputs)


def check_numerics(gm: torch.fx.GraphModule, targets: dict[str, str], state: dict[str, Any], model: torch.nn.Module,
                   args: tuple, kwargs: dict) -> None:
    """Run the replicated graph (`run_graph`) and the eager model on the examples; NoReuse if they differ."""
    user = iter(pytree.tree_leaves((args, kwargs)))
    inputs = [state[targets[n.name]] if n.name in targets else next(user) for n in gm.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():
        got = pytree.tree_leaves(run_graph(gm, inputs))
        want = [t for t in pytree.tree_leaves(model(*args, **kwargs)) if isinstance(t, torch.Tensor)]
    got = [t for t in got if isinstance(t, torch.Tensor)]
    if len(got) != len(want) or any(g.shape != w.shape or not torch.allclose(g, w, rtol=1e-4, atol=1e-5)
                                    for g, w in zip(got, want)):
        raise NoReuse("the replicated graph's outputs differ from the eager model's on the examples")
