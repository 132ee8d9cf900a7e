"""The sparsify pass end to end: HF Llama / BERT compiled with N:M sparsity equal eager with the same
pruned weights, every pruned layer keeps an exact N:M pattern, lm_head stays dense, composition with
quantization, bad options are ConfigErrors, tails stay dense, and artifacts store the packed form."""

import copy

import pytest
import torch
from safetensors.torch import load_file

import fxforge
from fxforge import testing as zoo
from fxforge.errors import ConfigError
from fxforge.ir.nm import decode_nm


def logits(out):
    return out.logits if hasattr(out, "logits") else out[0]


def magnitude_pruned(model, n, m, skip=("lm_head",)):
    """Eager reference: every nn.Linear but `skip` pruned n:m by |w|, kept values rounded to fp16."""
    ref = copy.deepcopy(model)
    for name, mod in ref.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] not in skip:
            w = mod.weight.data
            full = (w.shape[1] // m) * m
            blocks = w[:, :full].reshape(w.shape[0], -1, m)
            drop = blocks.abs().topk(m - n, dim=-1, largest=False).indices
            pruned = blocks.scatter(-1, drop, 0).reshape(w.shape[0], full)
            mod.weight.data = torch.cat([pruned, w[:, full:]], 1).half().float()
    return ref


@pytest.mark.parametrize("name,nm", [("llama", (2, 4)), ("bert", (4, 8))])
def test_compiled_sparse_model_matches_eager_with_pruned_weights(name, nm):
    model, x = zoo.build(name), zoo.example_input(name)
    c = fxforge.compile_aot(model, (x,), sparsity=f"{nm[0]}:{nm[1]}")
    stats = c.record.trace.record("sparsify").stats
    assert stats["method"] == "magnitude" and stats["layers"]
    with torch.no_grad():
        want, dense = logits(magnitude_pruned(model, *nm)(x)), logits(model(x))
    got = logits(c(x))
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert (got - dense).abs().max() > 1e-2  # pruning did change the outputs
    nm_weights = [w for w in c.graph.weights.values() if w.encoding is not None and w.encoding.kind == "nm"]
    assert len(nm_weights) == len(stats["layers"])
    for w in nm_weights:
        dense_w = decode_nm(w)
        assert ((dense_w.reshape(dense_w.shape[0], -1, nm[1]) != 0).sum(-1) <= nm[0]).all()


def test_lm_head_dense_and_every_other_linear_pruned():
    model, x = zoo.build("llama"), zoo.example_input("llama")
    stats = fxforge.compile_aot(model, (x,), sparsity="2:4").record.trace.record("sparsify").stats
    assert "lm_head" in stats["skipped"] and len(stats["layers"]) == 14
    assert all(v["pattern"] == "2:4" and v["bytes_after"] * 16 == v["bytes_fp16"] * 9 for v in stats["layers"].values())


@pytest.mark.slow
def test_overrides_and_composition_with_every_scheme():
    model, x = zoo.build("llama"), zoo.example_input("llama")
    calib = [(zoo.example_input("llama", seed=s),) for s in range(2)]
    for scheme in ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp"):
        c = fxforge.compile_aot(model, (x,), sparsity="2:4", sparsity_overrides={"*.mlp.down_proj": "4:8"},
                                quantize=scheme, calibration=calib)
        st = c.record.trace.record("sparsify").stats
        down = st["layers"]["model.layers.0.mlp.down_proj"]
        assert down["pattern"] == "4:8" and down["scheme"] == scheme and down["quantized_with"] == "gptq"
        assert st["method"] == "sparsegpt"
        assert not c.record.trace.record("quantize").stats["layers"]  # composed layers are left alone
        qlinears = [op for op in c.graph.ops if op.opcode == "qlinear"]
        assert len(qlinears) == 14 and all(op.operands[1].type.encoding.scheme == scheme for op in qlinears)
        with torch.no_grad():
            dense = logits(model(x))
        rel = ((logits(c(x)) - dense).norm() / dense.norm()).item()
        assert 0.02 < rel < 0.6, (scheme, rel)


@pytest.mark.slow
def test_sparsegpt_beats_magnitude_on_layer_errors():
    model, x = zoo.build("llama"), zoo.example_input("llama")
    calib = [(zoo.example_input("llama", seed=s, seq=32),) for s in range(4)]
    runs = {m: fxforge.compile_aot(model, (x,), sparsity="2:4", sparsity_method=m, calibration=calib, solver_target="layer")
            .record.trace.record("sparsify").stats for m in ("magnitude", "sparsegpt")}
    assert runs["sparsegpt"]["summary"]["mean_rel_error"] < 0.9 * runs["magnitude"]["summary"]["mean_rel_error"]


@pytest.mark.parametrize("bad", ["4:4", "5:4", "2:32", "2-4", "0:4", "two:four", ""])
def test_bad_patterns_are_config_errors(bad):
    with pytest.raises(ConfigError, match="sparsity"):
        fxforge.CompileConfig(sparsity=bad)


def test_bad_method_is_config_error():
    with pytest.raises(ConfigError, match="sparsity_method"):
        fxforge.CompileConfig(sparsity="2:4", sparsity_method="random")


def test_tail_stays_dense_and_no_calibration_falls_back():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(10, 8), torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    model, x = Two(), torch.randn(3, 10)
    c = fxforge.compile_aot(model, (x,), sparsity="2:4", sparsity_method="wanda")
    st = c.record.trace.record("sparsify").stats
    assert st["method"] == "magnitude" and "needs calibration" in st["note"]
    assert st["layers"]["a"]["dense_tail"] == 2 and "dense" in st["dense_tail_note"]
    w = model.a.weight.data
    nm_w = next(v for k, v in c.graph.weights.items() if k.startswith("a.weight"))
    dense_w = decode_nm(nm_w)
    assert torch.equal(dense_w[:, 8:], w[:, 8:].half().float())
    assert ((dense_w[:, :8].reshape(8, 2, 4) != 0).sum(-1) == 2).all()


def test_artifact_stores_packed_weights(tmp_path):
    model, x = zoo.build("llama"), zoo.example_input("llama")
    c = fxforge.compile_aot(model, (x,), sparsity="2:4", quantize="w4a16-int4", quantize_group=32)
    c.save(str(tmp_path / "art"))
    tensors = load_file(str(tmp_path / "art" / "weights.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight.nm"
    assert tensors[f"{q}::index"].dtype == torch.uint8 and tensors[f"{q}::index"].shape == (64, 8)  # 32 x 2 bits
    assert tensors[f"{q}::codes"].shape == (64, 16)  # 32 kept int4 values per row, two per byte
    assert not any(k.startswith("model.layers.0.self_attn.q_proj.weight") and "::" not in k for k in tensors)
    loaded = fxforge.load(str(tmp_path / "art"))
    assert torch.equal(logits(loaded(x)), logits(c(x)))


def test_inspect_quant_shows_pruned_layers():
    from fxforge.cli.inspect import _show_quant

    model, x = zoo.build("llama"), zoo.example_input("llama")
    c = fxforge.compile_aot(model, (x,), sparsity="2:4", quantize="w8a8-int8")
    text = _show_quant(c, None)
    assert "sparsity: method magnitude" in text and "model.layers.0.mlp.down_proj" in text
    row = next(line for line in text.splitlines() if line.startswith("model.layers.0.self_attn.q_proj"))
    assert "2:4" in row and "w8a8-int8" in row
    assert "lm_head" in text and text.splitlines()[-1].startswith("total: 14 layers")


def test_kernel_executor_runs_sparse_layers_as_reference():
    """Under the Triton executors a pruned + quantized linear runs the sparse qlinear template (the report
    names the path per layer), and the result equals the reference executor's."""
    model, x = zoo.build("mlp"), zoo.example_input("mlp")
    ref = fxforge.compile_aot(model, (x,), sparsity="2:4", quantize="w8a8-int8", executor="reference")
    interp = fxforge.compile_aot(model, (x,), sparsity="2:4", quantize="w8a8-int8", executor="interpret")
    assert any(op.opcode == "qlinear" and op.operands[1].type.encoding.kind == "nm" for op in interp.graph.ops)
    assert interp.fxforge_report.sparse_paths == {"up": "nm_qlinear template (w8a8-int8)",
                                                  "down": "nm_qlinear template (w8a8-int8)"}
    assert torch.allclose(interp(x), ref(x), atol=1e-5, rtol=1e-5)
