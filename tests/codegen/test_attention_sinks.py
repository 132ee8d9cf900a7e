"""Attention sinks (GPT-OSS: a learned logit per query head in the softmax's denominator only) in the attention
templates under the interpreter, against the attention op's reference (`attention_op._eager_attention`, HF's eager
form): flash attention (prefill, GQA, additive mask with a row that sees no key, causal), flash-decoding with one
split and with several (only split 0 counts the sink; the combine merges it), a packed KV cache (`kv_attention`),
and the whole path on a real 1-layer GPT-OSS (the rule, the op, the templates) against eager's logits."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.codegen.pool import Workspace
from fxforge.codegen.templates.attention import attention
from fxforge.codegen.templates.decode_attention import decode_attention
from fxforge.codegen.templates.kv_attention import kv_attention
from fxforge.ir.attention_op import _eager_attention
from fxforge.ir.kv_ops import pack_kv_rows, unpack_kv_rows
from fxforge.runtime.interpreter import interpreter_scope
from fxforge.testing import counting_launches, gqa_decoder

# a fully masked row adds finfo.min * log2(e): the interpreter's numpy overflows to -inf (the right score)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

SCALE = 0.3


def _inputs(B: int, Hq: int, Hkv: int, Lq: int, Lk: int, D: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(Lq * 100 + Lk)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(dtype) for h, n in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk)))
    mask = torch.where(torch.rand(B, 1, Lq, Lk, generator=g) > 0.3, 0.0, torch.finfo(dtype).min).to(dtype)
    sinks = torch.linspace(-1.0, 4.0, Hq).to(dtype)  # from negligible to most of the mass
    return q, k, v, mask, sinks


def _want(q, k, v, mask, sinks, is_causal=False):
    return _eager_attention(q.float(), k.float(), v.float(), None if mask is None else mask.float(), SCALE, is_causal,
                            q.shape[1] != k.shape[1], None, None if sinks is None else sinks.float())


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_sinks(causal):
    q, k, v, mask, sinks = _inputs(2, 4, 2, 5, 40, 16)
    mask[:, :, 2] = torch.finfo(mask.dtype).min  # query 2 sees no key: all its mass goes to the sink, output 0
    mask = None if causal else mask
    with interpreter_scope():
        got = attention(q, k, v, mask, scale=SCALE, is_causal=causal, enable_gqa=True, sinks=sinks)
    want = _want(q, k, v, mask, sinks, causal)
    assert (got - want).abs().max().item() <= 1e-5
    assert (_want(q, k, v, mask, None, causal) - want).abs().max().item() > 0.05  # the sinks matter here


@pytest.mark.parametrize("splits,dtype", [(1, torch.float32), (3, torch.float32), (2, torch.float16)])
def test_flash_decoding_sinks(splits, dtype):
    """One split (the final store) and several (split 0 alone counts the sink; the combine merges its l)."""
    q, k, v, mask, sinks = _inputs(2, 8, 2, 1, 70, 16, dtype)
    with counting_launches() as names, interpreter_scope():
        got = decode_attention(q, k, v, mask, scale=SCALE, sinks=sinks, splits=splits, ws=Workspace())
    assert ("decode_combine_kernel" in names) == (splits > 1)
    want = _want(q, k, v, mask, sinks)
    assert (got.float() - want).abs().max().item() <= (2e-3 if dtype == torch.float16 else 1e-5)
    assert (_want(q, k, v, mask, None) - want).abs().max().item() > 0.05


def test_packed_cache_sinks():
    """kv_attention over int8 rows: flash-decoding decodes the rows in its key loop, the sinks as above."""
    q, k, v, mask, sinks = _inputs(1, 4, 2, 1, 33, 32)
    kc, vc = (pack_kv_rows(t, "int8", 16) for t in (k, v))
    with interpreter_scope():
        got = kv_attention(q, kc, vc, mask, format="int8", block=16, scale=SCALE, sinks=sinks)
    want = _want(q, *(unpack_kv_rows(t, "int8", 16, 32) for t in (kc, vc)), mask, sinks)
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("executor", ["reference", pytest.param("interpret", marks=pytest.mark.slow)])
def test_gpt_oss_attention_is_one_op_with_sinks(executor):
    """The real captured graph: HF's eager attention with sinks (cat, max shift, softmax, slice) is one attention op
    per layer with its sinks (the op's reference; the templates, GQA folded, in the slow run); prefill and a decode
    step equal eager's logits."""
    from fxforge.runtime.generate import StaticKVCache

    torch.manual_seed(0)
    model = gqa_decoder("gpt_oss", 1)
    for name, p in model.named_parameters():  # sinks big enough to matter
        if name.endswith("self_attn.sinks"):
            p.data = torch.linspace(-1.0, 3.0, p.shape[0])
    dec = fxforge.compile_decoder(model, max_length=16, executor=executor)
    (att,) = dec.graph.find("attention")
    assert att.attrs["sinks"] and att.attrs["enable_gqa"] == (executor == "interpret") and att.operands[-1].type.shape == (4,)
    assert not {"softmax", "max_dim", "matmul"} & set(dec.graph.op_counts())
    ids = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    cache = StaticKVCache.for_step(dec.graph).tensors
    got = torch.cat([dec(ids[:, :5], torch.arange(5), cache), dec(ids[:, 5:], torch.arange(5, 6), cache)], 1)
    with torch.no_grad():
        want = model(ids).logits
    assert (got - want).abs().max().item() <= 1e-5
