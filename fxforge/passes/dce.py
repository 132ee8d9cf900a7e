"""Dead code elimination: drop ops whose results are unused and not outputs, then the weights no
`const` names any more.

Decisions:
- One backward sweep suffices: an op's users come after it, so visiting ops last to first sees
  every user removed before the op itself is considered.
- An `extern` that mutates its operands (an in-place aten op, `copy_`, `index_put_`, ...) or has
  another side effect is kept even when its results are unused; the op table's `pure` trait says
  which (`has_side_effects`). Pure ops, random ones included, are dropped when unused. Except a write
  nobody can see (`unseen_write`): an in-place aten op on its first operand, a fresh result (not an input,
  weight or output; or a view of one nothing else reads) that only ops before it read, whose own result is unused (the router's `div_` of
  its top-k values once `moe_rules` has replaced the experts that read them).
- A weight stays while a `const` op names it or an encoding refers to it (a BlockFP channel
  permutation names its weight in `perm`); everything else leaves the weight table.
"""

from __future__ import annotations

from fxforge.ir.extern_op import OperandRef
from fxforge.ir.graph import Graph, Op
from fxforge.passes.manager import PassContext


def has_side_effects(op: Op) -> bool:
    """True for ops that write to their operands or act outside the graph (the op's `pure` trait:
    for an extern, a function of its target)."""
    return not op.opdef.is_pure(op.attrs)


def unseen_write(op: Op, outputs: set[int], order: dict[int, int]) -> bool:
    """An unused in-place aten extern writing its first operand, a fresh value only earlier ops read."""
    if op.opcode != "extern" or any(r.uses or id(r) in outputs for r in op.results) or not op.operands:
        return False
    name = str(op.attrs["target"]).split(".")
    args = tuple(op.attrs.get("args", ()))
    if len(name) < 2 or not name[1].endswith("_") or not args or args[0] != OperandRef(0) or op.attrs.get("kwargs"):
        return False
    v, chain = op.operands[0], {id(op)}

    def seen(u: Op) -> bool:  # a reader after the write, or another view (its readers may come after)
        return id(u) not in chain and (order[id(u)] > order[id(op)] or u.opdef.aliases)

    while v.producer is not None and v.producer.opdef.kernel == "view" and len(v.producer.operands[0].uses) == 1:
        if id(v) in outputs or any(map(seen, v.uses)):
            return False
        chain.add(id(v.producer))
        v = v.producer.operands[0]  # a view of a value nothing else reads: the write lands there
    p = v.producer
    if p is None or p.opcode == "const" or p.opdef.aliases or id(v) in outputs or has_side_effects(p):
        return False
    return not any(map(seen, v.uses))


def referenced_weights(graph: Graph) -> set[str]:
    """Weight names some `const` op refers to, plus those an encoding of a value or of a referenced
    weight names (a BlockFP channel permutation), transitively."""
    names = {op.attrs["weight"] for op in graph.ops if op.opcode == "const"}
    pending = [v.type.encoding for v in graph.values()] + [graph.weights[n].encoding for n in names if n in graph.weights]
    while pending:
        perm = getattr(pending.pop(), "perm", None)
        if perm and perm not in names:
            names.add(perm)
            if perm in graph.weights:
                pending.append(graph.weights[perm].encoding)
    return names


def eliminate_dead_code(graph: Graph) -> tuple[int, list[str]]:
    """Remove dead ops and unused weights; returns (ops removed, weight names removed)."""
    outputs = {id(v) for v in graph.outputs}
    order = {id(op): i for i, op in enumerate(graph.ops)}
    removed = 0
    for op in reversed(list(graph.ops)):
        if has_side_effects(op) and not unseen_write(op, outputs, order):
            continue
        if all(not r.uses and id(r) not in outputs for r in op.results):
            graph.erase(op)
            removed += 1
    keep = referenced_weights(graph)
    dropped = [name for name in graph.weights if name not in keep]
    for name in dropped:
        del graph.weights[name]
    return removed, dropped


class DeadCodeElimination:
    """stats: ops_removed, weights_removed, weight_bytes_freed."""

    name = "dce"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        sizes = {name: w.nbytes() for name, w in graph.weights.items()}
        removed, dropped = eliminate_dead_code(graph)
        ctx.stats["ops_removed"] = removed
        ctx.stats["weights_removed"] = len(dropped)
        ctx.stats["weight_bytes_freed"] = sum(sizes[n] for n in dropped)
        return graph
