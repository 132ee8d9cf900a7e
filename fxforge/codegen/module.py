"""Writes ONE readable Python module per partitioned graph: the generated `@triton.jit` kernels, then
`run(...)`.

`generate_module(graph)` needs the graph's kernel partition (`graph.partition`, set by the `fuse`
pass; codegen never partitions, and a missing or stale partition is a clear `PartitionError`). It
emits a kernel per pointwise and row group (`kernels.py`), and a launcher `run(weights, *inputs,
**sizes)` that, in graph order:
- calls each generated kernel (`grid`, constexpr tiles; dynamic dims are plain kernel arguments, so
  a new sequence length never recompiles);
- calls the templates for GEMM, qlinear and attention groups (`template_calls.py`);
- runs the other ops on the host with torch (`host_ops.py`: views, sources, externs, gathers).
The jobs live in their own modules: buffer planning (`buffers.BufferPlan`: what generated kernels,
templates with `out=` and host ops with an `out=` form write goes to buffers reused once their values
and views are dead; graph outputs never share; `_plan(device, *sizes)` makes them once per size key and
`pool.BufferPool` keeps them, so `run()` allocates nothing after a key's first call), the
render tables (`expr_ops`, `host_ops`, `template_calls`, the row bodies in `kernels`), and the
assembler (`assemble.py`: only the imports and helpers the module uses, long calls wrapped). This
module walks the steps and glues them. Weights reach `run` in its `weights` dict: dense tensors,
except the `#quantized` / `#nm` ones that only qlinear (or sparse linear) groups read, which come as their encoded `Weight`
(codes + scales in the payload): the qlinear kernels decode them tile by tile and no dequantized copy
of the weight is ever made (an encoded weight that a host op also reads is decoded for that op
alone). The module is written to a file (Triton needs the source of its kernels) and imported;
`GeneratedModule.source` is the text, `.path` its file.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from fxforge.codegen.assemble import assemble
from fxforge.codegen.buffers import GENERATED, BufferPlan, host_skipped
from fxforge.codegen.expr import ident
from fxforge.codegen.host_ops import HostContext, render_host
from fxforge.codegen.kernel_keys import kernel_for
from fxforge.codegen.kernels import KernelSource
from fxforge.codegen.loader import load_module
from fxforge.codegen.module_text import WIDTH, graph_symbols, lit, py_shape, wrap_call
from fxforge.codegen.pool import BufferPool, ThreadPools
from fxforge.codegen.template_calls import post_norm_z, render_template, template_results
from fxforge.ir.evaluate import weight_tensor
from fxforge.ir.fhash import graph_key
from fxforge.ir.graph import Graph, Op, Value, Weight
from fxforge.ir.moe_ops import by_role
from fxforge.ir.partition import KernelGroup, Partition, check_partition
from fxforge.ir.skip_ops import data_dependent_symbols

log = logging.getLogger(__name__)


@dataclass
class KernelInfo:
    """One kernel launch of the module: generated kernel or template call."""

    name: str
    kind: str  # pointwise | row | gemm | attention
    ops: list[str]
    reason: str


@dataclass
class GeneratedModule:
    """The module's source text, its `run(inputs, bindings) -> list[Tensor]` (weights bound, planned
    buffers kept per thread and size key in `pools`), and the kernels it launches. `static_outputs`:
    the outputs' buffers are reused too (a result is valid until the next call with the same sizes:
    a decode loop, a CUDA graph), so `run` allocates nothing after a size key's first call."""

    source: str
    run: Callable[[Sequence[torch.Tensor], dict[sympy.Symbol, int]], list[torch.Tensor]]
    kernels: list[KernelInfo]
    partition: Partition
    path: str = ""
    module: Any = None
    symbols: list[str] = field(default_factory=list)
    pools: ThreadPools = field(default_factory=ThreadPools)
    static_outputs: bool = False

    def pool(self) -> BufferPool:
        """This thread's buffer pool, with the module's output policy."""
        pool = self.pools.pool
        pool.static_outputs = self.static_outputs
        return pool


