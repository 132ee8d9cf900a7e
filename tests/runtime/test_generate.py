"""fxforge's static KV cache and `generate()` (issue #13): greedy tokens equal eager HF `generate()` on
GQA decoders (Llama, Qwen2 with qkv bias, Mistral), the caches are written in place (same storage,
rows filled up to the generated length), and misuse is a clear InputError."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.errors import InputError


def qwen2(layers: int = 2) -> torch.nn.Module:
    import transformers

    cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                   max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.Qwen2ForCausalLM(cfg).eval()


def _eager(model, ids, n):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def test_interpret_generate_matches_eager_llama_gqa():
    torch.manual_seed(0)
    model = zoo.llama(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    dec = fxforge.compile_decoder(model, max_length=24, executor="interpret")
    got = dec.generate(ids, max_new_tokens=6)
    assert torch.equal(got, _eager(model, ids, 6))
    assert [op.opcode for op in dec.graph.ops].count("cache_write") == 4  # 2 layers x (k, v), no cat of the cache
    assert not any(op.opcode == "extern" for op in dec.graph.ops)


@pytest.mark.parametrize("build", [qwen2, lambda: zoo.mistral(hidden=64, layers=2, heads=4, kv_heads=2)],
                         ids=["qwen2", "mistral"])
def test_reference_generate_matches_eager(build):
    torch.manual_seed(0)
    model = build()
    ids = torch.randint(3, 256, (2, 7), generator=torch.Generator().manual_seed(2))
    dec = fxforge.compile_decoder(model, max_length=32, batch=2, executor="reference")
    assert torch.equal(dec.generate(ids, max_new_tokens=8), _eager(model, ids, 8))
    # HF's own generate() on the model keeps working after the capture, with eager's tokens
    assert torch.equal(_eager(model, ids, 3), _eager(model, ids, 8)[:, :10])


@pytest.mark.parametrize("arch", ["falcon", "gemma4"])
def test_each_layer_caches_what_it_writes(arch):
    """Falcon's new decoder caches every query head's K/V (not its config's num_kv_heads: 4 heads, not 2); Gemma 4's
    global layers have 512-wide heads beside the sliding layers' 16 (a per-layer config attribute)."""
    model = zoo.gqa_decoder(arch, layers=2)
    model.generation_config.eos_token_id = None
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    dec = fxforge.compile_decoder(model, max_length=16, executor="reference")
    assert torch.equal(dec.generate(ids, max_new_tokens=6), _eager(model, ids, 6))
    want = {"falcon": [(4, 16)] * 4, "gemma4": [(2, 16)] * 2 + [(2, 512)] * 2}[arch]
    assert [(t.shape[1], t.shape[3]) for t in dec._kv_cache.tensors] == want


def test_cache_written_in_place_and_reused():
    torch.manual_seed(0)
    model = zoo.llama(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    dec = fxforge.compile_decoder(model, max_length=16, batch=2, executor="reference")
    ids = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(3))
    first = dec.generate(ids, max_new_tokens=5)  # batch 1 in a bucket of 2: padded, cut back
    cache = dec._kv_cache
    ptrs = [t.data_ptr() for t in cache.tensors]
    assert first.shape == (1, 9) and torch.equal(first, _eager(model, ids, 5))
    filled = (cache.tensors[0][0].abs().sum(dim=(0, 2)) > 0).nonzero().flatten().tolist()
    assert filled == list(range(8))  # prompt + 4 fed-back tokens were written; the rest untouched
    again = dec.generate(ids, max_new_tokens=5)  # stale rows past the length are masked, not cleared
    assert torch.equal(again, first) and [t.data_ptr() for t in dec._kv_cache.tensors] == ptrs


def test_generate_refuses_misuse():
    torch.manual_seed(0)
    model = zoo.llama(hidden=64, layers=1, heads=4, kv_heads=2, intermediate=128)
    ids = torch.randint(3, 256, (1, 4))
    dec = fxforge.compile_decoder(model, max_length=8, executor="reference")
    with pytest.raises(InputError, match="max_length"):
        dec.generate(ids, max_new_tokens=5)
    with pytest.raises(InputError, match="batch bucket"):
        dec.generate(torch.cat([ids, ids]), max_new_tokens=2)
    plain = fxforge.compile_aot(model, (torch.randint(3, 256, (2, 4)),), executor="reference")
    with pytest.raises(InputError, match="compile_decoder"):
        plain.generate(ids, max_new_tokens=2)


def test_saved_decoder_generates_after_load(tmp_path):
    torch.manual_seed(0)
    model = zoo.llama(hidden=64, layers=1, heads=4, kv_heads=2, intermediate=128)
    ids = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(4))
    fxforge.compile_decoder(model, max_length=12, executor="reference").save(str(tmp_path / "dec"))
    loaded = fxforge.load(str(tmp_path / "dec"))
    assert torch.equal(loaded.generate(ids, max_new_tokens=4), _eager(model, ids, 4))


