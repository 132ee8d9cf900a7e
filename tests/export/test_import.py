"""Import: a model transformers loads from a compressed-tensors checkpoint keeps its quantization when fxforge
compiles it (JIT and AOT, from compressed or already-decompressed modules), and the `adopt` pass is never
silently skipped."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import testing
from fxforge.errors import ConfigError, ExportError

ct = pytest.importorskip("compressed_tensors")
transformers = pytest.importorskip("transformers")

X = testing.example_input("llama", batch=2, seq=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    compiled = fxforge.compile_aot(testing.llama(hidden=128, intermediate=256), (X,), executor="reference",
                                   quantize="w8a8-int8")
    return compiled.export(str(tmp_path_factory.mktemp("ckpt"))), compiled(X).logits


def test_jit_compile_keeps_the_checkpoint_codes(checkpoint):
    out, ours = checkpoint
    model = transformers.AutoModelForCausalLM.from_pretrained(out)  # compressed modules, decompressed on first call
    jit = fxforge.compile(model, executor="reference")
    with torch.no_grad():
        assert torch.equal(jit(X, use_cache=False).logits, ours)
    (graph,) = jit.fxforge_report.graphs
    adopt = next(r for r in graph.trace.records if r.name == "adopt")
    assert adopt.stats["adopted"] == 14 and set(adopt.stats["layers"].values()) == {"w8a8-int8"}


def test_aot_from_decompressed_modules(checkpoint):
    out, ours = checkpoint
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        model(X)  # compressed-tensors decompresses the modules on this first forward
    assert fxforge.export.ct_import.quantized_modules(model)
    compiled = fxforge.compile_aot(model, (X,), executor="reference")
    assert torch.equal(compiled(X).logits, ours)
    assert not fxforge.export.ct_import.quantized_modules(model)  # taken over: plain Linears now


def test_custom_pass_list_without_adopt_is_an_error(checkpoint):
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint[0])
    with pytest.raises(ConfigError, match="adopt"):
        fxforge.compile_aot(model, (X,), executor="reference", passes=["canonicalize", "dce"])


def test_adopt_without_imported_weights_is_an_error():
    with pytest.raises(ConfigError, match="no imported weights"):
        fxforge.compile_aot(testing.llama(), (X,), executor="reference", pass_options={"adopt.source": "compressed-tensors"})


def test_lorc_is_refused(tmp_path):
    torch.manual_seed(0)
    compiled = fxforge.compile_aot(testing.llama(), (X,), executor="reference", quantize="w8a8-int8", lorc_rank=4)
    with pytest.raises(ExportError, match=r"q_proj.*LoRC"):
        compiled.export(str(tmp_path / "out"))


def _llmcompressor_style_w4a16(directory) -> None:
    """A symmetric W4A16 checkpoint made the way llmcompressor saves one (compressed-tensors' own objects:
    apply the config, min/max scales, `ModelCompressor.compress_model`, `save_pretrained`, `update_config`)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme, apply_quantization_config
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    torch.manual_seed(1)
    model = testing.llama(hidden=128, intermediate=256)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=128)
    qconfig = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                                 ignore=["lm_head"])
    apply_quantization_config(model, qconfig)
    for module in model.modules():
        if getattr(module, "quantization_scheme", None) is not None:
            w = module.weight.detach().reshape(module.weight.shape[0], -1, 128)
            scale, _ = calculate_qparams(w.amin(-1), w.amax(-1), args)
            module.weight_scale.data.copy_(scale)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(directory)
    compressor.update_config(str(directory))


def test_symmetric_int4_checkpoint_keeps_its_codes(tmp_path):
    _llmcompressor_style_w4a16(tmp_path)
    theirs_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        theirs = theirs_model(X).logits  # compressed-tensors decompresses: its own dequantized weights
    ct_weight = theirs_model.model.layers[0].mlp.down_proj.weight.detach().clone()
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    compiled = fxforge.compile_aot(model, (X,), executor="reference")
    adopt = next(r for r in compiled.fxforge_report.graphs[0].trace.records if r.name == "adopt")
    assert adopt.stats["adopted"] == 14 and set(adopt.stats["layers"].values()) == {"w4a16-int4"}
    w = compiled.graph.weights["model.layers.0.mlp.down_proj.weight.q"]
    assert bool((w.payload["zero"] == 8).all())  # symmetric: fxforge's zero point 8 is compressed-tensors' 0
    assert torch.equal(fxforge.ir.lowp_ops.decode_weight(w), ct_weight.float())  # no second rounding
    ours = compiled(X).logits
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-5
