"""The N:M sparse GEMM template (codegen/templates/sparse_gemm.py) matches F.linear on the decoded
weight under the interpreter for 2:4, 4:8 (3-bit indices straddling bytes), 1:16 and a dense tail,
with bias/activation/mul/residual/scale. Its builds for sm_80 / sm_90 (0 spills) are in
tests/codegen/standard_specs.py (`sparse_specs`), which test_build.py compiles."""

import pytest
import torch
import torch.nn.functional as F

from fxforge.codegen.templates.sparse_gemm import nm_linear
from fxforge.ir.dtypes import DType
from fxforge.ir.nm import decode_nm, encode_nm


def nm_weight(N, K, n, m, dtype=DType.f32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    full = (K // m) * m
    score = torch.rand(N, full // m, m, generator=g)
    keep = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(n, -1).indices, True).reshape(N, full)
    kept = torch.cat([keep, torch.ones(N, K - full, dtype=torch.bool)], 1)
    return encode_nm((w * kept).to(dtype.torch), kept, n, m, dtype)


@pytest.mark.parametrize("n,m,K", [(2, 4, 128), (4, 8, 64), (2, 8, 72), (1, 16, 64), (2, 4, 70)])
def test_matches_reference(n, m, K):
    weight = nm_weight(64, K, n, m)
    x = torch.randn(2, 5, K)
    want = F.linear(x, decode_nm(weight))
    assert torch.allclose(nm_linear(x, weight), want, atol=1e-4, rtol=1e-4)


def test_fp16_with_epilogue():
    weight = nm_weight(64, 128, 2, 4, DType.f16)
    x, b, r = torch.randn(3, 128).half(), torch.randn(64).half(), torch.randn(3, 64).half()
    want = F.silu(F.linear(x.float(), decode_nm(weight).float(), b.float())) + r.float()
    got = nm_linear(x, weight, b, activation="silu", residual=r)
    assert got.dtype == torch.float16 and torch.allclose(got.float(), want, atol=2e-2, rtol=2e-2)


def test_scale_mul_and_out_dtype():
    """The rest of the dense epilogue: scale, SwiGLU's mul by a tensor, an fp32 output of fp16 inputs."""
    weight = nm_weight(64, 128, 4, 8, DType.f16)
    x, mul = torch.randn(2, 3, 128).half(), torch.randn(2, 3, 64).half()
    want = F.silu(0.5 * F.linear(x.float(), decode_nm(weight).float())) * mul.float()
    got = nm_linear(x, weight, activation="silu", scale=0.5, mul=mul, out_dtype=torch.float32)
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=2e-2, rtol=2e-2)
