"""AOT capture of a Hugging Face model whose forward takes `use_cache` through **kwargs only (GraniteMoE): exported
with its config's use_cache off (torch.export fails on a bool inside **kwargs' dynamic shapes), eager's logits, and
the config left as it was."""

from __future__ import annotations

import inspect

import pytest
import torch

import fxforge
from fxforge import testing


@pytest.mark.parametrize("arch", ["granitemoe", "llama"])  # use_cache through **kwargs / a named parameter
def test_hf_models_export_without_their_cache(arch):
    model = testing.gqa_decoder(arch, 1)
    assert ("use_cache" in inspect.signature(model.forward).parameters) == (arch == "llama")
    x = torch.randint(3, 256, (2, 6), generator=torch.Generator().manual_seed(0))
    compiled = fxforge.compile_aot(model, (x,), executor="reference")
    assert model.config.use_cache
    with torch.no_grad():
        want = model(x).logits
    got = compiled(x)
    torch.testing.assert_close(got["logits"] if isinstance(got, dict) else got.logits, want, atol=1e-5, rtol=1e-5)
