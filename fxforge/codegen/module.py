"""Writes ONE readable Python module per graph: the generated `@triton.jit` kernels, then `run(...)`.

`generate_module(graph)` partitions the graph (`passes.fuse.partition`), emits a kernel per pointwise
and row group (`kernels.py`), and a launcher `run(weights, *inputs, **sizes)` that, in graph order:
- calls each generated kernel (`grid`, constexpr tiles; dynamic dims are plain kernel arguments, so
  a new sequence length never recompiles);
- calls the GEMM template (`templates.gemm.linear` with its epilogue parameters, or `matmul`), the
  quantized GEMM template for `qlinear` groups (`templates.qlinear.qlinear`, same epilogue) and the
  flash-attention template (`templates.attention.attention`);
- runs views as torch views on the host (reshape, permute, expand, slice cost no copy; kernels read
  them through their strides), and externs, sources, cat and gathers as torch calls.
Outputs of our kernels go to buffers planned by liveness: a buffer whose values (and views of them)
are all dead is reused by a later kernel output of the same element count and dtype. Graph outputs
never share. Weights reach `run` in its `weights` dict: dense tensors, except the `#quantized` ones
that only qlinear groups read, which come as their encoded `Weight` (codes + scales in the payload):
the qlinear kernels decode them tile by tile and no dequantized copy of the weight is ever made (an
encoded weight that a host op also reads is decoded for that op alone). The module is written to a
file (Triton needs the source of its kernels) and imported; `GeneratedModule.source` is the text,
`.path` its file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from fxforge.codegen.expr import PRELUDE, ident
from fxforge.codegen.kernels import KernelSource, Naming, numel_expr, pointwise_kernel, row_kernel
from fxforge.codegen.loader import load_module
from fxforge.codegen.module_text import HEADER, HELPERS, graph_symbols, lit, py_shape
from fxforge.ir.evaluate import weight_tensor
from fxforge.ir.graph import Graph, Op, Value, Weight
from fxforge.ir.skip_ops import data_dependent_symbols
from fxforge.passes.fuse import partition
from fxforge.passes.fusion_rules import KernelGroup, Partition


def gemm_anchor(g: KernelGroup) -> Op:
    """The GEMM of a gemm group: its first op, but for a hadamard fused into a qlinear (graph order puts it first)."""
    return next(o for o in g.ops if o.opcode != "hadamard")


ALIASING = ("reshape", "permute", "expand", "slice", "extern")  # results may share their operand's storage

@dataclass
class KernelInfo:
    """One kernel launch of the module: generated kernel or template call."""

    name: str
    kind: str  # pointwise | row | gemm | attention
    ops: list[str]
    reason: str


@dataclass
class GeneratedModule:
    """The module's source text, its `run(inputs, bindings) -> list[Tensor]` (weights bound), and
    the kernels it launches."""

    source: str
    run: Callable[[Sequence[torch.Tensor], dict[sympy.Symbol, int]], list[torch.Tensor]]
    kernels: list[KernelInfo]
    partition: Partition
    path: str = ""
    module: Any = None
    symbols: list[str] = field(default_factory=list)


def encoded_consts(graph: Graph, part: Partition) -> set[int]:
    """ids of the `const` ops whose result is read only as the weight of qlinear kernel groups:
    `run` gets their weight encoded (a `Weight`), for the qlinear template to decode in its kernel."""
    in_group = part.group_of()
    outputs = {id(v) for v in graph.outputs}
    out: set[int] = set()
    for op in graph.ops:
        if op.opcode != "const" or id(op.result) in outputs or op.result.type.encoding is None:
            continue
        uses = op.result.uses
        if uses and all(u.opcode == "qlinear" and id(u) in in_group and u.operands[1] is op.result for u in uses):
            out.add(id(op))
    return out


def encoded_weights(graph: Graph, part: Partition) -> set[str]:
    """Names of the weights `run` gets encoded (see `encoded_consts`)."""
    ids = encoded_consts(graph, part)
    return {op.attrs["weight"] for op in graph.ops if id(op) in ids}


@dataclass
class Liveness:
    """What buffer planning needs to know about a module's steps (value ids are `id(Value)`)."""

    steps: list  # KernelGroup | Op, in launch order
    needed: set[int]  # values some step (or the graph's return) reads
    root: dict[int, int]  # value -> the value whose storage it aliases (views, externs)
    last_read: dict[int, int]  # alias root -> last step reading it
    value_last: dict[int, int]  # value -> last step reading it
    keep: set[int]  # alias roots of graph outputs (never reused)
    extern_aliases: set[int]  # alias roots of extern results (storage torch owns)


