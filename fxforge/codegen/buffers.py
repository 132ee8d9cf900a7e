"""Buffer planning for a generated module: the launch steps in order, liveness, and which planned
buffer each tensor a step produces is written to.

`BufferPlan.build(graph, partition)` walks the steps `run()` will take (a host op, or a kernel group
at its root's place) and decides, for every value a step writes with storage of its own, a planned
buffer: a new one, or one whose values (and every view of them) are dead, of the same element count
and dtype. The writers are generated (pointwise/row) kernels, template calls that take `out=`
(`template_calls.takes_out`: GEMM, matmul, attention, rope_cache) and host ops with an `out=` form
(`host_ops.HOST_OUT_RENDERERS`: embedding, arange, full, cat). Graph outputs get buffers of their own
and never share. The module writer prints the plan as `_plan(device, *sizes)` (every buffer, made once
per size key by `pool.BufferPool`) and binds each step's result to its buffer; the memory benchmark
(benchmarks/kernel_counts.py) reads the same plan to count bytes.

`plan.allocating` lists the steps that still allocate on every call (an extern, a host op run through
its torch reference, a template without `out=` such as qlinear, a value sized by a data-dependent
symbol): empty for a decode step (tests/runtime/test_alloc_free.py), so its `run()` allocates nothing
after the first call of a size key and a CUDA graph captures it without its private pool.

Decisions:
- Storage is tracked per alias root: a view (or an extern's result, which may be a torch view) keeps
  its source alive; an extern's storage belongs to torch and is never reused.
- A step's fresh results are the outputs that alias nothing (`rope_cache` returns q fresh and the two
  caches it wrote in place); only those take buffers.
- Planned buffers are contiguous, so kernels read them without strides; a template writes its result
  into its buffer as the result's contiguous layout.
- A value sized by a data-dependent symbol (FFN skipping's kept rows) cannot be made before `run()`
  binds that size: its buffer is `late`, allocated at its step as before (and listed in `allocating`).
- `idle_after` still says when a buffer falls idle (the memory benchmark's peak); the pool keeps every
  buffer for the module's life, so the planned bytes are the pool's sum (liveness reuse keeps it near
  the peak), not freed mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import sympy

from fxforge.codegen.host_ops import HOST_OUT_RENDERERS
from fxforge.codegen.kernels import numel_expr
from fxforge.codegen.template_calls import post_norm_z, takes_out
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.partition import KernelGroup, Partition, PartitionError
from fxforge.ir.skip_ops import data_dependent_symbols

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
        norm = p.get("norm")  # a fused norm prologue: the GEMM reads its input (`norm_x`) and weights, not its result
        lead = [p.get("norm_x") or norm.operands[0], *norm.operands[1:]] if norm is not None else [root.operands[0]]
        post = p.get("post_norm")  # z = res + norm(h) in the load: reads h, the norm's weight and res, not z
        lead = [*post.reads, *lead[1:]] if post is not None else lead
        return [*lead, *root.operands[1:], *[v for v in extra if v is not None]]
    if step.kind in ("rope_cache", "kv_attention"):  # several ops, one template call reading the group's inputs
        return list(step.inputs)
    return list(step.anchor.operands)


def launch_steps(graph: Graph, part: Partition) -> list[Step]:
    """Host ops in graph order, and each kernel group at its root's place, except that a step reading a result of a
    group whose root comes later waits for that group (`_after_producers`)."""
    group_of = part.group_of()
    last = {id(g.root): g for g in part.groups}
    out: list[Step] = []
    for op in graph.ops:
        g = group_of.get(id(op))
        if g is None:
            out.append(op)
        elif id(op) in last:
            out.append(last[id(op)])
    return _after_producers(out)


def _after_producers(steps: list[Step]) -> list[Step]:
    """`steps` in their order, but each step after the steps producing what it reads: a group runs at its root's place,
    and an op between its members may read an earlier member's result (Ministral3's position-scaled q reads the roped
    q that rope_cache, rooted at the cache write, produces). A step that must wait moves just past what it waits for,
    with its own readers; the rest keep their place."""
    produced_by = {id(v): i for i, s in enumerate(steps) for v in (s.results if isinstance(s, Op) else s.outputs)}
    reads = [s.operands if isinstance(s, Op) else s.inputs for s in steps]
    needs = [{produced_by[id(v)] for v in vs if id(v) in produced_by} - {i} for i, vs in enumerate(reads)]
    if all(max(n, default=-1) < i for i, n in enumerate(needs)):
        return steps
    done: set[int] = set()
    order: list[int] = []
    waiting: list[int] = []
    for i in range(len(steps)):
        waiting.append(i)
        progress = True
        while progress:  # emit every waiting step whose producers ran, in step order
            ready = [j for j in waiting if needs[j] <= done]
            progress = bool(ready)
            for j in ready:
                waiting.remove(j)
                done.add(j)
                order.append(j)
    if waiting:
        names = ", ".join(s.opcode if isinstance(s, Op) else s.describe() for s in (steps[j] for j in waiting))
        raise PartitionError(f"kernel groups read each other's results in a cycle ({names}): the fuse pass grouped "
                             "ops that cannot run as one kernel; report this graph")
    return [steps[j] for j in order]


@lru_cache(maxsize=4096)
def _numel(shape: tuple) -> sympy.Expr:
    """A shape's element count, simplified (cached: sympy's simplify costs ~5 ms, and a deep model repeats
    the same few shapes hundreds of times)."""
    return sympy.simplify(numel_expr(shape))


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


def host_skipped(op: Op, live: Liveness, dynamic: dict) -> bool:
    """A pure host op no step reads as a tensor (a `full` kernels inline as a literal) and that binds
    no size: `run()` leaves it out."""
    defines = any(v.producer is op for v, _ in dynamic.values())
    return op.opdef.is_pure(op.attrs) and not defines and not any(id(r) in live.needed for r in op.results)


@dataclass
class BufferPlan:
    """Which planned buffer each fresh step result is written to, and when names and buffers die.

    `buffer_of[id(v)]` is the buffer name (`buf3`); `reused` holds the values that take a buffer an
    earlier value left; `allocated_for[buf]` the value a buffer was allocated for (its size and dtype)
    and `allocated_at[buf]` that step; `late` the buffers allocated at their step (sized by a
    data-dependent symbol); `idle_after[buf]` the step after which no later step takes it; `dels[i]`
    the values whose names die after step i (last read; never graph outputs); `allocating` the steps
    (index, what) whose results torch still allocates on every call."""

    live: Liveness
    buffer_of: dict[int, str] = field(default_factory=dict)
    reused: set[int] = field(default_factory=set)
    allocated_for: dict[str, Value] = field(default_factory=dict)
    allocated_at: dict[str, int] = field(default_factory=dict)
    idle_after: dict[str, int] = field(default_factory=dict)
    dels: dict[int, list[int]] = field(default_factory=dict)
    late: set[str] = field(default_factory=set)
    allocating: list[tuple[int, str]] = field(default_factory=list)
    dynamic: dict = field(default_factory=dict)

    @property
    def n_buffers(self) -> int:
        return len(self.allocated_for)

    @property
    def pooled(self) -> list[str]:
        """The buffers `_plan` makes once per size key, in order."""
        return [b for b in self.allocated_for if b not in self.late]

    def output_buffers(self) -> list[int]:
        """Positions in `pooled` of the buffers graph outputs live in (fresh per call unless static)."""
        return [i for i, b in enumerate(self.pooled) if self.live.root_of(self.allocated_for[b]) in self.live.keep]

    @classmethod
    def build(cls, graph: Graph, part: Partition) -> BufferPlan:
        live = Liveness.of(graph, part)
        plan = cls(live, dynamic=data_dependent_symbols(graph))
        outputs = {id(v) for v in graph.outputs}
        release_at: dict[int, list[int]] = {}
        for vid, i in live.last_read.items():
            release_at.setdefault(i, []).append(vid)
        for vid, i in live.value_last.items():
            if vid not in outputs:
                plan.dels.setdefault(i, []).append(vid)
        free: dict[tuple, list[str]] = {}
        holder: dict[int, str] = {}  # alias root -> the buffer it holds until released
        sig: dict[int, tuple] = {}
        for i, s in enumerate(live.steps):
            for out in plan.fresh(i, s):  # several for a horizontally fused pointwise group
                plan.place(out, i, free, holder, sig, shared=live.root_of(out) not in live.keep)
            for vid in release_at.get(i, []):
                if vid in holder and vid not in live.keep and vid not in live.extern_aliases:
                    buf = holder.pop(vid)
                    free.setdefault(sig[vid], []).append(buf)
                    plan.idle_after[buf] = i
        return plan

    def fresh(self, i: int, s: Step) -> list[Value]:
        """The results step `i` writes into planned buffers; a step whose results torch allocates is
        noted in `allocating` instead."""
        if isinstance(s, Op):
            if s.opcode == "const" or s.opdef.kernel == "view" or host_skipped(s, self.live, self.dynamic):
                return []
            if s.opcode in HOST_OUT_RENDERERS and not any(v.producer is s for v, _ in self.dynamic.values()):
                return list(s.results)
            self.allocating.append((i, f"host {s.opcode}"))
            return []
        if s.kind in GENERATED:
            return list(s.outputs)
        new = [o for o in s.outputs if self.live.root_of(o) == id(o)]
        if new and (len([o for o in new if o is not post_norm_z(s)]) > 1 or not takes_out(s)):  # one `out=` (+ z_out=)
            self.allocating.append((i, f"template {s.describe()} (no out=)"))
            return []
        return new

    def place(self, out: Value, step: int, free: dict[tuple, list[str]], holder: dict[int, str],
              sig: dict[int, tuple], shared: bool) -> None:
        key = (_numel(tuple(out.type.shape)), out.type.dtype)
        if shared and free.get(key):
            buf = free[key].pop()
            self.idle_after.pop(buf, None)
            self.reused.add(id(out))
        else:
            buf = f"buf{len(self.allocated_for)}"
            self.allocated_for[buf] = out
            self.allocated_at[buf] = step
            if {str(s) for s in key[0].free_symbols} & set(self.dynamic):
                self.late.add(buf)
                self.allocating.append((step, f"{buf}: sized at run time"))
        self.buffer_of[id(out)] = buf
        if shared:
            holder[id(out)] = buf
            sig[id(out)] = key

    def idle_at(self, step: int) -> list[str]:
        """Buffers that fall idle after `step` and that no later step takes."""
        return sorted((b for b, i in self.idle_after.items() if i == step), key=lambda b: int(b[3:]))
