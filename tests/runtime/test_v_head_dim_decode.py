"""Decoders whose v head dim differs from q/k's, through `compile_decoder` and the interpreter: MiMo-V2-Flash (GQA,
q/k 24 and v 16 here, attention sinks on its sliding layers, values scaled before the cache) and DeepSeek-V3 (MLA as
HF runs it: per-head K = [nope; rope] of 24, V of 16) give eager's greedy tokens; MiMo's RoPE, value scale and both
cache writes run in one rope_cache launch per layer (no host cache write); a packed KV cache stores K and V at their
own head dims and gives the reference executor's tokens. (Launches per layer: tests/runtime/test_arch_decode.py.)"""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.runtime.generate import StaticKVCache
from fxforge.testing import counting_launches, gqa_decoder

IDS = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["mimo_v2_flash", "deepseek_v3"])
def test_eager_tokens(arch):
    model = gqa_decoder(arch, layers=2)
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        want = model.generate(IDS, max_new_tokens=4, do_sample=False)
    dec = fxforge.compile_decoder(model, max_length=12, executor="interpret")
    assert torch.equal(dec.generate(IDS, max_new_tokens=4), want)
    if arch == "mimo_v2_flash":
        cache = StaticKVCache.for_step(dec.graph)
        dec(IDS, torch.arange(5), cache.tensors)
        with counting_launches() as names:
            dec(IDS[:, :1], torch.tensor([5]), cache.tensors)
        assert names.count("rope_cache_kernel") == 2, names
        host = dec.graph.partition.host
        assert not [op for op in dec.graph.ops if op.opcode in ("cache_write", "mul") and id(op) in host]


def test_packed_cache_at_each_head_dim():
    from fxforge.ir.kv_ops import kv_row_layout

    model = gqa_decoder("mimo_v2_flash", layers=2, head_dim=32)  # kv_block 16 divides both head dims
    ref = fxforge.compile_decoder(model, max_length=12, executor="reference", kv_cache="fp8", kv_block=16)
    rows = {int(v.type.shape[-1]) for v in ref.graph.inputs[2:]}
    assert rows == {kv_row_layout("fp8", 16, 32)[1], kv_row_layout("fp8", 16, 16)[1]}
    dec = fxforge.compile_decoder(model, max_length=12, executor="interpret", kv_cache="fp8", kv_block=16)
    assert torch.equal(dec.generate(IDS, max_new_tokens=4), ref.generate(IDS, max_new_tokens=4))