class _Writer:
    def __init__(self, graph: Graph, part: Partition) -> None:
        self.graph = graph
        self.part = part
        self.symbols = graph_symbols(graph)
        taken = set(self.symbols)
        self.names: dict[int, str] = {}
        for v in graph.values():
            n = ident(v.name, taken)
            taken.add(n)
            self.names[id(v)] = n
        self.group_of = part.group_of()
        self.outputs = {id(v) for v in graph.outputs}
        self.kernels: list[KernelSource] = []
        self.infos: list[KernelInfo] = []
        self.body: list[str] = []
        self.contiguous: set[int] = set()
        self.encoded = encoded_consts(graph, part)
        self.encoded_names = {op.attrs["weight"] for op in graph.ops if id(op) in self.encoded}
        self.uses: set[str] = set()  # optional imports the body needs: "qlinear", "decode_weight"
        self.dynamic = data_dependent_symbols(graph)

    def n(self, v: Value | None) -> str:
        return "None" if v is None else self.names[id(v)]

    # -- what each step reads as a tensor --------------------------------------------------------
    def tensor_reads(self, step: KernelGroup | Op) -> list[Value]:
        if isinstance(step, Op):
            return list(step.operands)
        if step.kind in ("pointwise", "row"):
            return [v for v in step.inputs if not (v.producer is not None and v.producer.opcode == "full")]
        if step.kind == "gemm":
            p, root = step.params, gemm_anchor(step)
            extra = [p["bias"], p.get("mul"), p["residual"]]
            operands = list(root.operands)
            if p.get("hadamard"):  # rotated inside the kernel: it reads the hadamard's input
                operands[0] = p["hadamard"][1]
            return [*operands, *[v for v in extra if v is not None]]
        return list(step.ops[0].operands)

    def steps(self) -> list[KernelGroup | Op]:
        out: list[KernelGroup | Op] = []
        last = {id(g.root): g for g in self.part.groups}
        for op in self.graph.ops:
            g = self.group_of.get(id(op))
            if g is None:
                out.append(op)
            elif id(op) in last:
                out.append(last[id(op)])
        return out

    def liveness(self) -> Liveness:
        """Steps in order, and for each value's storage (its alias root) the last step reading it."""
        steps = self.steps()
        needed: set[int] = {id(v) for v in self.graph.outputs}
        for s in steps:
            needed |= {id(v) for v in self.tensor_reads(s)}
        root: dict[int, int] = {}
        for s in steps:
            if isinstance(s, Op) and s.opcode in ALIASING:
                srcs = [root.get(id(v), id(v)) for v in s.operands]
                for r in s.results:
                    root[id(r)] = srcs[0] if srcs else id(r)
        last_read: dict[int, int] = {}
        value_last: dict[int, int] = {}
        for i, s in enumerate(steps):
            for v in self.tensor_reads(s):
                last_read[root.get(id(v), id(v))] = i
                value_last[id(v)] = i
        keep = {root.get(id(v), id(v)) for v in self.graph.outputs}
        extern_aliases = {root.get(id(r), id(r)) for s in steps if isinstance(s, Op) and s.opcode == "extern"
                          for r in s.results}
        return Liveness(steps, needed, root, last_read, value_last, keep, extern_aliases)

    def write(self) -> str:
        live = self.liveness()
        steps, needed, last_read, value_last = live.steps, live.needed, live.last_read, live.value_last
        keep, extern_aliases = live.keep, live.extern_aliases
        free: dict[tuple, list[str]] = {}
        buffer_of: dict[int, str] = {}
        release_at: dict[int, list[int]] = {}
        for vid, i in last_read.items():
            release_at.setdefault(i, []).append(vid)
        dels_at: dict[int, list[int]] = {}
        for vid, i in value_last.items():
            if vid not in self.outputs:
                dels_at.setdefault(i, []).append(vid)
        n_buffers = 0
        sig: dict[int, tuple] = {}
        idle_since: dict[str, int] = {}  # free pool buffer -> body line where it fell idle
        for i, s in enumerate(steps):
            if isinstance(s, Op):
                if s.opcode == "full" and not any(id(r) in needed for r in s.results):
                    continue
                self.host(s)
            elif not s.outputs:  # dead: nothing reads it (dce removes such ops)
                continue
            elif s.kind in ("pointwise", "row"):
                for out in s.outputs:  # several for a horizontally fused pointwise group
                    key = (sympy.simplify(numel_expr(out.type.shape)), out.type.dtype)
                    can_share = id(out) not in self.outputs
                    if can_share and free.get(key):
                        buf = free[key].pop()
                        idle_since.pop(buf, None)
                        self.body.append(f"{self.n(out)} = {buf}.view({py_shape(out.type.shape)})  # reuses {buf}")
                    else:
                        buf = f"buf{n_buffers}"
                        n_buffers += 1
                        self.body.append(f"{buf} = torch.empty({py_shape(out.type.shape)}, dtype={out.type.dtype.torch}, "
                                         "device=device)")
                        self.body.append(f"{self.n(out)} = {buf}")
                    if can_share:
                        buffer_of[id(out)] = buf
                        sig[id(out)] = key
                    self.contiguous.add(id(out))
                self.launch(s)
            else:
                self.template(s)
            released = []
            for vid in release_at.get(i, []):
                if vid in buffer_of and vid not in keep and vid not in extern_aliases:
                    released.append(buffer_of.pop(vid))
                    free.setdefault(sig[vid], []).append(released[-1])
            dels = [self.names[vid] for vid in dels_at.get(i, []) if vid in self.names]
            if dels:
                self.body.append("del " + ", ".join(sorted(dels)))
            idle_since.update(dict.fromkeys(released, len(self.body)))
        # A pool buffer that no later kernel takes is freed where it fell idle, not at return.
        for buf, at in sorted(idle_since.items(), key=lambda item: -item[1]):
            self.body.insert(at, f"del {buf}  # no later kernel reuses it")
        return self.assemble(n_buffers)

    # -- steps -------------------------------------------------------------------------------------
    def launch(self, g: KernelGroup) -> None:
        kname = f"k{len(self.infos)}_{g.params['anchor'].opcode if g.kind == 'row' else g.root.opcode}"
        naming = Naming(self.names, self.contiguous - {id(o) for o in g.outputs})
        ks = (row_kernel if g.kind == "row" else pointwise_kernel)(g, kname, naming)
        self.kernels.append(ks)
        self.infos.append(KernelInfo(kname, g.kind, ks.ops, g.reason))
        meta = ", ".join(f"{k}={v}" for k, v in ks.meta.items())
        self.body.append(f"if {ks.guard}:  # {g.describe()}")
        self.body.append(f"    {kname}[{ks.grid}]({', '.join(ks.args)}, {meta})")

    def template(self, g: KernelGroup) -> None:
        op, out = (gemm_anchor(g) if g.kind == "gemm" else g.ops[0]), self.n(g.outputs[0])
        name = f"k{len(self.infos)}_{op.opcode}"
        self.infos.append(KernelInfo(name, g.kind, [o.opcode for o in g.ops], g.reason))
        if g.kind == "hadamard":
            self.uses.add("hadamard")
            self.body.append(f"{out} = _hadamard({self.n(op.operands[0])}, block={op.attrs['block']})  # {name}")
            return
        if g.kind == "attention":
            a = op.attrs
            args = [self.n(v) for v in op.operands]
            kw = [f"scale={lit(a['scale'])}", f"is_causal={a['is_causal']}", f"enable_gqa={a['enable_gqa']}"]
            self.body.append(f"{out} = _attention({', '.join(args + kw)})  # {name}")
            return
        p = g.params
        if op.opcode == "qlinear":
            self.qlinear(g, out, name)
            return
        epilogue = (p["bias"] is not None or p["residual"] is not None or p.get("mul") is not None
                    or p["activation"] != "none" or p["out_dtype"])
        if op.opcode == "matmul" and not epilogue:
            kw = [f"scale={p['scale']!r}"] if p["scale"] != 1.0 else []
            self.body.append(f"{out} = _matmul({', '.join([self.n(v) for v in op.operands] + kw)})  # {name}: {g.describe()}")
            return
        x, w = op.operands[0], op.operands[1]
        wt = f"{self.n(w)}.t()" if op.opcode == "matmul" else self.n(w)  # matmul(a, b) = linear(a, b^T)
        bias = op.operands[2] if len(op.operands) > 2 else p["bias"]
        args = [self.n(x), wt] + ([self.n(bias)] if bias is not None else [])
        if p["activation"] != "none":
            args.append(f"activation={p['activation']!r}")
        if p.get("mul") is not None:
            args.append(f"mul={self.n(p['mul'])}")
        if p["residual"] is not None:
            args.append(f"residual={self.n(p['residual'])}")
        if p["scale"] != 1.0:
            args.append(f"scale={p['scale']!r}")
        if p["out_dtype"] is not None:
            args.append(f"out_dtype={p['out_dtype'].torch}")
        self.body.append(f"{out} = _linear({', '.join(args)})  # {name}: {g.describe()}")

    def qlinear(self, g: KernelGroup, out: str, name: str) -> None:
        """`_qlinear(x, w, scheme, [bias], lorc=(u, v), <epilogue>)`: w is the encoded `Weight`."""
        op, p = gemm_anchor(g), g.params
        x, w, *rest = op.operands
        lorc = rest[-2:] if op.attrs["lorc_rank"] > 0 else []
        bias = rest[0] if len(rest) == len(lorc) + 1 else p["bias"]
        if p.get("hadamard"):  # x = hadamard(x0): rotated in the activation quantization kernel
            x = p["hadamard"][1]
        args = [self.n(x), self.n(w), repr(op.attrs["scheme"])] + ([self.n(bias)] if bias is not None else [])
        if p.get("hadamard"):
            args.append(f"hadamard={p['hadamard'][0]}")
        if lorc:
            args.append(f"lorc=({self.n(lorc[0])}, {self.n(lorc[1])})")
        if p["activation"] != "none":
            args.append(f"activation={p['activation']!r}")
        if p["residual"] is not None:
            args.append(f"residual={self.n(p['residual'])}")
        if p["out_dtype"] is not None:
            args.append(f"out_dtype={p['out_dtype'].torch}")
        self.uses.add("qlinear")
        self.body.append(f"{out} = _qlinear({', '.join(args)})  # {name}: {g.describe()}")

    def host(self, op: Op) -> None:
        res = ", ".join(self.n(r) for r in op.results)
        a = op.attrs
        xs = [self.n(v) for v in op.operands]
        code = op.opcode
        if code == "const" and id(op) in self.encoded:
            self.body.append(f"{res} = weights[{a['weight']!r}]  # host: source, encoded (decoded in the qlinear kernel)")
            return
        if code == "const" and a["weight"] in self.encoded_names:  # a host op reads it dense as well
            self.uses.add("decode_weight")
            text = f"_decode_weight(weights[{a['weight']!r}])"
        elif code == "const":
            text = f"weights[{a['weight']!r}]"
        elif code == "full":
            text = f"torch.full({py_shape(a['shape'])}, {lit(a['value'])}, dtype={a['dtype'].torch}, device=device)"
        elif code == "arange":
            text = f"torch.arange({lit(a['start'])}, {lit(a['end'])}, {lit(a['step'])}, dtype={a['dtype'].torch}, device=device)"
        elif code == "reshape":
            text = f"{xs[0]}.reshape{py_shape(a['shape'])}"
        elif code == "permute":
            text = f"{xs[0]}.permute{lit(tuple(a['dims']))}"
        elif code == "expand":
            text = f"{xs[0]}.expand{py_shape(a['shape'])}"
        elif code == "slice":
            rank = op.operands[0].type.rank
            dim = a["dim"] % rank
            step = "" if a["step"] == 1 else f":{lit(a['step'])}"
            text = f"{xs[0]}[{':, ' * dim}{lit(a['start'])}:{lit(a['end'])}{step}]"
        elif code == "cat":
            text = f"torch.cat([{', '.join(xs)}], dim={a['dim']})"
        elif code == "embedding":
            text = f"F.embedding({xs[1]}, {xs[0]})"
        else:
            kw = [f"{k}={lit(v)}" for k, v in a.items()]
            text = f"OPS[{code!r}].ref({', '.join(xs + kw)})"
        reason = self.part.host.get(id(op), "")
        if len(op.results) > 1:
            res = res + ","
        self.body.append(f"{res} = {text}  # host: {reason.split(':')[0]}" if reason else f"{res} = {text}")
        for sym_name, (value, axis) in self.dynamic.items():  # a data-dependent size: bound from the result
            if value.producer is op:
                self.body.append(f"{sym_name} = int({self.n(value)}.shape[{axis}])")

    def assemble(self, n_buffers: int) -> str:
        g = self.graph
        n_templates = sum(1 for i in self.infos if i.kind in ("gemm", "attention", "hadamard"))
        head = HEADER.format(name=g.name, n_kernels=len(self.infos), n_generated=len(self.kernels),
                             n_templates=n_templates, n_host=len(self.part.host))
        head += ("from fxforge.codegen.templates.attention import attention as _attention\n"
                 "from fxforge.codegen.templates.gemm import linear as _linear, matmul as _matmul\n")
        if "qlinear" in self.uses:
            head += "from fxforge.codegen.templates.qlinear import qlinear as _qlinear\n"
        if "hadamard" in self.uses:
            head += "from fxforge.codegen.templates.hadamard import hadamard as _hadamard\n"
        if "decode_weight" in self.uses:
            head += "from fxforge.ir.lowp_ops import decode_weight as _decode_weight\n"
        parts = [head, PRELUDE, HELPERS.format(tile=4096)]
        for ks in self.kernels:
            parts.append("\n" + ks.text + "\n")
        ins = [self.n(v) for v in g.inputs]
        sig = ", ".join(["weights", *ins] + (["*"] + self.symbols if self.symbols else []))
        dev = f"{ins[0]}.device" if ins else "next(iter(weights.values())).device if weights else torch.device('cpu')"
        outs = ", ".join(self.n(v) for v in g.outputs)
        lines = [f"def run({sig}):", f'    """Runs @{g.name}: {len(self.infos)} kernel launches, {n_buffers} planned buffers."""',
                 f"    device = {dev}"]
        lines += ["    " + s for s in self.body]
        lines.append(f"    return [{outs}]")
        parts.append("\n\n" + "\n".join(lines) + "\n")
        return "\n".join(parts)


