"""One copy of a norm per GEMM that computes it in its load (issue #13: parallel blocks, Cohere).

A parallel decoder block feeds one normed input to its attention and its MLP:

    %h = layer_norm(%x, %w); %qkv = linear(%h, %wqkv); %gu = linear(%h, %wgu)
 -> %h = layer_norm(%x, %w); %qkv = linear(%h, %wqkv); %h2 = layer_norm(%x, %w); %gu = linear(%h2, %wgu)

The GEMM's norm prologue (`norm_prologues.norm_prologue`) takes a single-use norm only (the fused kernel never
writes the normed rows out), so a norm read by two GEMMs ran as a row kernel of its own. With one copy per
GEMM each one computes it in its load (a second pass over K of the same rows) and the row kernel goes.

Decisions:
- Only when every reader is a GEMM whose template takes that norm as its prologue (`norm_prologue(shared=True)`:
  the same checks but the single use), reading it as its input x alone; else the norm stays one row kernel.
- Runs for the generated-kernel executors, after the passes that pick the GEMMs (concat_linears, decode_layout)
  and after cse (which would merge the copies back), right before fuse's partition.
"""

from __future__ import annotations

from fxforge.ir.graph import Graph, Op
from fxforge.passes.fusion_rules import gemm_rule
from fxforge.passes.manager import PassContext
from fxforge.passes.norm_prologues import NORM_PROLOGUES, norm_prologue


def _prologue_reader(u: Op, norm: Op, graph: Graph) -> bool:
    """u reads norm's result as its GEMM input only, and its template would compute that norm in its load."""
    rule = gemm_rule(u)
    y = norm.result
    return (
        rule is not None
        and rule.norm
        and u.operands[0] is y
        and all(v is not y for v in u.operands[1:])
        and norm_prologue(u, graph, shared=True) is norm
    )


def copy_shared_norms(graph: Graph) -> int:
    """Give each GEMM reader of a shared norm its own copy (module notes); the number of copies made."""
    copies = 0
    for norm in [op for op in graph.ops if op.opcode in NORM_PROLOGUES and len(op.results) == 1]:
        y, readers = norm.result, list(norm.result.uses)
        if len(readers) < 2 or any(y is o for o in graph.outputs):
            continue
        if not all(_prologue_reader(u, norm, graph) for u in readers):
            continue
        for u in readers[1:]:
            copy = graph.insert_before(u, norm.opcode, list(norm.operands), dict(norm.attrs))
            graph.set_operand(u, 0, copy.result)
            copies += 1
    return copies


class NormCopies:
    name = "norm_copies"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        ctx.stats["copies"] = copy_shared_norms(graph)
        return graph
