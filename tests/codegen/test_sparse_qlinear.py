"""The quantized-value N:M sparse template (codegen/templates/sparse_qlinear.py) matches `qlinear_ref` on
the decoded weight under the interpreter for every scheme (int8, fp8, int4 with zero points, fp4 with
power-of-two shifts), per-row and grouped scales, 2:4, 4:8 (3-bit indices straddling bytes) and a dense
tail, with bias/activation/residual; it refuses a weight of another kind or scheme. Builds: test_build.py
(`standard_specs.sparse_specs`)."""

import pytest
import torch
import torch.nn.functional as F

from fxforge.codegen.templates.sparse_qlinear import nm_qlinear
from fxforge.errors import ShapeError
from fxforge.ir.lowp_ops import get_scheme, qlinear_ref, quantize_groups, weight_params
from fxforge.ir.nm import compress, decode_nm, encode_nm_quantized, expand


def nm_quantized(N, K, n, m, scheme, group, seed=0):
    """A random N:M weight whose kept values are quantized (round to nearest) in groups of `group` kept values."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    full = (K // m) * m
    score = torch.rand(N, full // m, m, generator=g)
    keep = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(n, -1).indices, True).reshape(N, full)
    kept = torch.cat([keep, torch.ones(N, K - full, dtype=torch.bool)], 1)
    vals, pos = compress(w * kept, kept, n, m)
    kc = vals.shape[1]
    size = group or kc
    groups = -(-kc // size)
    padded = F.pad(vals, (0, groups * size - kc)).reshape(N, groups, size)
    params = weight_params(padded, scheme, bool(group))
    codes, _ = quantize_groups(padded, scheme, params)
    codes = codes.reshape(N, -1)[:, :kc]
    codes = codes.view(torch.uint8) if codes.dtype.is_floating_point else codes
    return encode_nm_quantized(expand(codes, pos, n, m, K), kept, n, m, scheme, group, params)


CASES = [("w8a8-int8", 0, 2, 4, 128), ("w8a8-int8", 0, 2, 4, 70), ("w8a8-fp8", 0, 4, 8, 64), ("w8a8-fp8", 0, 2, 4, 70),
         ("w4a16-int4", 16, 2, 4, 128), ("w4a16-int4", 16, 4, 8, 64), ("w4a16-int4", 0, 2, 4, 70),
         ("w4a8-fp", 16, 2, 4, 128), ("w4a8-fp", 0, 2, 8, 64)]


@pytest.mark.parametrize("scheme,group,n,m,K", CASES)
def test_matches_qlinear_reference(scheme, group, n, m, K):
    weight = nm_quantized(48, K, n, m, scheme, group)
    x = torch.randn(3, 5, K)
    want = qlinear_ref(x, decode_nm(weight), scheme=scheme, act_format=get_scheme(scheme).act_format, group=group,
                       lorc_rank=0)
    got = nm_qlinear(x, weight, scheme)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("scheme", ["w8a8-int8", "w4a16-int4"])
def test_fp16_with_epilogue(scheme):
    weight = nm_quantized(64, 128, 2, 4, scheme, 32 if scheme == "w4a16-int4" else 0)
    x, b, r = torch.randn(3, 128).half(), torch.randn(64).half(), torch.randn(3, 64).half()
    ref = qlinear_ref(x, decode_nm(weight), b, scheme=scheme, act_format=get_scheme(scheme).act_format,
                      group=weight.encoding.group, lorc_rank=0)
    want = F.gelu(ref.float()) + r.float()
    got = nm_qlinear(x, weight, scheme, b, activation="gelu", residual=r)
    assert got.dtype == torch.float16 and torch.allclose(got.float(), want, atol=2e-2, rtol=2e-2)


def test_refuses_other_weights():
    weight = nm_quantized(16, 64, 2, 4, "w8a8-int8", 0)
    with pytest.raises(ShapeError, match="w8a8-int8"):
        nm_qlinear(torch.randn(2, 64), weight, "w8a8-fp8")
    with pytest.raises(ShapeError, match="does not fit"):
        nm_qlinear(torch.randn(2, 32), weight, "w8a8-int8")
