"""Norms of 16-bit activations computed in fp32 between casts and rounded once: RMSNorm by an fp32 weight (Gemma's
(1 + w), GPT-OSS's and OLMo2's norms) and LayerNorm (OLMo's, Cohere's). canonicalize makes
cast(rms_norm(cast(x, f32), w_f32), x.dtype) one `rms_norm(x, w_f32)` and cast(layer_norm(cast(x, f32), ...), x.dtype)
one `layer_norm(x, ...)` (their semantics: `optable._rms_norm`, `_layer_norm`), which the row kernel, the GEMM
prologues, the post-norm step and rope_cache's q/k norms compute with that one rounding; an fp16 decode step of
those models then runs no norm kernel of its own."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.ir import DType, Graph, TensorType, evaluate, sym
from fxforge.passes import PassContext
from fxforge.passes.canonicalize import Canonicalize
from fxforge.runtime.generate import StaticKVCache
from fxforge.testing import counting_launches, gqa_decoder


def _fp32_norm_chain(dtype: DType, norm: str = "rms_norm") -> Graph:
    g = Graph("norm")
    x = g.add_input("x", TensorType((sym("s0"), 64), dtype))
    g.add_weight("w", torch.randn(64))
    w = g.add_op("const", [], {"weight": "w"}).result
    xf = g.add_op("cast", [x], {"dtype": DType.f32}).result
    n = g.add_op(norm, [xf, w], {"eps": 1e-6}).result
    g.set_outputs([g.add_op("cast", [n], {"dtype": dtype}).result])
    return g


@pytest.mark.parametrize("norm", ["rms_norm", "layer_norm"])
@pytest.mark.parametrize("dtype", [DType.f16, DType.bf16])
def test_the_cast_chain_is_one_norm_with_the_same_numbers(dtype, norm):
    g = _fp32_norm_chain(dtype, norm)
    x = torch.randn(5, 64).to(dtype.torch) * 3
    want = evaluate(g, [x])[0]
    Canonicalize().run(g, PassContext())
    assert [op.opcode for op in g.ops] == ["const", norm]
    assert torch.equal(evaluate(g, [x])[0], want)  # exactly: one rounding after the fp32 weight


@pytest.mark.parametrize("arch", ["gemma3", "olmo2", "olmo"])
def test_fp16_decode_step_runs_no_norm_kernel(arch):
    """Gemma3's post-norms and (1 + w) q/k norms, OLMo2's post-norms and q/k norms over all heads, OLMo's weightless
    LayerNorms, in fp16: the GEMMs' prologues and post-norm steps and rope_cache compute them; the step's logits match
    the reference executor's."""
    model = gqa_decoder(arch, 1).to(torch.float16)
    dec = fxforge.compile_decoder(model, max_length=16, executor="interpret")
    ref = fxforge.compile_decoder(model, max_length=16, executor="reference")
    ids = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(0))
    caches = [StaticKVCache.for_step(d.graph) for d in (dec, ref)]
    for d, c in zip((dec, ref), caches, strict=True):
        d(ids, torch.arange(4), c.tensors)
    with counting_launches() as names:
        got = dec(ids[:, :1], torch.tensor([4]), caches[0].tensors)
    want = ref(ids[:, :1], torch.tensor([4]), caches[1].tensors)
    assert not [n for n in names if "norm" in n], names
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
