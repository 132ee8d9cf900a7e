"""The op table's traits against the render tables and the passes that read them: every op whose
`kernel` trait says it can be in a kernel has a renderer; host ops render (or fall back to their
reference); a new op with traits is one table entry, and cse/dce/fuse/codegen follow its traits."""

from __future__ import annotations

import pytest
import torch

from fxforge.codegen import generate_module
from fxforge.codegen.buffers import BufferPlan
from fxforge.codegen.expr_ops import KERNEL_RENDERERS
from fxforge.codegen.host_ops import HOST_RENDERERS
from fxforge.codegen.kernels import ROW_RENDERERS
from fxforge.codegen.template_calls import TEMPLATE_RENDERERS
from fxforge.codegen.templates.gemm import ACTIVATIONS, PARAM_ACTIVATIONS
from fxforge.ir.dtypes import DType
from fxforge.ir.evaluate import evaluate
from fxforge.ir.graph import Graph
from fxforge.ir.ops import KERNEL_CLASSES, OPS, OpDef, activations, ops_with, register
from fxforge.ir.optable import OperandRef
from fxforge.ir.types import TensorType
from fxforge.passes.cse import eliminate_common_subexpressions
from fxforge.passes.dce import eliminate_dead_code
from fxforge.passes.fuse import fuse

TABLES = {"pointwise": KERNEL_RENDERERS, "row": ROW_RENDERERS, "gemm": TEMPLATE_RENDERERS,
          "template": TEMPLATE_RENDERERS, "view": HOST_RENDERERS}


@pytest.mark.parametrize("kernel", sorted(TABLES))
def test_every_op_of_a_kernel_class_has_a_renderer(kernel):
    missing = [name for name in ops_with(kernel) if name not in TABLES[kernel]]
    assert not missing, f"ops of kernel class {kernel!r} without a renderer: {missing}"


def test_no_renderer_for_an_op_of_another_class():
    for kernel, table in TABLES.items():
        classes = {k for k, t in TABLES.items() if t is table}
        stale = [name for name in table if name in OPS and OPS[name].kernel not in classes | {"host"}]
        assert not stale, (kernel, stale)
        assert all(name in OPS for name in table), [n for n in table if n not in OPS]


def test_host_ops_without_a_callable_reference_have_a_host_renderer():
    assert [name for name, d in OPS.items() if d.ref is None and name not in HOST_RENDERERS] == []
    assert set(KERNEL_CLASSES) >= {d.kernel for d in OPS.values()}


def test_the_gemm_template_computes_every_activation_trait():
    assert set(activations()) == set(ACTIVATIONS + PARAM_ACTIVATIONS) - {"none"}


@pytest.fixture
def new_op():
    """A pointwise op added to the table by one entry (host-only: no kernel renderer)."""
    name = "test_square_plus"
    register(OpDef(name, (2, 2), {}, lambda types, attrs: [types[0]], lambda a, b: a * a + b * b, "pointwise",
                   "test_square_plus(a, b) = a*a + b*b", commutative=True))
    yield name
    del OPS[name]


def test_a_new_op_is_one_entry_and_the_passes_follow_its_traits(new_op):
    g = Graph()
    x = g.add_input("x", TensorType((3, 5), DType.f32))
    y = g.add_input("y", TensorType((3, 5), DType.f32))
    a = g.add_op(new_op, [x, y]).result
    b = g.add_op(new_op, [y, x]).result  # commutative: CSE merges it into a
    g.set_outputs([g.add_op("exp", [g.add_op("add", [a, b]).result]).result])
    assert eliminate_common_subexpressions(g) == {new_op: 1}
    mod = generate_module(fuse(g))
    assert [k.kind for k in mod.kernels] == ["pointwise"]  # the host op stays out of the kernel
    assert f"OPS[{new_op!r}].ref(x, y)" in mod.source and "from fxforge.ir.ops import OPS" in mod.source
    xs, ys = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(mod.run([xs, ys], {})[0], evaluate(g, [xs, ys])[0])


def test_dce_keeps_impure_externs_by_trait():
    g = Graph()
    x = g.add_input("x", TensorType((4,), DType.f32))
    g.add_op("extern", [x], {"target": "aten.add_.Tensor", "args": (OperandRef(0), OperandRef(0))},
             result_types=[TensorType((4,), DType.f32)])
    g.add_op("extern", [x], {"target": "aten.rand_like.default", "args": (OperandRef(0),)},
             result_types=[TensorType((4,), DType.f32)])
    g.set_outputs([x])
    removed, _ = eliminate_dead_code(g)
    assert removed == 1 and [op.attrs["target"] for op in g.ops] == ["aten.add_.Tensor"]


def test_buffer_plan_is_public_and_reuses_dead_buffers():
    g = Graph()
    x = g.add_input("x", TensorType((8, 40), DType.f32))
    a = g.add_op("exp", [x]).result
    b = g.add_op("add", [a, a]).result  # a has two uses: its own kernel and buffer (a row kernel reads it)
    c = g.add_op("softmax", [b], {"dim": -1}).result
    d = g.add_op("mul", [c, c]).result
    e = g.add_op("cos", [d]).result
    g.set_outputs([g.add_op("softmax", [g.add_op("add", [e, e]).result], {"dim": -1}).result])
    plan = BufferPlan.build(g, fuse(g).partition)
    assert len(plan.live.steps) == 4 and plan.n_buffers == 3  # e reuses a's buffer; the output never shares
    assert plan.buffer_of[id(e)] == plan.buffer_of[id(a)] and id(e) in plan.reused
    assert plan.allocated_at == {"buf0": 0, "buf1": 1, "buf2": 3}



def test_host_sizes_print_max_and_min_as_python():
    """A sliding window's decode step under fxforge.compile has `max(0, s0 - w)` in an extern's arguments: run() printed
    sympy's `Max(...)`, a NameError (Mistral with a window, Gemma2/3 through the JIT path)."""
    import sympy

    from fxforge.codegen.module_text import lit

    s0 = sympy.Symbol("s0", integer=True, positive=True)
    text = lit((sympy.Max(0, s0 - 5), sympy.Min(s0, 7)))
    assert eval(text, {"s0": 3}) == (0, 3) and eval(text, {"s0": 9}) == (4, 7)


def test_import_lines_read_whole_names_whose_attributes_are_read():
    from fxforge.codegen.assemble import import_lines

    code = "x = torch.zeros(1)\ny = a.tl.arange(4)\nz = mytorch.q + F\nw = _linear(x)\n"
    assert import_lines(code) == ["import torch", "", "from fxforge.codegen.templates.gemm import linear as _linear"]
    assert import_lines(code, "k = tl.load(p)\n")[1] == "import triton.language as tl"  # every part is read
