"""xIELU (Apertus' MLP activation, transformers' `XIELUActivation`) against torch: its python path (the CPU one, the
reference here) becomes one `xielu` op (`passes/xielu_rules.py`) with the learned scalars read from the graph, which
the dense GEMM computes in its epilogue (`linear(activation="xielu", act_args=)`); the ops it is written with
(expm1, softplus, min(x, eps)) are table ops with kernels of their own, not externs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.activations import XIELUActivation

from fxforge.codegen import generate_module
from fxforge.codegen.templates.gemm import linear
from fxforge.errors import ShapeError
from fxforge.ir import evaluate, verify
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph
from fxforge.ir.ops import OPS
from fxforge.ir.types import TensorType
from fxforge.passes import PassContext
from fxforge.passes.canonicalize import Canonicalize
from fxforge.passes.constant_fold import ConstantFold
from fxforge.passes.cse import CommonSubexpressionElimination
from fxforge.passes.fuse import fuse, partition

ULP = 1.2e-7


def _xielu(dtype=torch.float32) -> XIELUActivation:
    """Learned-looking scalars, none of them the defaults."""
    act = XIELUActivation(alpha_p_init=0.55, alpha_n_init=1.3, beta=0.45, eps=-2e-6, dtype=dtype)
    assert act._xielu_cuda_obj is None  # the python path (the CUDA one is a different kernel)
    return act


def _scalars(act: XIELUActivation) -> tuple[float, ...]:
    """(alpha_p, alpha_n, beta, eps) as the python path computes them."""
    with torch.no_grad():
        return (F.softplus(act.alpha_p).item(), (act.beta + F.softplus(act.alpha_n)).item(), act.beta.item(),
                act.eps.item())


def _values() -> torch.Tensor:
    """Both branches, the tiny negatives where exp(x) - 1 would lose every digit, and the limits."""
    tiny = -torch.logspace(-8, -3, 40)
    return torch.cat([tiny, -torch.logspace(-3, 2, 40), torch.logspace(-8, 2, 40),
                      torch.tensor([0.0, -0.0, -2e-6, 1e-30, -1e-30])])


def test_xielu_op_is_torch_python_path_bit_for_bit():
    act, x = _xielu(), _values()
    with torch.no_grad():
        assert torch.equal(OPS["xielu"].ref(x, *_scalars(act)), act(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gemm_xielu_epilogue(dtype):
    """y = x @ w.T with x = I holds w's values exactly, so the epilogue is compared element by element."""
    act = _xielu()
    v = _values()
    w = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))].reshape(5, 25).T.contiguous()
    x = torch.eye(5, dtype=dtype)
    with torch.no_grad():
        want = act(w.to(dtype).float().T)
    got = linear(x, w.to(dtype), activation="xielu", act_args=_scalars(act))
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=4 * ULP, atol=0.0)
    else:  # one rounding of the fp32 result
        torch.testing.assert_close(got, want.half(), rtol=1e-3, atol=0.0)
    with pytest.raises(ShapeError, match="act_args"):
        linear(x, w.to(dtype), activation="xielu")


def test_expm1_softplus_xielu_kernels():
    """The pointwise kernels of the ops (no GEMM): a few ulp of torch."""
    act, xs = _xielu(), _values()
    g = Graph()
    x = g.add_input("x", TensorType((xs.numel(),), DType.f32))
    outs = [g.add_op("expm1", [x]).result, g.add_op("softplus", [x], {"beta": 1.0, "threshold": 20.0}).result,
            g.add_op("xielu", [x], dict(zip(("alpha_p", "alpha_n", "beta", "eps"), _scalars(act)))).result]
    g.set_outputs(outs)
    mod = generate_module(fuse(g))
    assert "_expm1" in mod.source and "_xielu" in mod.source
    got = mod.run([xs], {})
    with torch.no_grad():
        for have, want in zip(got, (torch.expm1(xs), F.softplus(xs), act(xs)), strict=True):
            torch.testing.assert_close(have, want, rtol=4 * ULP, atol=1.2e-38)  # denormals: softplus(-100)


class _Mlp(torch.nn.Module):
    """Apertus' MLP: up -> xIELU -> down."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(16, 48, bias=False), torch.nn.Linear(48, 16, bias=False)
        self.act = _xielu()

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def test_xielu_chain_is_one_op_in_the_up_gemm():
    from fxforge.frontend.export import capture_export

    torch.manual_seed(0)
    mlp, x = _Mlp().eval(), torch.randn(2, 3, 16)
    g = capture_export(mlp, (x,)).lowered.graph
    assert not [op for op in g.ops if op.opcode == "extern"]  # expm1, softplus, minimum: table ops
    want = evaluate(g, [x])[0]
    for p in (Canonicalize(), ConstantFold(), CommonSubexpressionElimination(), Canonicalize()):
        p.run(g, PassContext())
    verify(g)
    (op,) = [op for op in g.ops if op.opcode == "xielu"]
    assert tuple(op.attrs[k] for k in ("alpha_p", "alpha_n", "beta", "eps")) == _scalars(mlp.act)
    assert not {"where", "expm1", "softplus", "minimum"} & {op.opcode for op in g.ops}
    torch.testing.assert_close(evaluate(g, [x])[0], want, rtol=1e-6, atol=1e-7)  # GEMMs: MKL's bits vary
    gemms = [grp for grp in partition(g).groups if grp.kind == "gemm"]
    assert sorted(grp.params["activation"] for grp in gemms) == ["none", "xielu"]


def test_apertus_decode_step_close_to_eager():
    """Apertus (random weights, xIELU scalars moved off their init) through `compile_decoder(executor="interpret")`: the
    prefill step's logits close to eager's (its GEMMs are not torch's bits), xIELU in the up GEMM, no extern."""
    import fxforge
    from fxforge.runtime.generate import StaticKVCache
    from fxforge.testing import gqa_decoder

    model = gqa_decoder("apertus", layers=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("alpha_p", "alpha_n"):
                p.add_(torch.randn_like(p) / 4)
    ids = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits
    dec = fxforge.compile_decoder(model, max_length=8, executor="interpret")
    got = dec(ids, torch.arange(6), StaticKVCache.for_step(dec.graph).tensors)
    got = got[0] if isinstance(got, (tuple, list)) else got
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not [op for op in dec.graph.ops if op.opcode in ("extern", "where", "expm1")]
    acts = [g.params["activation"] for g in dec.graph.partition.groups if g.kind == "gemm"]
    assert acts.count("xielu") == 1