RESERVED = {"weights", "device", "pool", "_ws", "_plan", "_pooled"}  # names run() itself uses
# anchors whose kernel group reads a weight encoded: opcode -> whether op reads value v so (linear: `#nm`; moe: its
# experts, `#quantized` int4)
ENCODED_READERS: dict[str, Callable[[Op, Value], bool]] = {
    "qlinear": lambda op, v: op.operands[1] is v, "linear": lambda op, v: op.operands[1] is v,
    "moe": lambda op, v: any(by_role(op.operands, op.attrs)[r] is v for r in ("w_gate_up", "w_down")),
}


def encoded_consts(graph: Graph, part: Partition) -> set[int]:
    """ids of the `const` ops whose result is read only as the weight of qlinear (or `#nm` linear) kernel
    groups: `run` gets their weight encoded (a `Weight`), for the template to decode in its kernel (the
    fusion rules put an encoded linear weight in a group only when a template reads it)."""
    in_group = part.group_of()
    outputs = {id(v) for v in graph.outputs}
    out: set[int] = set()
    for op in graph.ops:
        if op.opcode != "const" or id(op.result) in outputs or op.result.type.encoding is None:
            continue
        uses = op.result.uses
        if uses and all(u.opcode in ENCODED_READERS and id(u) in in_group and ENCODED_READERS[u.opcode](u, op.result)
                        for u in uses):
            out.add(id(op))
    return out


def encoded_weights(graph: Graph, part: Partition) -> set[str]:
    """Names of the weights `run` gets encoded (see `encoded_consts`)."""
    ids = encoded_consts(graph, part)
    return {op.attrs["weight"] for op in graph.ops if id(op) in ids}


