"""A logit soft-cap after a GEMM, cap * tanh(y / cap) (Gemma2 / VaultGemma's final_logit_softcapping after lm_head),
runs in the GEMM's epilogue (issue #13: one launch fewer per decode step): the scale step takes the div, `tanh` is an
epilogue activation, the post-scale step takes the mul by cap. Kernel level (dense and N:M templates), rule level
(the fuse partition) and model level (a 1-layer Gemma2 through `compile_decoder`), against torch; closeness, not bits
(the GEMM's summation order and one fp32 tanh)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fxforge
from fxforge.codegen.pool import Workspace
from fxforge.codegen.templates.gemm import linear
from fxforge.codegen.templates.sparse_gemm import nm_linear
from fxforge.frontend.export import capture_export
from fxforge.ir.dtypes import DType
from fxforge.ir.nm import decode_nm, encode_nm
from fxforge.passes.fuse import partition
from fxforge.testing import gqa_decoder

# sigmoid(2u) for large -u: the interpreter's numpy exp overflows to inf (the result, tanh = -1, is right)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def _softcap(y: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(y / cap) * cap


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gemm_softcap_epilogue(dtype):
    torch.manual_seed(0)
    cap, x, w = 3.0, torch.randn(3, 96).to(dtype), torch.randn(70, 96).to(dtype)  # |y| up to ~40: tanh saturates
    b, r = torch.randn(70).to(dtype), torch.randn(3, 70).to(dtype)
    h = F.linear(x.float(), w.float(), b.float())
    got = linear(x, w, b, scale=1 / cap, activation="tanh", post_scale=cap, residual=r)
    want = _softcap(h - b.float() + cap * b.float(), cap) + r.float()  # the template's order: scale, then bias
    tol = 1e-5 if dtype == torch.float32 else 4e-3
    assert got.dtype == dtype and (got.float() - want).abs().max() <= tol * want.abs().max()
    assert h.abs().max() > 8 * cap and (linear(x, w, activation="tanh").float().abs() <= 1).all()
    plain = linear(x, w, b, post_scale=0.25)  # a post-scale alone: (x @ w.T + b) * 0.25
    assert (plain.float() - 0.25 * h).abs().max() <= tol * h.abs().max()
    split = linear(x, w, scale=1 / cap, activation="tanh", post_scale=cap, split_k=3, ws=Workspace())  # last split's epilogue
    assert (split.float() - _softcap(h - b.float(), cap)).abs().max() <= tol * cap


def test_nm_linear_softcap_epilogue():
    """The N:M sparse template shares the dense epilogue, post-scale included."""
    g = torch.Generator().manual_seed(0)
    w, keep = torch.randn(64, 64, generator=g), torch.arange(64).remainder(4).lt(2).expand(64, 64)
    weight = encode_nm((w * keep).half(), keep, 2, 4, DType.f16)
    x = torch.randn(2, 64, generator=g).half()
    want = _softcap(F.linear(x.float(), decode_nm(weight).float()), 2.0)
    got = nm_linear(x, weight, scale=0.5, activation="tanh", post_scale=2.0)
    assert (got.float() - want).abs().max() <= 4e-3 * want.abs().max()


class _CappedHead(torch.nn.Module):
    """HF's soft-capped head: logits / cap -> tanh -> * cap; and a bias then a multiplier (the post-scale alone)."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        self.cap, self.head, self.proj = cap, torch.nn.Linear(32, 48, bias=False), torch.nn.Linear(32, 48)

    def forward(self, x):
        logits = torch.tanh(self.head(x) / self.cap) * self.cap
        return logits, self.proj(x) * 0.5


def test_softcap_is_the_gemm_epilogue():
    torch.manual_seed(0)
    model, x = _CappedHead(2.0), torch.randn(2, 3, 32) * 4
    gemms = [grp for grp in partition(capture_export(model, (x,)).lowered.graph).groups]
    assert [grp.kind for grp in gemms] == ["gemm", "gemm"]  # no pointwise kernel left
    head, proj = gemms
    assert head.params["activation"] == "tanh" and head.params["scale"] == 0.5 and head.params["post_scale"] == 2.0
    assert proj.params["activation"] == "none" and proj.params["scale"] == 1.0 and proj.params["post_scale"] == 0.5
    mod = fxforge.compile_aot(model, (x,), executor="interpret")
    assert "post_scale=2.0" in mod.program.executor.module.source
    for got, want in zip(mod(x), model(x)):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_gemma2_lm_head_takes_the_softcap():
    """Model level: a 1-layer Gemma2 whose cap is small enough to saturate tanh; prefill logits close to eager's,
    and the graph's output is the lm_head GEMM's (no pointwise kernel after it)."""
    model = gqa_decoder("gemma2", 1)
    model.config.final_logit_softcapping = 0.1  # its logits reach ~0.55: tanh saturates
    dec = fxforge.compile_decoder(model, max_length=8, executor="interpret")
    head = next(grp for grp in dec.graph.partition.groups if any(o is dec.graph.outputs[0] for o in grp.outputs))
    assert head.kind == "gemm" and head.params["activation"] == "tanh" and head.params["post_scale"] == 0.1
    from fxforge.runtime.generate import StaticKVCache

    ids = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(0))
    got = dec(ids, torch.arange(4), StaticKVCache.for_step(dec.graph).tensors)
    with torch.no_grad():
        want = model(ids).logits
    assert want.abs().max() > 0.09 and (got - want).abs().max() <= 1e-6


def test_qlinear_decode_takes_tanh_not_the_post_scale():
    """The 4-bit decode GEMM (a quantized head, by `quantize_overrides`) shares the activation table, so tanh(y / cap)
    is its epilogue (scale step, then tanh); it has no post-scale step, so the rule leaves the mul by cap a kernel."""
    from fxforge.codegen.templates.qlinear_decode import qlinear_w4_decode
    from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref
    from fxforge.ir.weight_layouts import to_decode_layout
    from fxforge.passes.fusion_rules import GEMM_RULES

    torch.manual_seed(1)
    w = encode_weight(torch.randn(48, 128), "w4a16-int4", group=64)
    x = torch.randn(2, 128).half()
    y = qlinear_w4_decode(x, to_decode_layout(w), activation="tanh", scale=0.25, ws=Workspace())
    h = qlinear_ref(x.float(), decode_weight(w), None, scheme="w4a16-int4", act_format=None, group=64, lorc_rank=0)
    assert h.abs().max() > 20 and (y.float() - torch.tanh(0.25 * h)).abs().max() <= 2e-3
    assert not GEMM_RULES["qlinear"].post_scale and GEMM_RULES["linear"].post_scale
