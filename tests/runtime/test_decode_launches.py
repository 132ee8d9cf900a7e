"""Launches per decode step (issue #13, item 3), counted from outside fxforge: every Triton kernel
launch under the interpreter goes through `InterpretedFunction.run`, which this test wraps. The
models are a GQA Qwen2 (q/k/v biases) and a GQA Llama (none) compiled with
`compile_decoder(..., executor="interpret")`; the per-layer count is the difference between a 2-layer
and a 1-layer model. Per layer today: QKV GEMM (RMSNorm prologue, bias), rope_cache (RoPE of q and k,
k/v written into the cache), decode attention, o_proj GEMM (+ residual), gate/up GEMM (RMSNorm
prologue, SwiGLU epilogue), down GEMM (+ residual); the rest: the mask (1 kernel; 2 before `canonicalize.sink_index_unsqueeze`), the RoPE tables
(cos and sin in one kernel) and the lm_head GEMM with the final norm as its prologue. With a packed KV
cache (kv_cache="int8") the same kernels run: rope_cache encodes the rows, decode attention decodes them."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.runtime.generate import StaticKVCache
from fxforge.testing import counting_launches

BUDGET_PER_LAYER, BUDGET_REST = 6, 4


counting = counting_launches  # the kernels launched, counted from outside fxforge


def decoder(arch: str, layers: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}[arch]
    cfg = config(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)
    model = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM}[arch](cfg)
    return model.eval()


def decode_launches(arch: str, layers: int, **options) -> list[str]:
    dec = fxforge.compile_decoder(decoder(arch, layers), max_length=12, executor="interpret", **options)
    cache = StaticKVCache.for_step(dec.graph)
    ids = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(0))
    dec(ids, torch.arange(4), cache.tensors)  # prefill
    with counting() as names:
        dec(ids[:, :1], torch.tensor([4]), cache.tensors)
    host = dec.graph.partition.host  # a KV-cache op left to the host would dequantize the cache in torch
    return names + [f"host {op.opcode}" for op in dec.graph.ops if op.opcode in ("kv_load", "kv_quant") and id(op) in host]


@pytest.fixture(scope="module")
def counts() -> dict[str, list[str]]:
    return {"qwen2_1": decode_launches("qwen2", 1), "qwen2_2": decode_launches("qwen2", 2),
            "llama_1": decode_launches("llama", 1), "llama_2": decode_launches("llama", 2),
            "qwen2_1_unconcatenated": decode_launches("qwen2", 1, disable=["concat_linears"]),
            "llama_1_int8": decode_launches("llama", 1, kv_cache="int8", kv_block=16)}


def split(counts: dict[str, list[str]], arch: str) -> tuple[int, int]:
    per_layer = len(counts[f"{arch}_2"]) - len(counts[f"{arch}_1"])
    return per_layer, len(counts[f"{arch}_1"]) - per_layer


def test_concatenated_linears_enable_the_decoder_fusions(counts):
    per_layer, rest = split(counts, "qwen2")
    print(f"\ndecode step: {per_layer} launches per layer + {rest} (2 layers: {counts['qwen2_2']}; 1 layer without "
          f"concat_linears {len(counts['qwen2_1_unconcatenated'])})")
    # without it: Q, K, V and gate, up are separate GEMMs, RoPE runs as pointwise kernels
    assert len(counts["qwen2_1_unconcatenated"]) - len(counts["qwen2_1"]) >= 4
    layer = counts["qwen2_2"][len(counts["qwen2_1"]) - per_layer:len(counts["qwen2_1"])]
    assert sorted(layer) == sorted(["gemm_kernel"] * 4 + ["rope_cache_kernel", "decode_split_kernel"]), layer


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_launch_budget(counts, arch):
    per_layer, rest = split(counts, arch)
    assert per_layer <= BUDGET_PER_LAYER and rest <= BUDGET_REST, (per_layer, rest, counts[f"{arch}_2"])


def test_packed_kv_cache_keeps_the_launches(counts):
    """A compressed cache (issue #12) is encoded by rope_cache and decoded inside decode attention: the
    T=1 step launches exactly the dense step's kernels (no dequantize launch), so the budget holds."""
    assert counts["llama_1_int8"] == counts["llama_1"], (counts["llama_1_int8"], counts["llama_1"])
