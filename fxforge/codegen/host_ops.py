"""Host ops in the generated launcher: one renderer per op (`@host_renders("reshape")`) that prints
the torch expression `run()` evaluates for an op left outside every kernel.

Views print as torch views (reshape, permute, expand, slice cost no copy; kernels read them through
their strides), sources as torch constructors or weight look-ups. Every other op (externs, gathers,
host-only pointwise ops, reductions without a row kernel, a `qlinear` the template cannot run, any op
added to the table later) falls back to its reference semantics, `OPS[opcode].ref(...)`: always
correct, never a silent skip. tests/codegen/test_renderers.py checks that every op of the `view`
class, and every op without a callable reference, has a renderer here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fxforge.codegen.module_text import lit, py_shape
from fxforge.ir.graph import Op

HostRenderer = Callable[[Op, list[str], "HostContext"], str]
HOST_RENDERERS: dict[str, HostRenderer] = {}
# host ops that can write into a planned buffer (`buffers.BufferPlan`): renderer(op, xs, ctx, out) with
# `out` the buffer's expression (contiguous, the result's shape and dtype); the expression is the result
OutRenderer = Callable[[Op, list[str], "HostContext", str], str]
HOST_OUT_RENDERERS: dict[str, OutRenderer] = {}


def host_renders_out(*opcodes: str) -> Callable[[OutRenderer], OutRenderer]:
    """Register the `out=` form of these opcodes' host renderer (run() then allocates nothing for them)."""

    def deco(fn: OutRenderer) -> OutRenderer:
        HOST_OUT_RENDERERS.update(dict.fromkeys(opcodes, fn))
        return fn

    return deco


def host_renders(*opcodes: str) -> Callable[[HostRenderer], HostRenderer]:
    """Register the host renderer of these opcodes."""

    def deco(fn: HostRenderer) -> HostRenderer:
        for code in opcodes:
            if code in HOST_RENDERERS:
                raise ValueError(f"two host renderers for {code!r}")
            HOST_RENDERERS[code] = fn
        return fn

    return deco


@dataclass
class HostContext:
    """What host renderers need beyond the op: the `const` ops whose weight `run` gets encoded (read
    only by qlinear kernels), and the names of those weights (a host reader decodes its own copy)."""

    encoded: set[int] = field(default_factory=set)
    encoded_names: set[str] = field(default_factory=set)


def render_host(op: Op, xs: list[str], ctx: HostContext, out: str | None = None) -> str:
    """The torch expression of a host op; `xs` are its operands' names in `run()`; `out` the planned
    buffer it writes (an op of `HOST_OUT_RENDERERS`)."""
    if out is not None:
        return HOST_OUT_RENDERERS[op.opcode](op, xs, ctx, out)
    render = HOST_RENDERERS.get(op.opcode, _reference)
    return render(op, xs, ctx)


def _reference(op: Op, xs: list[str], ctx: HostContext) -> str:
    kw = [f"{k}={lit(v)}" for k, v in op.attrs.items()]
    return f"OPS[{op.opcode!r}].ref({', '.join(xs + kw)})"


@host_renders("const")
def _const(op: Op, xs: list[str], ctx: HostContext) -> str:
    name = op.attrs["weight"]
    if name in ctx.encoded_names and id(op) not in ctx.encoded:  # a host op reads it dense as well
        return f"_decode_weight(weights[{name!r}])"
    return f"weights[{name!r}]"


@host_renders("full")
def _full(op: Op, xs: list[str], ctx: HostContext) -> str:
    a = op.attrs
    return f"torch.full({py_shape(a['shape'])}, {lit(a['value'])}, dtype={a['dtype'].torch}, device=device)"


@host_renders("arange")
def _arange(op: Op, xs: list[str], ctx: HostContext) -> str:
    a = op.attrs
    return f"torch.arange({lit(a['start'])}, {lit(a['end'])}, {lit(a['step'])}, dtype={a['dtype'].torch}, device=device)"


@host_renders("reshape")
def _reshape(op: Op, xs: list[str], ctx: HostContext) -> str:
    return f"{xs[0]}.reshape({py_shape(op.attrs['shape'])})"  # one tuple argument: () for a scalar


@host_renders("permute")
def _permute(op: Op, xs: list[str], ctx: HostContext) -> str:
    return f"{xs[0]}.permute{lit(tuple(op.attrs['dims']))}"


@host_renders("expand")
def _expand(op: Op, xs: list[str], ctx: HostContext) -> str:
    return f"{xs[0]}.expand{py_shape(op.attrs['shape'])}"


@host_renders("slice")
def _slice(op: Op, xs: list[str], ctx: HostContext) -> str:
    a = op.attrs
    dim = a["dim"] % op.operands[0].type.rank
    step = "" if a["step"] == 1 else f":{lit(a['step'])}"
    return f"{xs[0]}[{':, ' * dim}{lit(a['start'])}:{lit(a['end'])}{step}]"


@host_renders("cat")
def _cat(op: Op, xs: list[str], ctx: HostContext) -> str:
    return f"torch.cat([{', '.join(xs)}], dim={op.attrs['dim']})"


@host_renders("embedding")
def _embedding(op: Op, xs: list[str], ctx: HostContext) -> str:
    return f"F.embedding({xs[1]}, {xs[0]})"


@host_renders_out("full")
def _full_out(op: Op, xs: list[str], ctx: HostContext, out: str) -> str:
    return f"{out}.fill_({lit(op.attrs['value'])})"


@host_renders_out("arange")
def _arange_out(op: Op, xs: list[str], ctx: HostContext, out: str) -> str:
    a = op.attrs
    return f"torch.arange({lit(a['start'])}, {lit(a['end'])}, {lit(a['step'])}, out={out})"


@host_renders_out("cat")
def _cat_out(op: Op, xs: list[str], ctx: HostContext, out: str) -> str:
    return f"torch.cat([{', '.join(xs)}], dim={op.attrs['dim']}, out={out})"


@host_renders_out("embedding")
def _embedding_out(op: Op, xs: list[str], ctx: HostContext, out: str) -> str:
    """Rows of the table gathered into the buffer viewed as [ids, dim] (index_select's out= form)."""
    dim = py_shape(op.results[0].type.shape)
    return f"torch.index_select({xs[0]}, 0, {xs[1]}.reshape(-1), out={out}.view(-1, {xs[0]}.shape[1])).view({dim})"