def test_cuda_graph_needs_a_gpu_step():
    torch.manual_seed(0)
    model = zoo.llama(hidden=64, layers=1, heads=4, kv_heads=2, intermediate=128)
    dec = fxforge.compile_decoder(model, max_length=8, executor="reference")
    with pytest.raises(InputError, match="GPU"):
        dec.generate(torch.randint(3, 256, (1, 3)), max_new_tokens=2, cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph replay needs a GPU")
def test_cuda_graph_generate_matches_eager_on_gpu():
    torch.manual_seed(0)
    model = zoo.llama(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128).cuda()
    ids = torch.randint(3, 256, (1, 5), device="cuda")
    dec = fxforge.compile_decoder(model, max_length=24, executor="triton")
    got = dec.generate(ids, max_new_tokens=8, cuda_graph=True)
    assert dec._graphed_step, "the decode step was not captured"
    assert torch.equal(got, _eager(model, ids, 8))


# -- a compressed KV cache is the decode storage (issue #12) ---------------------------------------------------

def _packed_decoder(executor: str, fmt: str = "bfp8"):
    torch.manual_seed(0)
    model = zoo.llama(hidden=64, layers=1, heads=4, kv_heads=2, intermediate=128)  # head_dim 16
    return fxforge.compile_decoder(model, max_length=12, executor=executor, kv_cache=fmt, kv_block=16)


def test_packed_cache_is_the_decode_storage():
    from fxforge.ir.dtypes import DType
    from fxforge.ir.kv_ops import kv_row_layout, unpack_kv_rows

    dec = _packed_decoder("reference")
    row = kv_row_layout("bfp8", 16, 16)[1]  # 16 codes + 1 scale byte per token and head
    assert [(v.type.dtype, v.type.shape) for v in dec.graph.inputs[2:]] == [(DType.u8, (1, 2, 12, row))] * 2
    opcodes = [op.opcode for op in dec.graph.ops]
    assert opcodes.count("kv_load") == 2 and "kv_quant" not in opcodes  # read back from the packed cache
    assert [op.attrs["format"] for op in dec.graph.find("cache_write")] == ["bfp8"] * 2
    ids = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(5))
    dec.generate(ids, max_new_tokens=4)
    cache = dec._kv_cache
    assert all(t.dtype == torch.uint8 and t.shape == (1, 2, 12, row) for t in cache.tensors)
    assert (cache.format, cache.block, cache.nbytes) == ("bfp8", 16, 2 * 2 * 12 * row)  # vs 2 * 2 * 12 * 16 * 4 fp32
    written = (cache.tensors[0][0].sum(dim=(0, 2)) > 0).nonzero().flatten().tolist()
    assert written == list(range(7))  # prompt + 3 fed-back tokens, as packed rows
    k = unpack_kv_rows(cache.tensors[0], "bfp8", 16, 16)
    assert k[..., :7, :].abs().sum() > 0 and not k[..., 7:, :].any()


@pytest.mark.slow
def test_packed_cache_interpret_generate_matches_the_reference():
    """The interpret executor's kernels (rope_cache encoding rows, decode attention decoding them) give
    the tokens of the same compiled graph run op by op on its reference semantics."""
    from fxforge.ir.evaluate import evaluate
    from fxforge.runtime.generate import StaticKVCache, greedy_generate

    dec = _packed_decoder("interpret")
    ids = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(5))
    got = dec.generate(ids, max_new_tokens=4)
    cache = StaticKVCache.for_step(dec.graph)
    assert cache.tensors[0].dtype == torch.uint8
    want = greedy_generate(lambda t, p, kv: evaluate(dec.graph, [t, p, *kv])[0], cache, ids, 4)
    assert torch.equal(got, want)


def test_packed_cache_bad_block_is_a_config_error():
    from fxforge.errors import ConfigError

    model = zoo.llama(hidden=64, layers=1, heads=4, kv_heads=2, intermediate=128)  # head_dim 16
    with pytest.raises(ConfigError, match="kv_block=32 does not divide head_dim 16"):
        fxforge.compile_decoder(model, max_length=8, executor="reference", kv_cache="int8", kv_block=32)