def _fused_partition(graph: Graph) -> Partition | None:
    """The partition the `fuse` pass left on the graph, if it still describes exactly these ops."""
    part = getattr(graph, "kernel_groups", None)
    if not isinstance(part, Partition):
        return None
    ids = {id(op) for op in graph.ops}
    covered = {id(op) for g in part.groups for op in g.ops} | set(part.host)
    return part if covered == ids else None


def generate_source(graph: Graph, part: Partition | None = None) -> tuple[str, list[KernelInfo], Partition, list[str]]:
    """The module text for a graph (no triton import), its kernel list and partition."""
    if part is None:
        part = _fused_partition(graph) or partition(graph)
    w = _Writer(graph, part)
    source = w.write()
    return source, w.infos, part, w.symbols


def _to_device(w: torch.Tensor | Weight, device: str | torch.device) -> torch.Tensor | Weight:
    """A dense weight moved to `device`; an encoded one with its payload moved (its `data` is a
    4-byte placeholder that only gives the shape: it stays)."""
    if isinstance(w, Weight):
        return Weight(w.data, w.encoding, {k: t.to(device) for k, t in w.payload.items()})
    return w.to(device)


def generate_module(graph: Graph, part: Partition | None = None, device: str | torch.device | None = None) -> GeneratedModule:
    """Generate, write and import the module of `graph`; its `run(inputs, bindings)` has the graph's
    weights bound (moved to `device` when given)."""
    source, infos, part, symbols = generate_source(graph, part)
    module, path = load_module(source, "".join(c if c.isalnum() else "_" for c in graph.name))
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
        return module.run(weights, *inputs, **{s: sizes[s] for s in symbols})

    return GeneratedModule(source, run, infos, part, path, module, symbols)


__all__ = ["GeneratedModule", "KernelInfo", "generate_module", "generate_source", "lit"]
