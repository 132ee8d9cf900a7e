"""The GEMM templates (`linear` with its fused epilogues, `matmul` with broadcast batches) agree with torch.

Kernels run under the Triton interpreter: TRITON_INTERPRET=1 is set before triton is imported.
Tolerances (max abs error): fp32 1e-4; fp16 1e-2 x max|reference|; bf16 inputs with fp32 output 1e-4
(fp32 accumulation of exact bf16 values); bf16 output 2^-6 x max|reference| (the interpreter truncates
fp32 -> bf16).
"""

from __future__ import annotations

import importlib
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from fxforge.codegen.templates import bmm, gemm  # noqa: E402
from fxforge.errors import ShapeError  # noqa: E402

if not isinstance(gemm.gemm_kernel, InterpretedFunction):
    gemm = importlib.reload(gemm)  # imported earlier without the interpreter
if not isinstance(bmm.bmm_kernel, InterpretedFunction):
    bmm = importlib.reload(bmm)

# sigmoid(2u) for large -u: the interpreter's numpy exp overflows to inf (the result, 0, is right)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

FP32_TOL = 1e-4
FP16_REL = 1e-2

ACT_REF = {
    "none": lambda y: y,
    "relu": torch.relu,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=_gen(seed)).to(dtype)


def _max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("M,N,K", [(33, 47, 65), (1, 47, 65), (64, 64, 64), (5, 16, 300), (17, 1, 33), (40, 24, 1)])
def test_linear_shapes_fp32(M, N, K):
    x, w = _randn(M, K, seed=1), _randn(N, K, seed=2)
    assert _max_err(gemm.linear(x, w), x @ w.T) <= FP32_TOL


def test_linear_leading_dims():
    x, w = _randn(2, 7, 65, seed=1), _randn(47, 65, seed=2)
    y = gemm.linear(x, w)
    assert y.shape == (2, 7, 47)
    assert _max_err(y, F.linear(x, w)) <= FP32_TOL


def test_linear_strided_inputs():
    x = _randn(65, 33, seed=1).T  # transposed: strides (1, 33)
    w = _randn(65, 47, seed=2).T  # W^T stored row-major
    assert not x.is_contiguous() and not w.is_contiguous()
    assert _max_err(gemm.linear(x, w), x @ w.T) <= FP32_TOL
    xs = _randn(33, 130, seed=3)[:, ::2]  # every other column
    assert _max_err(gemm.linear(xs, w), xs @ w.T) <= FP32_TOL
    x3 = _randn(7, 3, 65, seed=4).transpose(0, 1)  # [3, 7, 65], not flattenable to a view
    assert _max_err(gemm.linear(x3, w), F.linear(x3, w)) <= FP32_TOL


@pytest.mark.parametrize("activation", list(ACT_REF))
def test_linear_each_activation(activation):
    x, w = _randn(33, 65, seed=1) * 2, _randn(47, 65, seed=2) * 0.3
    y = gemm.linear(x, w, activation=activation)
    assert _max_err(y, ACT_REF[activation](x @ w.T)) <= FP32_TOL


def test_linear_bias_residual_scale_alone():
    x, w, b = _randn(33, 65, seed=1), _randn(47, 65, seed=2), _randn(47, seed=3)
    r = _randn(33, 47, seed=4)
    assert _max_err(gemm.linear(x, w, b), F.linear(x, w, b)) <= FP32_TOL
    assert _max_err(gemm.linear(x, w, residual=r), x @ w.T + r) <= FP32_TOL
    assert _max_err(gemm.linear(x, w, scale=0.125), 0.125 * (x @ w.T)) <= FP32_TOL


@pytest.mark.parametrize("activation", ["gelu", "silu", "gelu_tanh"])
def test_linear_epilogue_combined(activation):
    x, w, b = _randn(3, 11, 65, seed=1), _randn(47, 65, seed=2) * 0.3, _randn(47, seed=3)
    r = _randn(11, 47, seed=4)  # broadcasts over the leading dim
    y = gemm.linear(x, w, b, activation=activation, residual=r, scale=0.5)
    ref = ACT_REF[activation](0.5 * (x @ w.T) + b) + r
    assert _max_err(y, ref) <= FP32_TOL


def test_linear_fp16():
    x, w, b = _randn(33, 65, dtype=torch.float16, seed=1), _randn(47, 65, dtype=torch.float16, seed=2), _randn(47, seed=3)
    r = _randn(33, 47, dtype=torch.float16, seed=4)
    y = gemm.linear(x, w, b.half(), activation="gelu", residual=r)
    assert y.dtype == torch.float16
    ref = F.gelu(x.float() @ w.float().T + b.half().float()) + r.float()
    assert _max_err(y, ref) <= FP16_REL * ref.abs().max().item()
    y32 = gemm.linear(x, w, out_dtype=torch.float32)
    assert y32.dtype == torch.float32
    assert _max_err(y32, x.float() @ w.float().T) <= FP32_TOL


