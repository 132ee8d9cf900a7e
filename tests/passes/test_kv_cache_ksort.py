"""The kv_cache and ksort passes on zoo Llamas: kv_quant ops where the cache writes (before the GQA
repeat), measured bytes per token, a bad block refused; K-sort exact in fp32 (no cache), chosen per KV head
by calibrated error, and on a model with planted K outliers (`testing.plant_k_outliers`) lowering the
quantized-cache error and the logits error; skipped with a note without calibration."""

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.errors import ConfigError

CAL = [(zoo.example_input("llama", seed=s),) for s in range(5, 9)]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def model():
    return zoo.build("llama", hidden=128, heads=4, kv_heads=2)  # head_dim 32


@pytest.fixture(scope="module")
def planted():
    return zoo.plant_k_outliers(zoo.build("llama", hidden=128, heads=4, kv_heads=2))


def test_kv_cache_ops_and_bytes(model):
    x = zoo.example_input("llama")
    ref = fxforge.compile_aot(model, (x,))(x).logits
    for fmt, bound in (("bfp8", 0.02), ("int8", 0.02), ("fp8", 0.06), ("bfp4", 0.3)):
        c = fxforge.compile_aot(model, (x,), kv_cache=fmt, kv_block=16, k_sort="off")
        ops = c.graph.find("kv_quant")
        assert len(ops) == 4  # K and V of 2 layers
        assert all(op.operands[0].type.shape[1] == 2 for op in ops)  # before the GQA repeat: 2 KV heads
        stats = c.record.trace.record("kv_cache").stats
        per_layer = 2 * 2 * 32 * {"bfp4": 0.5 + 1 / 16, "bfp8": 1 + 1 / 16, "fp8": 1 + 1 / 16, "int8": 1 + 2 / 16}[fmt]
        assert stats["bytes_per_token"] == 2 * per_layer and stats["bytes_per_token_fp16"] == 2 * 2 * 2 * 32 * 2
        assert 0 < rel(c(x).logits, ref) < bound, fmt


def test_bad_block_is_a_config_error():
    m = zoo.build("llama")  # head_dim 16
    x = zoo.example_input("llama")
    with pytest.raises(ConfigError, match="kv_block=32 does not divide head_dim 16"):
        fxforge.compile_aot(m, (x,), kv_cache="bfp4", kv_block=32)
    with pytest.raises(ConfigError, match="kv_block=24"):
        fxforge.CompileConfig(kv_cache="bfp4", kv_block=24)
    with pytest.raises(ConfigError, match="k_sort='yes'"):
        fxforge.CompileConfig(k_sort="yes")


def test_ksort_is_exact_without_a_cache(planted):
    x = zoo.example_input("llama")
    ref = fxforge.compile_aot(planted, (x,))(x).logits
    c = fxforge.compile_aot(planted, (x,), k_sort="on", kv_block=16, calibration=CAL)
    assert len(c.graph.find("index_select")) == 4  # q and k of 2 layers
    assert not c.graph.find("kv_quant")
    torch.testing.assert_close(c(x).logits, ref, rtol=1e-5, atol=1e-5)


def test_ksort_auto_helps_on_planted_outliers(planted):
    x = zoo.example_input("llama", seed=2)
    ref = fxforge.compile_aot(planted, (x,))(x).logits
    off = fxforge.compile_aot(planted, (x,), kv_cache="bfp4", kv_block=16, k_sort="off")
    auto = fxforge.compile_aot(planted, (x,), kv_cache="bfp4", kv_block=16, k_sort="auto", calibration=CAL)
    report = auto.record.trace.record("ksort").stats["layers"]
    heads = [h for layer in report.values() for h in layer["heads"].values()]
    assert len(heads) == 4 and all(h["kept"] == (h["error_on"] < h["error_off"]) for h in heads)
    assert sum(h["error_on"] for h in heads) < 0.6 * sum(h["error_off"] for h in heads)
    assert rel(auto(x).logits, ref) < rel(off(x).logits, ref)


def test_ksort_without_calibration_is_skipped_with_a_note(model):
    x = zoo.example_input("llama")
    c = fxforge.compile_aot(model, (x,), kv_cache="bfp4", kv_block=16, k_sort="on")
    assert "needs calibration" in c.record.trace.record("ksort").stats["note"]
    assert not c.graph.find("index_select")


def test_interpret_executor_agrees(model):
    import fxforge.runtime.triton_executor  # noqa: F401  (registers the interpret executor)

    x = zoo.example_input("llama", seq=8)
    cal = [(zoo.example_input("llama", seed=s, seq=8),) for s in (5, 6)]
    opts = dict(kv_cache="bfp4", kv_block=16, k_sort="on", calibration=cal)
    a = fxforge.compile_aot(model, (x,), executor="interpret", **opts)(x).logits
    b = fxforge.compile_aot(model, (x,), executor="reference", **opts)(x).logits
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5
