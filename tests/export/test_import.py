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
