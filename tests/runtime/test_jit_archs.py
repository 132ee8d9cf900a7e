"""The JIT path on decoder architectures (`benchmarks/jit_probe.py`, results/jit_probe-*.md):
`fxforge.compile(model).generate()` gives eager `generate()`'s greedy tokens. A sliding-window model's decode step
has sizes like max(0, s0 - window) in its generated `run()` (a NameError once). Dynamo captures and three
interpreted compiles (~40-100 s on 2 cores): slow."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.testing import gqa_decoder


@pytest.mark.slow
def test_jit_generate_sliding_window_tokens():
    model = gqa_decoder("mistral-swa", layers=1)
    model.generation_config.eos_token_id = None
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=4, do_sample=False)
        got = fxforge.compile(model, executor="interpret").generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, want)
