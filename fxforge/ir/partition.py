"""The kernel partition of a graph: which ops run together as one kernel, and why the rest run on
the host. Plain data naming ops of the graph it was made for; the `fuse` pass produces it
(`passes/fuse.py`), the graph carries it (`Graph.partition`), codegen reads it.

Decisions:
- The partition is IR-level data, not a pass's private state: codegen and the cost model read it
  without importing passes.
- It is not rewritten with the graph: a pass that changes ops after `fuse` leaves a stale
  partition, which `check_partition` detects (the ops it names are not exactly the graph's) and
  codegen refuses with a clear error instead of emitting kernels for ops that no longer exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fxforge.ir.errors import IRError
from fxforge.ir.graph import Graph, Op, Value


@dataclass
class KernelGroup:
    """One kernel: `kind` (pointwise | row | gemm, or the opcode of a lone template op: attention),
    its ops in graph order, the values it reads from outside (`inputs`) and writes (`outputs`), why
    it was grouped, and kind-specific `params` (gemm: the epilogue, row: the anchor op)."""

    kind: str
    ops: list[Op]
    inputs: list[Value]
    outputs: list[Value]
    reason: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Op:
        return self.ops[-1]

    @property
    def anchor(self) -> Op:
        """The op whose template runs the group (gemm: the GEMM, after a fused norm prologue; row: the
        row op), else the first op."""
        return self.params.get("anchor") or self.ops[0]

    def describe(self) -> str:
        return f"{self.kind}[{', '.join(op.opcode for op in self.ops)}]"


@dataclass
class Partition:
    """Kernel groups in graph order, and the host ops with the reason each stays unfused."""

    groups: list[KernelGroup]
    host: dict[int, str]  # id(op) -> reason
    host_ops: dict[str, str] = field(default_factory=dict)  # "%name = opcode" -> reason

    def group_of(self) -> dict[int, KernelGroup]:
        return {id(op): g for g in self.groups for op in g.ops}

    def covers(self, graph: Graph) -> bool:
        """Does it name exactly the graph's ops (each once, in a group or on the host)?"""
        ids = {id(op) for op in graph.ops}
        covered = {id(op) for g in self.groups for op in g.ops} | set(self.host)
        return covered == ids

    def stats(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for g in self.groups:
            kinds[g.kind] = kinds.get(g.kind, 0) + 1
        reasons: dict[str, int] = {}
        for op_reason in self.host.values():
            reasons[op_reason] = reasons.get(op_reason, 0) + 1
        return {
            "kernels": len(self.groups),
            "kinds": dict(sorted(kinds.items())),
            "fused_ops": sum(len(g.ops) for g in self.groups),
            "groups": [g.describe() for g in self.groups],
            "unfused": dict(sorted(reasons.items())),
            "host_ops": dict(self.host_ops),
        }


class PartitionError(IRError):
    """A graph without a (current) kernel partition was handed to code that needs one."""


def check_partition(graph: Graph) -> Partition:
    """The graph's partition; raises `PartitionError` when `fuse` did not run or the ops changed since."""
    part = graph.partition
    if part is None:
        raise PartitionError(f"graph @{graph.name} has no kernel partition: run the `fuse` pass last "
                             "(fxforge.passes.fuse.fuse(graph), or a pipeline ending in 'fuse') before codegen")
    if not part.covers(graph):
        raise PartitionError(f"graph @{graph.name}: its kernel partition is stale (ops changed after `fuse`); "
                             "run the `fuse` pass again after the last pass that rewrites the graph")
    return part
