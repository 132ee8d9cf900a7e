"""Decoders whose v head dim differs from q/k's, through `compile_decoder` and the interpreter: MiMo-V2-Flash (GQA,
q/k 32, v 16, attention sinks on its sliding layers, values scaled before the cache) and DeepSeek-V3 (MLA as HF runs
it: per-head K = [nope; rope] of 24, V of 16) give eager's greedy tokens; a packed KV cache stores each of K and V at
its own head dim and gives the reference executor's tokens."""

from __future__ import annotations

import pytest
import torch
import transformers

import fxforge

CONFIGS = {  # small configs of the real classes (random weights)
    "mimo_v2_flash": ("MiMoV2FlashConfig", "MiMoV2FlashForCausalLM", dict(
        head_dim=32, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
        n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1, n_group=1,
        topk_group=1)),
}
IDS = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))


def _model(arch: str) -> torch.nn.Module:
    cfg_cls, model_cls, extra = CONFIGS[arch]
    config = getattr(transformers, cfg_cls)(**{
        **dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
               num_hidden_layers=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=None, pad_token_id=0),
        **extra})
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(config).eval()


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_eager_tokens(arch):
    model = _model(arch)
    with torch.no_grad():
        want = model.generate(IDS, max_new_tokens=4, do_sample=False)
    dec = fxforge.compile_decoder(model, max_length=12, executor="interpret")
    assert torch.equal(dec.generate(IDS, max_new_tokens=4), want)


def test_packed_cache_at_each_head_dim():
    from fxforge.ir.kv_ops import kv_row_layout

    model = _model("mimo_v2_flash")
    ref = fxforge.compile_decoder(model, max_length=12, executor="reference", kv_cache="fp8", kv_block=16)
    rows = {int(v.type.shape[-1]) for v in ref.graph.inputs[2:]}
    assert rows == {kv_row_layout("fp8", 16, 32)[1], kv_row_layout("fp8", 16, 16)[1]}
    dec = fxforge.compile_decoder(model, max_length=12, executor="interpret", kv_cache="fp8", kv_block=16)
    assert torch.equal(dec.generate(IDS, max_new_tokens=4), ref.generate(IDS, max_new_tokens=4))