class _Writer:
    """Walks the launch steps of a partitioned graph and prints `run()`'s body, then assembles."""

    def __init__(self, graph: Graph, part: Partition) -> None:
        self.graph = graph
        self.part = part
        self.symbols = graph_symbols(graph)
        taken = set(self.symbols) | RESERVED
        self.names: dict[int, str] = {}
        for v in graph.values():
            n = ident(v.name, taken)
            taken.add(n)
            self.names[id(v)] = n
        self.plan = BufferPlan.build(graph, part)
        self.kernels: list[KernelSource] = []  # one per distinct group key (`kernel_keys`)
        self.unique: dict[str, str] = {}  # group key -> kernel name
        self.infos: list[KernelInfo] = []
        self.body: list[str] = []
        self.contiguous: set[int] = set()
        encoded = encoded_consts(graph, part)
        self.host_ctx = HostContext(encoded, {op.attrs["weight"] for op in graph.ops if id(op) in encoded})
        self.dynamic = data_dependent_symbols(graph)  # sizes a host op's result defines

    def n(self, v: Value | None) -> str:
        return "None" if v is None else self.names[id(v)]

    def write(self) -> str:
        for i, s in enumerate(self.plan.live.steps):
            if isinstance(s, Op):
                self.host(s)
            elif not s.outputs:  # dead: nothing reads it (dce removes such ops); its reads still end here
                pass
            elif s.kind in GENERATED:
                self.buffers(s)
                self.launch(s)
            else:
                self.template(s)
            dels = [self.names[vid] for vid in self.plan.dels.get(i, []) if vid in self.names]
            if dels:
                self.body.append("del " + ", ".join(sorted(dels)))
            late = [b for b in self.plan.idle_at(i) if b in self.plan.late]  # pooled buffers stay with the pool
            self.body += [f"del {buf}  # no later kernel reuses it" for buf in late]
        return self.assemble()

    # -- steps -------------------------------------------------------------------------------------
    def buffers(self, g: KernelGroup) -> None:
        """The planned buffer of each output of a generated kernel (several: horizontal fusion)."""
        for out in g.outputs:
            note = f"  # reuses {self.plan.buffer_of[id(out)]}" if id(out) in self.plan.reused else ""
            self.body.append(f"{self.n(out)} = {self.out_expr(out)}{note}")
            self.contiguous.add(id(out))

    def out_expr(self, v: Value) -> str:
        """The planned buffer `v` is written to, shaped as `v` (a late buffer is allocated here first)."""
        buf = self.plan.buffer_of[id(v)]
        if id(v) in self.plan.reused:
            return f"{buf}.view({py_shape(v.type.shape)})"
        if buf in self.plan.late:
            self.body.append(f"{buf} = torch.empty({py_shape(v.type.shape)}, dtype={v.type.dtype.torch}, "
                             "device=device)  # sized at run time")
        return buf

    def launch(self, g: KernelGroup) -> None:
        """One launch; its kernel is emitted once per functional group key (`ir.fhash.group_key`), so
        the groups of identical decoder layers share one kernel (one Triton build)."""
        ks, new = kernel_for(g, self.names, self.contiguous - {id(o) for o in g.outputs}, self.unique, len(self.infos))
        if new:
            self.kernels.append(ks)
        kname = ks.name
        self.infos.append(KernelInfo(kname, g.kind, ks.ops, g.reason))
        meta = ", ".join(f"{k}={v}" for k, v in ks.meta.items())
        self.body.append(f"if {ks.guard}:  # {g.describe()}")
        self.body += wrap_call(f"{kname}[{ks.grid}]({', '.join(ks.args)}, {meta})", "    ", WIDTH - 4)

    def template(self, g: KernelGroup) -> None:
        name = f"k{len(self.infos)}_{g.anchor.opcode if g.kind == 'gemm' else g.kind}"
        self.infos.append(KernelInfo(name, g.kind, [o.opcode for o in g.ops], g.reason))
        z = post_norm_z(g)  # a post-norm GEMM's z: its own buffer (`z_out=`)
        fresh = [o for o in g.outputs if id(o) in self.plan.buffer_of and o is not z]
        z_out = self.out_expr(z) if z is not None and id(z) in self.plan.buffer_of else None
        call = render_template(g, self.n, self.out_expr(fresh[0]) if fresh else None, "_ws", z_out)
        results = template_results(g)  # rope_cache, a post-norm GEMM: several
        outs = ", ".join(self.n(o) for o in results) + ("," if len(results) > 1 else "")
        self.body += wrap_call(f"{outs} = {call}  # {name}: {g.describe()}", "", WIDTH - 4)

    def host(self, op: Op) -> None:
        if host_skipped(op, self.plan.live, self.dynamic):
            return  # read by no step as a tensor (a `full` that kernels inline as a literal)
        res = ", ".join(self.n(r) for r in op.results) + ("," if len(op.results) > 1 else "")
        out = self.out_expr(op.results[0]) if id(op.results[0]) in self.plan.buffer_of else None
        text = render_host(op, [self.n(v) for v in op.operands], self.host_ctx, out)
        if id(op) in self.host_ctx.encoded:
            note = "host: source, encoded (decoded in the qlinear kernel)"
        else:
            reason = self.part.host.get(id(op), "")
            note = f"host: {reason.split(':')[0]}" if reason else ""
        self.body += wrap_call(f"{res} = {text}" + (f"  # {note}" if note else ""), "", WIDTH - 4)
        for sym_name, (value, axis) in self.dynamic.items():  # a data-dependent size: bound from the result
            if value.producer is op:
                self.body.append(f"{sym_name} = int({self.n(value)}.shape[{axis}])")

    def assemble(self) -> str:
        g = self.graph
        n_templates = sum(1 for i in self.infos if i.kind not in GENERATED)
        doc = {"name": g.name, "n_kernels": len(self.infos), "n_generated": len(self.kernels),
               "n_templates": n_templates, "n_host": len(self.part.host)}
        ins = [self.n(v) for v in g.inputs]
        sig = ", ".join(["weights", *ins, "*", *self.symbols, "pool=None"])
        dev = f"{ins[0]}.device" if ins else "next(iter(weights.values())).device if weights else torch.device('cpu')"
        outs = ", ".join(self.n(v) for v in g.outputs)
        lines = [f"def run({sig}):",
                 f'    """Runs @{g.name}: {len(self.infos)} kernel launches, {self.plan.n_buffers} planned buffers '
                 '(made once per sizes by `pool`)."""',
                 f"    device = {dev}"]
        pooled = self.plan.pooled
        if pooled or any(i.kind not in GENERATED for i in self.infos):
            key = ", ".join(["device", *self.symbols])
            lines += wrap_call(f"{', '.join([*pooled, '_ws'])} = _pooled(pool, _plan, "
                               f"{lit(tuple(self.plan.output_buffers()))}, {key})", "    ", WIDTH)
        lines += ["    " + s for s in self.body]
        lines.append(f"    return [{outs}]")
        plan = self.plan_lines() + [""] * 3 if any("_pooled(" in line for line in lines) else []
        return assemble(doc, [ks.text for ks in self.kernels], plan + lines)

    def plan_lines(self) -> list[str]:
        """`_plan(device, *sizes)`: the pooled buffers, made once per size key by `pool.BufferPool`."""
        lines = [f"def _plan({', '.join(['device', *self.symbols])}):",
                 '    """The planned buffers of run() at these sizes (`codegen/pool.py` keeps them per sizes)."""',
                 "    return ["]
        for buf in self.plan.pooled:
            v = self.plan.allocated_for[buf]
            lines.append(f"        torch.empty({py_shape(v.type.shape)}, dtype={v.type.dtype.torch}, device=device),"
                         f"  # {buf}")
        return lines + ["    ]"]