def test_linear_bf16():
    x, w = _randn(9, 40, dtype=torch.bfloat16, seed=1), _randn(24, 40, dtype=torch.bfloat16, seed=2)
    ref = x.float() @ w.float().T
    assert _max_err(gemm.linear(x, w, out_dtype=torch.float32), ref) <= FP32_TOL
    y = gemm.linear(x, w)
    assert y.dtype == torch.bfloat16
    assert _max_err(y, ref) <= 2**-6 * ref.abs().max().item()


@pytest.mark.parametrize("activation,with_residual", [("none", False), ("silu", False), ("none", True), ("gelu", True)])
@pytest.mark.parametrize("M,N,K", [(33, 47, 65), (1, 5, 3), (17, 1, 33)])
def test_linear_mul_epilogue(M, N, K, activation, with_residual):
    """HAS_MUL: y = activation(scale * x @ w.T + b) * mul + residual; mul strided (a transposed view)."""
    x, w, b = _randn(M, K, seed=1), _randn(N, K, seed=2) * 0.3, _randn(N, seed=3)
    mul = _randn(N, M, seed=5).T  # [M, N] column-major: read through its strides
    r = _randn(M, N, seed=4) if with_residual else None
    y = gemm.linear(x, w, b, activation=activation, mul=mul, residual=r, scale=0.5)
    ref = ACT_REF[activation](0.5 * (x @ w.T) + b) * mul + (r if r is not None else 0.0)
    assert y.shape == (M, N)
    assert _max_err(y, ref) <= FP32_TOL


def test_linear_mul_broadcast_and_fp16():
    x, w = _randn(3, 11, 65, seed=1), _randn(47, 65, seed=2) * 0.3
    mul, r = _randn(11, 47, seed=3), _randn(47, seed=4)  # both broadcast over the leading dims
    y = gemm.linear(x, w, activation="silu", mul=mul, residual=r)
    assert _max_err(y, F.silu(x @ w.T) * mul + r) <= FP32_TOL
    xh, wh, mh = x.half(), w.half(), _randn(3, 11, 47, dtype=torch.float16, seed=6)
    yh = gemm.linear(xh, wh, mul=mh)  # SwiGLU's up projection: up * silu(gate)
    ref = (xh.float() @ wh.float().T) * mh.float()
    assert yh.dtype == torch.float16
    assert _max_err(yh, ref) <= FP16_REL * ref.abs().max().item()
    with pytest.raises(ShapeError, match="mul"):
        gemm.linear(x, w, mul=_randn(5, 47))


def test_linear_errors():
    x, w = _randn(4, 8), _randn(5, 9)
    with pytest.raises(ShapeError, match="linear needs"):
        gemm.linear(x, w)
    with pytest.raises(ShapeError, match="unknown activation"):
        gemm.linear(x, _randn(5, 8), activation="softplus")
    with pytest.raises(ShapeError, match="bias"):
        gemm.linear(x, _randn(5, 8), _randn(4))


@pytest.mark.parametrize("a_shape,b_shape", [
    ((33, 20), (20, 17)),
    ((1, 20), (20, 17)),
    ((2, 1, 33, 20), (3, 20, 17)),
    ((4, 33, 20), (20, 17)),
    ((33, 20), (2, 20, 17)),
    ((2, 3, 2, 9, 20), (3, 1, 20, 17)),
])
def test_matmul_broadcast_fp32(a_shape, b_shape):
    a, b = _randn(*a_shape, seed=1), _randn(*b_shape, seed=2)
    y = bmm.matmul(a, b)
    ref = a @ b
    assert y.shape == ref.shape
    assert _max_err(y, ref) <= FP32_TOL


def test_matmul_strided_scale_fp16():
    a = _randn(2, 20, 33, seed=1).transpose(-1, -2)  # [2, 33, 20] column-major
    b = _randn(17, 20, seed=2).T
    assert _max_err(bmm.matmul(a, b, scale=0.5), 0.5 * (a @ b)) <= FP32_TOL
    ah, bh = a.half(), b.half()
    y = bmm.matmul(ah, bh)
    ref = ah.float() @ bh.float()
    assert y.dtype == torch.float16
    assert _max_err(y, ref) <= FP16_REL * ref.abs().max().item()


def test_matmul_errors():
    with pytest.raises(ShapeError, match="matmul needs"):
        bmm.matmul(_randn(3, 4), _randn(5, 6))
    with pytest.raises(ShapeError, match="do not broadcast"):
        bmm.matmul(_randn(2, 3, 4), _randn(3, 4, 6))
    with pytest.raises(ShapeError, match="share a dtype"):
        bmm.matmul(_randn(3, 4), _randn(4, 6, dtype=torch.float16))
