"""Launches per decode step of a w4a16-int4 decoder (issue #13 item 3, quantized): `concat_linears` stacks
the quantized q/k/v and gate/up weights (one `qlinear` each), so the QKV GEMM feeds a `rope_cache` group
(RoPE + both cache writes in one launch, no host `cache_write`), and the 4-bit decode kernel takes the
RMSNorm as a prologue and the SwiGLU as an epilogue over interleaved gate/up rows (`qlinear_decode_fuse`), as
the dense GEMM does. Per layer: QKV qlinear (+ input RMSNorm), rope_cache, decode attention, o_proj qlinear
(+ residual), gate/up qlinear (+ RMSNorm, SwiGLU), down qlinear (+ residual) = 6, the dense count (was 9:
two RMSNorm row kernels and silu * mul; 13 before concat_linears). Rest: mask (one kernel: its positions' unsqueeze
sinks to the leaves, `canonicalize.sink_index_unsqueeze`; 2 before), RoPE tables, lm_head = 3.
f32 activations keep the row-major qlinear template, which has neither fusion: 9 per layer. Counted from
outside fxforge, as tests/runtime/test_decode_launches.py does; tokens equal the reference executor's."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.runtime.generate import StaticKVCache
from fxforge.testing import counting_launches

PER_LAYER, REST = 6, 3
ROW_MAJOR_PER_LAYER = 9  # f32 activations: the row-major qlinear template, its norms and silu * mul apart


counting = counting_launches  # the kernels launched, counted from outside fxforge


@dataclasses.dataclass
class Step:
    names: list[str]  # the kernels one T=1 decode step launched
    host: list[str]  # opcodes of the cache writes left to the host
    groups: int  # concat_linears' stacked groups
    tokens: torch.Tensor


def decode_step(model: torch.nn.Module, executor: str = "interpret", **options) -> Step:
    """Greedy tokens of a prefill and two T=1 steps (HF's `generate` loop); the first T=1 step's launches counted."""
    dec = fxforge.compile_decoder(model, max_length=12, executor=executor, **options)
    tokens = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(1))
    cache, out, pos, names = StaticKVCache.for_step(dec.graph), [tokens], torch.arange(4), []
    for i in range(3):
        with counting() if i == 1 else contextlib.nullcontext([]) as launched:
            tokens = dec(tokens, pos, cache.tensors)[:, -1:].argmax(-1)
        names += launched
        out.append(tokens)
        pos = pos[-1:] + 1
    if executor == "reference":
        return Step([], [], 0, torch.cat(out, dim=1))
    host = [op.opcode for op in dec.graph.ops if op.opcode == "cache_write" and id(op) in dec.graph.partition.host]
    groups = next(r.stats for r in dec.record.trace.records if r.name == "concat_linears")["groups"]
    return Step(names, host, groups, torch.cat(out, dim=1))


def llama(layers: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.llama(hidden=64, layers=layers, heads=4, kv_heads=2, intermediate=128)


def qwen2(layers: int = 1) -> torch.nn.Module:
    """Qwen2: the QKV qlinear has a bias (the norm prologue and the bias in one launch)."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                   max_position_embeddings=64)
    return transformers.Qwen2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_w4a16_decode_partition_has_one_qkv_gemm_and_rope_cache(dtype):
    """The cheap check (compile only): 4 qlinear GEMM groups, the QKV one feeding the rope_cache group, both
    RMSNorms fused into the qlinears that read them and the SwiGLU into the gate/up one, no host cache write:
    the partition's kernels are the 9 launches counted below. bf16: the same (its x scaled into fp16 in the
    decode kernel's prologue)."""
    torch.manual_seed(0)
    dec = fxforge.compile_decoder(llama().to(dtype), max_length=12, executor="interpret", quantize="w4a16-int4",
                                  quantize_group=32)
    assert all(op.operands[1].type.encoding.layout for op in dec.graph.find("qlinear"))  # the decode layout
    part = dec.graph.partition
    assert len(part.groups) == PER_LAYER + REST, part.stats()["groups"]
    gemms = [g for g in part.groups if g.kind == "gemm" and g.anchor.opcode == "qlinear"]
    (rope,) = [g for g in part.groups if g.kind == "rope_cache"]
    assert len(gemms) == 4 and rope.params["site"].qkv.producer in [g.anchor for g in gemms]
    assert [(g.params["norm"] is not None, g.params["swiglu"]) for g in gemms] == [
        (True, False), (False, False), (True, True), (False, False)]  # qkv, o_proj, gate/up, down
    assert not [g for g in part.groups if g.kind == "row"]  # the final norm is lm_head's (dense) prologue
    assert not [op for op in dec.graph.ops if op.opcode == "cache_write" and id(op) in part.host]


@pytest.mark.slow  # two compiles and three interpreted steps (~12 s on 2 cores) per case
@pytest.mark.parametrize("arch,scheme,dtype", [(llama, "w4a16-int4", torch.float16), (qwen2, "w4a16-int4", torch.float16),
                                               (llama, "w4a8-fp", torch.float16), (llama, "w4a16-int4", torch.bfloat16)],
                         ids=["llama", "qwen2", "llama-w4a8", "llama-bf16"])
def test_w4a16_decode_layer_stacks_qkv_and_gate_up(arch, scheme, dtype):
    """fp16 with group 32: the decode-layout path (`qlinear_w4_decode`, norm prologue and SwiGLU epilogue) on the
    stacked weights, 6 launches per layer with the reference executor's greedy tokens. w4a8-fp: the same 6 (its
    per-token E4M3 quantization runs in the decode kernel's prologue at M <= 16, no act_quant launch), in the FP8-MMA
    decode kernel (`qlinear_decode_f8`, sm_90's layout, the choice without a GPU). bf16: the same 6."""
    model, opts = arch().to(dtype), dict(quantize=scheme, quantize_group=32)
    step = decode_step(model, **opts)
    assert step.groups == 2 and step.host == []
    assert len(step.names) == PER_LAYER + REST, step.names
    gemm = "qlinear_w4_f8_decode_kernel" if scheme == "w4a8-fp" else "qlinear_w4_decode_kernel"
    assert step.names.count(gemm) == 4 and step.names.count("rope_cache_kernel") == 1
    assert torch.equal(step.tokens, decode_step(model, "reference", **opts).tokens)


@pytest.mark.slow  # three compiles (~25 s on 2 cores)
def test_w4a16_row_major_layers_per_layer_budget():
    """f32 activations keep the row-major qlinear template (no fusions): 9 launches per layer (2 layers minus 1)."""
    one, two = decode_step(llama(1), quantize="w4a16-int4"), decode_step(llama(2), quantize="w4a16-int4")
    per_layer = ROW_MAJOR_PER_LAYER
    assert len(two.names) - len(one.names) == per_layer and len(one.names) == per_layer + REST, two.names
    assert two.host == [] and two.names.count("rope_cache_kernel") == 2
    assert torch.equal(two.tokens, decode_step(llama(2), "reference", quantize="w4a16-int4").tokens)
