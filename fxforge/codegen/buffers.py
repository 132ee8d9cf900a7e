"""Buffer planning for a generated module: the launch steps in order, liveness, and which planned
buffer each kernel output is written to.

`BufferPlan.build(graph, partition)` walks the steps `run()` will take (a host op, or a kernel group
at its root's place) and decides, for every output of a generated (pointwise/row) kernel, a pool
buffer: a new one, or one whose values (and every view of them) are dead, of the same element count
and dtype. Graph outputs get buffers of their own and never share. The module writer prints the
plan (`torch.empty`, `.view` of a reused buffer, `del` after last reads); the memory benchmark
(benchmarks/kernel_counts.py) reads the same plan to count bytes.

Decisions:
- Storage is tracked per alias root: a view (or an extern's result, which may be a torch view) keeps
  its source alive; an extern's storage belongs to torch and is never reused.
- Template calls (GEMM, attention) allocate their own results; only generated kernels write into
  planned buffers (their outputs are contiguous, so kernels read them without strides).
- A pool buffer no later kernel takes is deleted where it fell idle, not at `return`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from fxforge.codegen.kernels import numel_expr
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.partition import KernelGroup, Partition

Step = KernelGroup | Op
GENERATED = ("pointwise", "row")  # kernel kinds whose outputs go to planned buffers


def _is_literal(v: Value) -> bool:
    return v.producer is not None and v.producer.opcode == "full"


def tensor_reads(step: Step) -> list[Value]:
    """The values a step reads as tensors (a generated kernel inlines `full` operands as literals)."""
    if isinstance(step, Op):
        return list(step.operands)
    if step.kind in GENERATED:
        return [v for v in step.inputs if not _is_literal(v)]
    if step.kind == "gemm":
        p, root = step.params, step.anchor
        extra = [p["bias"], p.get("mul"), p["residual"], p.get("keep")]
        norm = p.get("norm")  # a fused rms_norm prologue: the GEMM reads the norm's operands, not its result
        lead = list(norm.operands) if norm is not None else [root.operands[0]]
        return [*lead, *root.operands[1:], *[v for v in extra if v is not None]]
    if step.kind in ("rope_cache", "kv_attention"):  # several ops, one template call reading the group's inputs
        return list(step.inputs)
    return list(step.anchor.operands)


def launch_steps(graph: Graph, part: Partition) -> list[Step]:
    """Host ops in graph order, and each kernel group at its root's place."""
    group_of = part.group_of()
    last = {id(g.root): g for g in part.groups}
    out: list[Step] = []
    for op in graph.ops:
        g = group_of.get(id(op))
        if g is None:
            out.append(op)
        elif id(op) in last:
            out.append(last[id(op)])
    return out


@dataclass
class Liveness:
    """What buffer planning needs to know about a module's steps (value ids are `id(Value)`)."""

    steps: list[Step]  # in launch order
    needed: set[int]  # values some step (or the graph's return) reads
    root: dict[int, int]  # value -> the value whose storage it aliases (views, externs)
    last_read: dict[int, int]  # alias root -> last step reading it
    value_last: dict[int, int]  # value -> last step reading it
    keep: set[int]  # alias roots of graph outputs (never reused)
    extern_aliases: set[int]  # alias roots of extern results (storage torch owns)

    @classmethod
    def of(cls, graph: Graph, part: Partition) -> Liveness:
        steps = launch_steps(graph, part)
        needed: set[int] = {id(v) for v in graph.outputs}
        for s in steps:
            needed |= {id(v) for v in tensor_reads(s)}
        root: dict[int, int] = {}
        for s in steps:
            for op in ([s] if isinstance(s, Op) else s.ops if s.kind not in GENERATED else []):
                if not op.opdef.aliases:
                    continue
                srcs = [root.get(id(v), id(v)) for v in op.operands]
                for r in op.results:
                    root[id(r)] = srcs[0] if srcs else id(r)
        last_read: dict[int, int] = {}
        value_last: dict[int, int] = {}
        for i, s in enumerate(steps):
            for v in tensor_reads(s):
                last_read[root.get(id(v), id(v))] = i
                value_last[id(v)] = i
        keep = {root.get(id(v), id(v)) for v in graph.outputs}
        # results of aliasing ops that are not plain views (externs): torch may keep their storage
        opaque = {root.get(id(r), id(r)) for s in steps if isinstance(s, Op) and s.opdef.aliases
                  and s.opdef.kernel != "view" for r in s.results}
        return cls(steps, needed, root, last_read, value_last, keep, opaque)

    def root_of(self, v: Value) -> int:
        return self.root.get(id(v), id(v))


@dataclass
class BufferPlan:
    """Which pool buffer each generated-kernel output is written to, and when names and buffers die.

    `buffer_of[id(v)]` is the buffer name (`buf3`); `reused` holds the outputs that take a buffer an
    earlier value left; `allocated_for[buf]` the value a buffer was allocated for (its size and dtype)
    and `allocated_at[buf]` that step; `idle_after[buf]` the step after which no later kernel takes
    it; `dels[i]` the values whose names die after step i (last read; never graph outputs)."""

    live: Liveness
    buffer_of: dict[int, str] = field(default_factory=dict)
    reused: set[int] = field(default_factory=set)
    allocated_for: dict[str, Value] = field(default_factory=dict)
    allocated_at: dict[str, int] = field(default_factory=dict)
    idle_after: dict[str, int] = field(default_factory=dict)
    dels: dict[int, list[int]] = field(default_factory=dict)

    @property
    def n_buffers(self) -> int:
        return len(self.allocated_for)

    @classmethod
    def build(cls, graph: Graph, part: Partition) -> BufferPlan:
        live = Liveness.of(graph, part)
        plan = cls(live)
        outputs = {id(v) for v in graph.outputs}
        release_at: dict[int, list[int]] = {}
        for vid, i in live.last_read.items():
            release_at.setdefault(i, []).append(vid)
        for vid, i in live.value_last.items():
            if vid not in outputs:
                plan.dels.setdefault(i, []).append(vid)
        free: dict[tuple, list[str]] = {}
        holder: dict[int, str] = {}  # alias root -> the pool buffer it holds until released
        sig: dict[int, tuple] = {}
        for i, s in enumerate(live.steps):
            if isinstance(s, KernelGroup) and s.kind in GENERATED:
                for out in s.outputs:  # several for a horizontally fused pointwise group
                    plan.place(out, i, free, holder, sig, shared=id(out) not in outputs)
            for vid in release_at.get(i, []):
                if vid in holder and vid not in live.keep and vid not in live.extern_aliases:
                    buf = holder.pop(vid)
                    free.setdefault(sig[vid], []).append(buf)
                    plan.idle_after[buf] = i
        return plan

    def place(self, out: Value, step: int, free: dict[tuple, list[str]], holder: dict[int, str],
              sig: dict[int, tuple], shared: bool) -> None:
        key = (sympy.simplify(numel_expr(out.type.shape)), out.type.dtype)
        if shared and free.get(key):
            buf = free[key].pop()
            self.idle_after.pop(buf, None)
            self.reused.add(id(out))
        else:
            buf = f"buf{len(self.allocated_for)}"
            self.allocated_for[buf] = out
            self.allocated_at[buf] = step
        self.buffer_of[id(out)] = buf
        if shared:
            holder[id(out)] = buf
            sig[id(out)] = key

    def idle_at(self, step: int) -> list[str]:
        """Pool buffers that fall idle after `step` and that no later kernel takes (deleted there)."""
        return sorted((b for b, i in self.idle_after.items() if i == step), key=lambda b: int(b[3:]))
