"""RoPE whose frequencies depend on the positions seen (dynamic NTK, LongRoPE) through compile_decoder."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.errors import CaptureError
from fxforge.runtime.generate import StaticKVCache
from fxforge.testing import _hf

LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
            "long_factor": [float(4 + i) for i in range(8)], "original_max_position_embeddings": 32}
DYNAMIC = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}


def _llama(rope: dict, max_positions: int = 512) -> torch.nn.Module:
    torch.manual_seed(0)
    return _hf("LlamaConfig", "LlamaForCausalLM", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=max_positions,
               bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_parameters=rope)


def _step_logits(dec, ids: torch.Tensor) -> torch.Tensor:
    cache = StaticKVCache.for_step(dec.graph)
    return dec(ids, torch.arange(ids.shape[1]), cache.tensors)


@pytest.mark.parametrize("rope", [LONGROPE, DYNAMIC], ids=["longrope", "dynamic"])
def test_position_dependent_rope_is_captured_with_eagers_table(rope):
    model = _llama(rope, max_positions=40 if rope is DYNAMIC else 512)
    rotary = model.model.rotary_emb
    with torch.no_grad():
        model(torch.randint(3, 256, (1, 48)))  # past the limit: eager's table is now the long / grown one
    long_table = rotary.inv_freq
    assert not torch.equal(long_table, rotary.original_inv_freq)
    dec = fxforge.compile_decoder(model, max_length=24, executor="reference")
    assert rotary.rope_type == rope["rope_type"] and rotary.inv_freq is long_table  # the model is left as it was
    ids = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits  # eager goes back to the original table for a short sequence
    torch.testing.assert_close(_step_logits(dec, ids), want, rtol=1e-4, atol=1e-4)
    assert torch.equal(dec.generate(ids, max_new_tokens=6),
                       model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None))


def test_rope_limit_past_max_length_is_a_capture_error():
    with pytest.raises(CaptureError, match=r"longrope.*longer than 32 positions.*max_length <= 32"):
        fxforge.compile_decoder(_llama(LONGROPE), max_length=48, executor="reference")
