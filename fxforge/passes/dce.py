"""Dead code elimination: drop ops whose results are unused and not outputs, then the weights no
`const` names any more.

Decisions:
- One backward sweep suffices: an op's users come after it, so visiting ops last to first sees
  every user removed before the op itself is considered.
- An `extern` that mutates its operands (an in-place aten op, `copy_`, `index_put_`, ...) or has
  another side effect is kept even when its results are unused; the op table's `pure` trait says
  which (`has_side_effects`). Pure ops, random ones included, are dropped when unused.
- A weight stays while a `const` op names it or an encoding refers to it (a BlockFP channel
  permutation names its weight in `perm`); everything else leaves the weight table.
"""

from __future__ import annotations

from fxforge.ir.graph import Graph, Op
from fxforge.passes.manager import PassContext


def has_side_effects(op: Op) -> bool:
    """True for ops that write to their operands or act outside the graph (the op's `pure` trait:
    for an extern, a function of its target)."""
    return not op.opdef.is_pure(op.attrs)


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
    removed = 0
    for op in reversed(list(graph.ops)):
        if has_side_effects(op):
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
