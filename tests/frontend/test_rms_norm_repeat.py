"""Lowerings of torch's own RMSNorm (`nn.RMSNorm`: `aten.rms_norm`), `Tensor.repeat`, a python float beside a 0-d
tensor (DiffLlama's lambda + lambda_init), masked_fill and complex values (as real pairs), each against eager, with no
extern left."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.errors import CaptureError


class _TorchNorms(torch.nn.Module):
    def __init__(self, eps: float | None) -> None:
        super().__init__()
        self.norm = torch.nn.RMSNorm(32, eps=eps)
        self.bare = torch.nn.RMSNorm(32, eps=eps, elementwise_affine=False)
        with torch.no_grad():
            self.norm.weight.add_(torch.randn(32) / 4)

    def forward(self, x):
        return self.norm(x), self.bare(x) * 2


@pytest.mark.parametrize("dtype,eps", [(torch.float32, 1e-6), (torch.float16, None), (torch.bfloat16, 1e-5)])
def test_torch_rms_norm_lowers_bit_for_bit(dtype, eps):
    """fp32 math, a 16-bit weight multiplied in fp32 before the one rounding, eps None finfo(fp32).eps: torch's."""
    torch.manual_seed(0)
    model, x = _TorchNorms(eps).to(dtype).eval(), (torch.randn(2, 5, 32) * 3).to(dtype)
    mod = fxforge.compile_aot(model, (x,), executor="reference", dynamic=False)
    assert "extern" not in mod.graph.op_counts() and mod.graph.op_counts().get("rms_norm") == 2
    for got, want in zip(mod(x), model(x), strict=True):
        assert torch.equal(got, want)
    kernels = fxforge.compile_aot(model, (x,), executor="interpret", dynamic=False)
    for got, want in zip(kernels(x), model(x), strict=True):  # the row kernels' fp32-weight form
        torch.testing.assert_close(got, want)


class _Tiles(torch.nn.Module):
    def forward(self, v, s):
        lam = torch.exp((s * s).sum()) - torch.exp(s.sum())  # a 0-d float tensor
        return v.repeat(1, 2, 1, 1) * (lam + 0.2), v.repeat(3, 1, 1, 2, 1)


def test_repeat_and_a_scalar_beside_a_0d_tensor_lower():
    v, s = torch.randn(1, 2, 3, 4), torch.randn(4) / 4
    mod = fxforge.compile_aot(_Tiles(), (v, s), executor="interpret", dynamic=False)
    assert "extern" not in mod.graph.op_counts(), mod.graph.op_counts()
    for got, want in zip(mod(v, s), _Tiles()(v, s), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


class _Fill(torch.nn.Module):
    def forward(self, x, keep, value):
        return x.masked_fill(~keep, float("-inf")).softmax(-1), x.masked_fill(keep, 2), x.masked_fill(keep, value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_masked_fill_lowers_bit_for_bit(dtype):
    """masked_fill is a where with the value in x's dtype (a python scalar, or a 0-d tensor cast to it)."""
    x = (torch.randn(2, 3, 8) * 4).to(dtype)
    keep, value = torch.rand(2, 3, 8) > 0.3, torch.tensor(0.3, dtype=torch.float64)
    mod = fxforge.compile_aot(_Fill(), (x, keep, value), executor="reference", dynamic=False)
    assert "extern" not in mod.graph.op_counts(), mod.graph.op_counts()
    for got, want in zip(mod(x, keep, value), _Fill()(x, keep, value), strict=True):
        assert torch.equal(got, want)
    kernels = fxforge.compile_aot(_Fill(), (x, keep, value), executor="interpret", dynamic=False)
    for got, want in zip(kernels(x, keep, value), _Fill()(x, keep, value), strict=True):
        torch.testing.assert_close(got, want)


class _ComplexRope(torch.nn.Module):
    """Meta's reference / Llama 4 RoPE: freqs_cis = polar(1, pos * inv_freq), x viewed as complex pairs, times it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16)))

    def forward(self, x, pos):
        freqs = pos[:, None].float() * self.inv_freq[None]
        cis = torch.polar(torch.ones_like(freqs), freqs)[None, :, None, :] * 1.0  # [1, S, 1, 8]
        z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(z * cis).flatten(3).type_as(x), torch.view_as_real(cis[:, 1:])


def test_complex_rope_lowers_as_real_pairs():
    """Complex values ride as their view_as_real pairs: polar, the complex product, slices and views, no extern; a
    complex op fxforge does not know, or a product with a real tensor (which computed garbage when told apart by
    rank), is a capture error that says so."""
    x, pos = torch.randn(1, 5, 4, 16), torch.arange(3, 8)
    mod = fxforge.compile_aot(_ComplexRope(), (x, pos), executor="interpret", dynamic=False)
    assert "extern" not in mod.graph.op_counts(), mod.graph.op_counts()
    for got, want in zip(mod(x, pos), _ComplexRope()(x, pos), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)

    class _Conj(torch.nn.Module):
        def forward(self, x):
            return torch.view_as_real(torch.view_as_complex(x).conj_physical())

    class _ByReal(torch.nn.Module):  # a complex [2, 2] times a real [2, 2]: its pairs have the real one's rank + 1
        def forward(self, x, r):
            return torch.view_as_real(torch.view_as_complex(x) * r)

    with pytest.raises(CaptureError, match="complex tensor"):
        fxforge.compile_aot(_Conj(), (torch.randn(3, 2),), executor="reference", dynamic=False)
    with pytest.raises(CaptureError, match="a complex product with a real tensor"):
        fxforge.compile_aot(_ByReal(), (torch.randn(2, 2, 2), torch.randn(2, 2)), executor="reference", dynamic=False)
