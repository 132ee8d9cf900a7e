"""The JIT path (`fxforge.compile(model).generate`) and the decode step (`compile_decoder`) on the architectures whose
compile broke before (each a fixed bug, slow: ~30-45 s each on 2 cores): sliding-window models under the JIT printed
sympy's `Max` in run() (Mistral with a window, Gemma2); Ministral3's position-scaled q read rope_cache's result
before it ran; a router GEMM feeding topk (GPT-OSS, GraniteMoE) crashed the fuse pass. The survey of every
`GQA_DECODERS` architecture: benchmarks/arch_probe.py (decode step), benchmarks/jit_probe.py (JIT)."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.testing import gqa_decoder


def _eager(arch: str, new: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = gqa_decoder(arch, layers=2)
    model.generation_config.eos_token_id = None  # `new` tokens whatever they are
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model, ids, model.generate(ids, max_new_tokens=new, do_sample=False)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mistral-swa", "gemma2"])
def test_jit_generate_gives_eager_tokens(arch):
    model, ids, want = _eager(arch, 6)
    got = fxforge.compile(model, executor="interpret").generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ministral3", "gpt_oss"])
def test_decode_step_gives_eager_tokens(arch):
    model, ids, want = _eager(arch, 8)
    dec = fxforge.compile_decoder(model, max_length=16, executor="interpret")
    assert torch.equal(dec.generate(ids, max_new_tokens=8), want)
