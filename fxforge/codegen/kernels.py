"""Kernel emitters: a pointwise or row `KernelGroup` -> the source of one `@triton.jit` kernel plus
what its launcher passes.

- Pointwise: one program per BLOCK of the flattened output; operands are loaded through
  `expr.IndexSpace` offsets (broadcast dims stride 0, strided views through their runtime strides),
  the expression tree is printed by `expr_ops.ExprBuilder` (one renderer per op), one contiguous
  store per output (a horizontally fused group has several trees of one domain shape: each input is
  loaded once).
- Row (`softmax`, `log_softmax`, `layer_norm`, `rms_norm`, and `sum`/`mean`/`amax` over the last
  dim): one program per block of ROWS rows, the whole row in one BLOCK_N tile (BLOCK_N = the row
  length rounded up to a power of two: rows up to 65536 elements), masks on both axes, fp32 math.
  Pointwise producers are computed in the load (prologue); normalising ops also apply their
  trailing pointwise consumers before the store (epilogue). The row body of each anchor is a
  renderer of `ROW_RENDERERS` (`@row_renders("softmax")`), from the fp32 row tile `_x` to `_y`.
Text only: nothing here imports triton; `module.py` assembles and loads the module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy

from fxforge.codegen.expr import TL_DTYPES, IndexSpace, held, pyexpr
from fxforge.codegen.expr_ops import ExprBuilder
from fxforge.codegen.module_text import def_lines, wrap_call
from fxforge.codegen.row_renderers import ROW_RENDERERS
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Value
from fxforge.ir.partition import KernelGroup
from fxforge.ir.printer import print_op
from fxforge.ir.types import Dim

POINTWISE_BLOCK = 1024
ROW_TILE = 4096  # ROWS * BLOCK_N elements per row program


@dataclass
class KernelSource:
    """One generated kernel: its source, and the launch: `args` (Python expressions of `run()`,
    aligned with `params`), `grid` and constexpr `meta` expressions, and the numel guard."""

    name: str
    kind: str
    text: str
    params: list[str]
    args: list[str]
    grid: str
    meta: dict[str, str]
    setup: list[str] = field(default_factory=list)
    guard: str = "True"
    ops: list[str] = field(default_factory=list)


class Naming:
    """What the emitters need to know about values: their names inside the kernel (`names`), their
    names in `run()` (`run_names`, what the launch passes; the kernel's names when not given), and
    which are contiguous buffers written by our kernels. Kernels are emitted with canonical local
    names (`canonical_naming`), so identical groups give identical text and share one kernel."""

    def __init__(self, names: dict[int, str], contiguous: set[int], run_names: dict[int, str] | None = None) -> None:
        self.names = names
        self.contiguous = contiguous
        self.run_names = names if run_names is None else run_names

    def name(self, v: Value) -> str:
        return self.names[id(v)]

    def arg(self, v: Value) -> str:
        return self.run_names[id(v)]


def canonical_naming(group: KernelGroup, run_names: dict[int, str], contiguous: set[int]) -> Naming:
    """Kernel-local names by position (`in0..` for inputs, `t0..` for results): the text of a group's
    kernel then depends only on what it computes (`ir.fhash.group_key`), not on the model's names."""
    names = {id(v): f"in{k}" for k, v in enumerate(group.inputs)}
    for op in group.ops:
        for r in op.results:
            names.setdefault(id(r), f"t{len(names) - len(group.inputs)}")
    return Naming(names, contiguous, run_names)


def shape_text(shape: tuple[Dim, ...]) -> str:
    items = [pyexpr(d) for d in shape]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def numel_expr(shape: tuple[Dim, ...]) -> sympy.Expr:
    return sympy.Mul(*[sympy.sympify(d) for d in shape])


def _symbols(*shapes: tuple[Dim, ...]) -> list[str]:
    out: set[str] = set()
    for shape in shapes:
        for d in shape:
            if not isinstance(d, int):
                out |= {str(s) for s in sympy.sympify(d).free_symbols}
    return sorted(out)


def _full_value(v: Value) -> Any:
    p = v.producer
    return p.attrs["value"] if p is not None and p.opcode == "full" else None


def stride_params(v: Value, name: str, space: IndexSpace, domain: tuple[Dim, ...], params: list[str],
                  args: list[str], arg: str | None = None) -> list[Any]:
    """Symbolic strides of a non-contiguous input in the kernel's domain: one `{name}_st{i}` kernel
    parameter per dim it really indexes (0 where broadcast), filled at launch by `_bstrides`."""
    pad = len(domain) - v.type.rank
    bcast = space.broadcast(v.type.shape)
    used = [i for i in range(len(domain)) if i >= pad and not bcast[i] and space.idx[i] != 0]
    strides: list[Any] = [0] * v.type.rank
    for i in used:
        strides[i - pad] = sympy.Symbol(f"{name}_st{i}")
        params.append(f"{name}_st{i}")
    if used:
        args.append(f"*_bstrides({arg or name}, {shape_text(domain)}, {tuple(used)!r})")
    return strides


class _Loads:
    """Loads every group input through the index space; records kernel params and launcher args."""

    def __init__(self, group: KernelGroup, space: IndexSpace, naming: Naming, b: ExprBuilder, domain: tuple[Dim, ...]):
        self.params: list[str] = []
        self.args: list[str] = []
        self.lines: list[str] = []
        self.shapes: list[tuple[Dim, ...]] = [domain]
        for v in group.inputs:
            lit = _full_value(v)
            if lit is not None:
                b.bind(v, "", held(v.type.dtype), lit)
                continue
            name = naming.name(v)
            self.params.append(f"{name}_ptr")
            self.args.append(naming.arg(v))
            self.shapes.append(v.type.shape)
            strides = (None if id(v) in naming.contiguous
                       else stride_params(v, name, space, domain, self.params, self.args, naming.arg(v)))
            off = space.offset(v.type.shape, strides)
            dtype = v.type.dtype
            other = "0.0" if dtype.is_float else "0"
            text = f"tl.load({name}_ptr + {off}, mask=_mask, other={other})"
            if held(dtype) != dtype:
                text += ".to(tl.float32)"
            self.lines.append(f"{name} = {text}")
            b.bind(v, name, held(dtype))


def _docstring(group: KernelGroup, naming: Naming) -> str:
    body = "\n    ".join(print_op(op, naming.name).strip() for op in group.ops)
    return f'    """{group.reason}:\n    {body}\n    """'


def _store_cast(value: Value, b: ExprBuilder) -> str:
    text = b.cv(value, held(value.type.dtype))
    if held(value.type.dtype) != value.type.dtype:
        text = f"{text}.to({TL_DTYPES[value.type.dtype]})"
    return text


@dataclass
class _Ctx:
    """Where a value is computed: the builder holding its names, index substitutions (the shifted
    index of a `cat` operand), the extra load mask, and the suffix of its variable names."""

    b: ExprBuilder
    subs: dict
    cond: str = ""
    suffix: str = ""


class _Pointwise:
    """Emits a pointwise group from its root, operands first; a fused `cat` emits each operand's
    subtree in its own context (index shifted by the operand's start along the cat dim)."""

    def __init__(self, group: KernelGroup, naming: Naming, space: IndexSpace, domain: tuple[Dim, ...]) -> None:
        self.group, self.naming, self.space, self.domain = group, naming, space, domain
        self.members = {id(op) for op in group.ops}
        self.lines: list[str] = []
        self.params: list[str] = []
        self.args: list[str] = []
        self.strides: dict[int, list[Any] | None] = {}
        self.n_ctx = 0
        for v in group.inputs:  # kernel parameters: once per input, whatever the contexts
            if _full_value(v) is not None:
                continue
            name = naming.name(v)
            self.params.append(f"{name}_ptr")
            self.args.append(naming.arg(v))
            self.strides[id(v)] = (None if id(v) in naming.contiguous
                                   else stride_params(v, name, space, domain, self.params, self.args, naming.arg(v)))

    def ctx(self, subs: dict, cond: str, suffix: str) -> _Ctx:
        b = ExprBuilder()
        b.lines = self.lines
        return _Ctx(b, subs, cond, suffix)

    def value(self, v: Value, ctx: _Ctx) -> None:
        if id(v) in ctx.b.refs:
            return
        p = v.producer
        if p is not None and id(p) in self.members:
            if p.opcode == "cat":
                self.cat(p, ctx)
                return
            for x in p.operands:
                self.value(x, ctx)
            ctx.b.emit(p, self.naming.name(p.result) + ctx.suffix)
            return
        lit = _full_value(v)
        if lit is not None:
            ctx.b.bind(v, "", held(v.type.dtype), lit)
            return
        name = self.naming.name(v)
        off = self.space.offset(v.type.shape, self.strides[id(v)], ctx.subs)
        dtype = v.type.dtype
        text = f"tl.load({name}_ptr + {off}, mask=_mask{ctx.cond}, other={'0.0' if dtype.is_float else '0'})"
        if held(dtype) != dtype:
            text += ".to(tl.float32)"
        self.lines.append(f"{name}{ctx.suffix} = {text}")
        ctx.b.bind(v, name + ctx.suffix, held(dtype))

    def cat(self, op, ctx: _Ctx) -> None:
        out = op.result
        rank = out.type.rank
        d = op.attrs["dim"] % rank
        idx = self.space.idx[d + len(self.domain) - rank]
        cur = sympy.sympify(idx).xreplace(ctx.subs) if ctx.subs else sympy.sympify(idx)
        r = held(out.type.dtype)
        lo: Any = sympy.Integer(0)
        parts = []
        for i, x in enumerate(op.operands):
            hi = lo + sympy.sympify(x.type.shape[d])
            conds = ([f"({pyexpr(cur)} >= {pyexpr(lo)})"] if i > 0 else []) + (
                [f"({pyexpr(cur)} < {pyexpr(hi)})"] if i < len(op.operands) - 1 else [])
            cond = " & ".join(conds)
            self.n_ctx += 1
            sub = self.ctx({**ctx.subs, idx: cur - lo} if lo != 0 else dict(ctx.subs),
                           ctx.cond + (f" & {cond}" if cond else ""), f"_{self.n_ctx}")
            self.value(x, sub)
            parts.append((cond, sub.b.cv(x, r)))
            lo = hi
        text = parts[-1][1]
        for cond, t in reversed(parts[:-1]):
            text = f"tl.where({cond}, {t}, {text})"
        name = self.naming.name(out) + ctx.suffix
        self.lines.append(f"{name} = {text}")
        ctx.b.bind(out, name, r)


def pointwise_kernel(group: KernelGroup, kname: str, naming: Naming) -> KernelSource:
    outs = group.outputs
    domain = outs[0].type.shape
    space = IndexSpace(domain)
    em = _Pointwise(group, naming, space, domain)
    root = em.ctx({}, "", "")
    for out in outs:
        em.value(out, root)
    shapes = [domain] + [v.type.shape for v in group.inputs] + [op.result.type.shape for op in group.ops]
    shapes += [x.type.shape for op in group.ops for x in op.operands]
    syms = _symbols(*shapes)
    out_names = [naming.name(out) for out in outs]
    params = em.params + [f"{name}_ptr" for name in out_names] + ["n_elements"] + syms
    n = pyexpr(numel_expr(domain))
    lines = [
        *def_lines(kname, [*params, "BLOCK: tl.constexpr"]),
        _docstring(group, naming),
        "    _offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)",
        "    _mask = _offs < n_elements",
        *["    " + s for s in space.index_lines],
        *[w for s in em.lines for w in wrap_call(s, "    ")],
        *[f"    tl.store({name}_ptr + _offs, {_store_cast(out, root.b)}, mask=_mask)" for name, out in zip(out_names, outs)],
    ]
    return KernelSource(
        kname, "pointwise", "@triton.jit\n" + "\n".join(lines), params,
        em.args + [naming.arg(out) for out in outs] + [n] + syms,
        f"(triton.cdiv({n}, {POINTWISE_BLOCK}),)", {"BLOCK": str(POINTWISE_BLOCK)},
        guard=f"{n} > 0", ops=[op.opcode for op in group.ops])


def row_kernel(group: KernelGroup, kname: str, naming: Naming) -> KernelSource:
    anchor = group.params["anchor"]
    x = anchor.operands[0]
    domain = x.type.shape
    n_cols, n_rows = sympy.sympify(domain[-1]), numel_expr(domain[:-1])
    space = IndexSpace(domain, rows=True)
    b = ExprBuilder()
    loads = _Loads(group, space, naming, b, domain)
    pos = group.ops.index(anchor)
    for op in group.ops[:pos]:
        b.emit(op, naming.name(op.result))
    code = anchor.opcode
    r = anchor.result.type.dtype
    reduce_only = anchor.opdef.category == "reduction"  # one value per row, stored at the row index
    render = ROW_RENDERERS.get(code)
    if render is None:
        raise NotImplementedError(f"no row kernel for {code!r} (add a @row_renders entry)")
    body = [f"_x = tl.where(_mask, {b.cv(x, DType.f32)}, 0.0)", *render(anchor, b)]
    if r in (DType.f16, DType.bf16):
        body.append(f"_y = _y.to({TL_DTYPES[r]}).to(tl.float32)")
    if held(r) != DType.f32:
        body.append(f"_y = _y.to({TL_DTYPES[held(r)]})")
    b.lines += body
    b.bind(anchor.result, "_y", held(r))
    for op in group.ops[pos + 1:]:
        b.emit(op, naming.name(op.result))
    out = group.outputs[0]
    oname = naming.name(out)
    if reduce_only:
        store = f"tl.store({oname}_ptr + _rows, {_store_cast(out, b)}, mask=_rows < n_rows)"
    else:
        store = f"tl.store({oname}_ptr + {space.offset(domain, None)}, {_store_cast(out, b)}, mask=_mask)"
    syms = _symbols(*loads.shapes)
    params = loads.params + [f"{oname}_ptr", "n_rows", "n_cols"] + syms
    lines = [
        *def_lines(kname, [*params, "ROWS: tl.constexpr", "BLOCK_N: tl.constexpr"]),
        _docstring(group, naming),
        "    _rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)",
        "    _r = _rows[:, None]",
        "    _c = tl.arange(0, BLOCK_N)[None, :]",
        "    _mask = (_r < n_rows) & (_c < n_cols)",
        *["    " + s for s in space.index_lines],
        *[w for s in loads.lines for w in wrap_call(s, "    ")],
        *["    " + s for s in b.lines],
        f"    {store}",
    ]
    nr, nc = pyexpr(n_rows), pyexpr(n_cols)
    return KernelSource(
        kname, "row", "@triton.jit\n" + "\n".join(lines), params,
        loads.args + [naming.arg(out), nr, nc] + syms,
        f"(triton.cdiv({nr}, _rows_per_program({nc})),)",
        {"ROWS": f"_rows_per_program({nc})", "BLOCK_N": f"_block_n({nc})"},
        guard=f"{nr} * {nc} > 0", ops=[op.opcode for op in group.ops])