_SOURCES: OrderedDict[str, tuple[str, list[KernelInfo], list[str]]] = OrderedDict()
MAX_SOURCES = 64
SOURCE_STATS = {"hits": 0, "misses": 0}


def generate_source(graph: Graph) -> tuple[str, list[KernelInfo], Partition, list[str]]:
    """The module text for a partitioned graph (no triton import), its kernel list and partition.
    Cached in the process by the graph's functional hash (`ir.fhash.graph_key`, with its name): a
    second compile of the same model reuses the text (the value names in it are the first graph's;
    the code is the same) and the imported module."""
    part = check_partition(graph)
    key = graph_key(graph) + graph.name
    hit = _SOURCES.get(key)
    if hit is not None:
        SOURCE_STATS["hits"] += 1
        _SOURCES.move_to_end(key)
        return hit[0], list(hit[1]), part, list(hit[2])
    SOURCE_STATS["misses"] += 1
    w = _Writer(graph, part)
    source = w.write()
    _SOURCES[key] = (source, list(w.infos), list(w.symbols))
    if len(_SOURCES) > MAX_SOURCES:
        _SOURCES.popitem(last=False)
    return source, w.infos, part, w.symbols


def _to_device(w: torch.Tensor | Weight, device: str | torch.device) -> torch.Tensor | Weight:
    """A dense weight moved to `device`; an encoded one with its payload moved (its `data` is a
    4-byte placeholder that only gives the shape: it stays)."""
    if isinstance(w, Weight):
        return Weight(w.data, w.encoding, {k: t.to(device) for k, t in w.payload.items()})
    return w.to(device)


def generate_module(graph: Graph, device: str | torch.device | None = None) -> GeneratedModule:
    """Generate, write and import the module of a partitioned `graph`; its `run(inputs, bindings)` has
    the graph's weights bound (moved to `device` when given)."""
    source, infos, part, symbols = generate_source(graph)
    module, path = load_module(source, "".join(c if c.isalnum() else "_" for c in graph.name))
    log.debug("graph %s: %d kernel launches (%s) written to %s", graph.name, len(infos),
              ", ".join(f"{k.name}:{k.kind}" for k in infos), path)
    used = {op.attrs["weight"] for op in graph.ops if op.opcode == "const"}
    encoded = encoded_weights(graph, part)
    weights: dict[str, torch.Tensor | Weight] = {
        name: graph.weight(name) if name in encoded else weight_tensor(graph, name) for name in used}
    if device is not None:
        weights = {k: _to_device(v, device) for k, v in weights.items()}

    def run(inputs: Sequence[torch.Tensor], bindings: dict[sympy.Symbol, int]) -> list[torch.Tensor]:
        sizes = {str(k): int(v) for k, v in bindings.items()}
        missing = [s for s in symbols if s not in sizes]
        if missing:
            raise ValueError(f"run(): sizes {missing} are not bound; pass them in bindings")
        return module.run(weights, *inputs, **{s: sizes[s] for s in symbols}, pool=generated.pool())

    generated = GeneratedModule(source, run, infos, part, path, module, symbols)
    return generated


__all__ = ["GeneratedModule", "KernelInfo", "generate_module", "generate_source", "lit"]
