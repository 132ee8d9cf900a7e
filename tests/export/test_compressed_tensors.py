"""Export to compressed-tensors (vLLM's format) and import back, on a small HF Llama with random weights.

For each exportable scheme the checkpoint is loaded on the CPU through transformers + compressed-tensors
and its logits are compared with fxforge's compiled model: weight-only schemes within 1e-3 relative,
activation-quantized ones by the same argmax at >= 99% of positions. Asymmetric int4 (pack-quantized with
zero points) does not load through transformers' `from_pretrained` with compressed-tensors 0.20 (its
loader allocates unpacked zero points while its compressor writes them packed, as vLLM reads them:
llm-compressor#1618/#1704); that checkpoint is read with compressed-tensors' own decompressor instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fxforge
from fxforge import testing
from fxforge.errors import ExportError

ct = pytest.importorskip("compressed_tensors")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

X = testing.example_input("llama", batch=2, seq=16)
WEIGHT_ONLY_TOL = 1e-3
ARGMAX_AGREE = 0.99
INT8_CT_CONVENTION_AGREE = 0.98  # int8 activations under compressed-tensors' CPU convention: see the test

# name -> compile options, weight-only? The int8 cases are checked apart (see the two int8 tests below):
# compressed-tensors quantizes int8 activations on the CPU at amax / 127.5, fxforge (like vLLM) at amax / 127,
# and on a random-weight model's flat logits 1 flip in 32 positions is already 3%.
CASES = {
    "w8a8-int8": ({"quantize": "w8a8-int8"}, False),
    "w8a8-fp8": ({"quantize": "w8a8-fp8"}, False),
    "w4a16-int4": ({"quantize": "w4a16-int4"}, True),
    "2:4": ({"sparsity": "2:4"}, True),
    "w4a16-int4+2:4": ({"quantize": "w4a16-int4", "sparsity": "2:4"}, True),
    "w8a8-fp8+2:4": ({"quantize": "w8a8-fp8", "sparsity": "2:4"}, False),
    "w8a8-int8+2:4": ({"quantize": "w8a8-int8", "sparsity": "2:4"}, False),
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return testing.llama(hidden=128, intermediate=256)  # int4 groups of 128 divide every input dim


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (compiled module, checkpoint dir, fxforge logits), compiled and exported lazily."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            compiled = fxforge.compile_aot(_model(), (X,), executor="reference", **CASES[name][0])
            out = compiled.export(str(tmp_path_factory.mktemp(name.replace(":", "").replace("+", "_"))))
            cache[name] = (compiled, out, compiled(X).logits)
        return cache[name]

    return get


def _ct_decompressed(directory: str) -> torch.nn.Module:
    """The checkpoint read by compressed-tensors' own decompressors into the HF model (for the formats whose
    transformers load path fails upstream)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    config = transformers.AutoConfig.from_pretrained(directory)
    qconfig = QuantizationConfig.model_validate(config.quantization_config)
    config.quantization_config = None
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    schemes = transformers.AutoModelForCausalLM.from_config(config)
    apply_quantization_config(schemes, qconfig)  # only to learn each module's scheme
    state = load_file(f"{directory}/model.safetensors")
    plain = {k: v for k, v in state.items() if k.endswith(".weight")}
    for name, module in schemes.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is not None:
            local = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(f"{name}.weight_")}
            compressor = BaseCompressor.get_value_from_registry(getattr(scheme.format, "value", scheme.format))
            plain[f"{name}.weight"] = compressor.decompress(local, scheme)["weight"]
    missing, unexpected = model.load_state_dict(plain, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return model


def _load(directory: str, name: str) -> torch.nn.Module:
    if "w4a16-int4" in name:
        return _ct_decompressed(directory)
    return transformers.AutoModelForCausalLM.from_pretrained(directory).eval()


@pytest.mark.parametrize("name", [n for n in CASES if "int8" not in n])
def test_checkpoint_logits_match_fxforge(exported, name):
    compiled, out, ours = exported(name)
    with torch.no_grad():
        theirs = _load(out, name)(X).logits
    if CASES[name][1]:
        rel = ((theirs - ours).norm() / ours.norm()).item()
        assert rel <= WEIGHT_ONLY_TOL, f"{name}: relative logit difference {rel:.2e}"
    else:
        agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
        assert agree >= ARGMAX_AGREE, f"{name}: same argmax at {agree:.3f} of positions"


@pytest.mark.parametrize("name", ["w8a8-int8", "w8a8-int8+2:4"])
def test_int8_checkpoint_is_exact_under_the_same_activation_convention(exported, name, monkeypatch):
    """compressed-tensors scales int8 activations by amax / 127.5 on the CPU (range [-128, 127]); fxforge and
    vLLM use amax / 127. With its range made symmetric the checkpoint gives fxforge's logits bit for bit: the
    weights, scales and everything else are exactly fxforge's."""
    import compressed_tensors.quantization.utils.helpers as helpers

    original = helpers._calculate_range
    monkeypatch.setattr(helpers, "_calculate_range", lambda t, n, d: (-original(t, n, d)[1], original(t, n, d)[1])
                        if str(getattr(t, "value", t)) == "int" else original(t, n, d))
    _, out, ours = exported(name)
    with torch.no_grad():
        theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()(X).logits
    assert torch.equal(theirs, ours)


def test_int8_checkpoint_same_next_token_on_a_trained_model(tmp_path):
    """Under compressed-tensors' own CPU activation convention (amax / 127.5), on the trained byte-level fixture
    (1024 positions of Python source): measured 98.9% here, 99.3% on the benchmark's held-out windows and 99.5%
    on other source text, so the bound is 98%: the issue's 99% holds only where the activation convention is
    the same (bit-identical logits: the test above), which is vLLM's."""
    fixture = Path(__file__).resolve().parents[2] / "benchmarks" / "fixtures" / "stdlib-llama"
    model = transformers.AutoModelForCausalLM.from_pretrained(fixture).eval()
    text = (Path(json.__file__).parent / "decoder.py").read_bytes()[: 8 * 128]
    x = torch.tensor(list(text), dtype=torch.long).reshape(8, 128)
    compiled = fxforge.compile_aot(model, (x,), executor="reference", quantize="w8a8-int8")
    out = compiled.export(str(tmp_path / "ckpt"))
    with torch.no_grad():
        theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()(x).logits
    agree = (theirs.argmax(-1) == compiled(x).logits.argmax(-1)).float().mean().item()
    assert agree >= INT8_CT_CONVENTION_AGREE, f"same next token at {agree:.4f} of positions"


@pytest.mark.parametrize("name", ["w8a8-int8", "w4a16-int4+2:4"])
def test_config_says_the_scheme(exported, name):
    _, out, _ = exported(name)
    q = json.loads(open(f"{out}/config.json").read())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["quantization_status"] == "compressed"
    groups = list(q["config_groups"].values())
    assert "lm_head" in q["ignore"]
    if name == "w8a8-int8":
        (group,) = groups
        assert q["format"] == "int-quantized"
        assert group["input_activations"]["strategy"] == "token" and group["input_activations"]["dynamic"] is True
        assert group["weights"]["strategy"] == "channel" and group["targets"] == ["Linear"]
    else:  # fxforge's int4 groups of 128 kept values are the 256 dense columns around them (down_proj, in=256);
        # where a row keeps fewer than 128 values its one group is per channel (the other layers, in=128)
        assert q["format"] == "pack-quantized"
        assert all(g["weights"]["symmetric"] is False and g["input_activations"] is None for g in groups)
        assert sorted((g["weights"]["strategy"], g["weights"]["group_size"]) for g in groups) == [("channel", None), ("group", 256)]
        assert any(t.endswith("down_proj") for g in groups for t in g["targets"])
    assert (out_files := sorted(p.name for p in Path(out).iterdir())) == \
        ["config.json", "generation_config.json", "model.safetensors"], out_files


def test_sparse_only_is_a_plain_checkpoint_with_exact_zeros(exported):
    _, out, _ = exported("2:4")
    assert "quantization_config" not in json.loads(open(f"{out}/config.json").read())
    w = load_file(f"{out}/model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) <= 2


@pytest.mark.parametrize("name", ["w8a8-int8", "w4a16-int4+2:4"])
def test_round_trip_export_import_export_is_byte_identical(exported, name, tmp_path):
    compiled, out, ours = exported(name)
    model = transformers.AutoModelForCausalLM.from_pretrained(out) if "int4" not in name else _reloaded_int4(out)
    again = fxforge.compile_aot(model, (X,), executor="reference")
    assert torch.equal(again(X).logits, ours)  # the imported codes run as fxforge's own
    second = again.export(str(tmp_path / "again"))
    a, b = load_file(f"{out}/model.safetensors"), load_file(f"{second}/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].contiguous().view(torch.uint8).equal(b[k].contiguous().view(torch.uint8)), k


def _reloaded_int4(directory: str) -> torch.nn.Module:
    """The int4 checkpoint as a compressed-tensors-quantized HF model (compressed modules, as transformers would
    leave them were its asymmetric loader not broken): apply its config, then load the compressed tensors."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    config = transformers.AutoConfig.from_pretrained(directory)
    qconfig = QuantizationConfig.model_validate(config.quantization_config)
    config.quantization_config = None
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    apply_quantization_config(model, qconfig)
    ModelCompressor(quantization_config=qconfig).compress_model(model)
    state = load_file(f"{directory}/model.safetensors")
    for name, module in model.named_modules():
        for k, v in state.items():
            if k.startswith(f"{name}.") and "." not in k[len(name) + 1:] and hasattr(module, k[len(name) + 1:]):
                setattr(module, k[len(name) + 1:], torch.nn.Parameter(v, requires_grad=False))
    return model


def test_non_hf_model_is_refused(tmp_path):
    compiled = fxforge.compile_aot(testing.build("mlp"), (testing.example_input("mlp"),), executor="reference",
                                   quantize="w8a8-int8")
    with pytest.raises(ExportError, match="Hugging Face model"):
        compiled.export(str(tmp_path / "out"))


def test_pow2_scheme_is_refused_naming_layers(tmp_path):
    torch.manual_seed(0)
    compiled = fxforge.compile_aot(testing.llama(), (X,), executor="reference", quantize="w4a8-fp")
    with pytest.raises(ExportError, match=r"q_proj.*power-of-two"):
        compiled.export(str(tmp_path / "out"))


def test_online_rotation_and_ffn_skip_ops_are_refused():
    from fxforge.export.layers import linear_layers
    from fxforge.ir.parser import parse_graph

    graph = parse_graph("graph @f(%x: f32[4, 8]) {\n  %0 = hadamard(%x) {block=0} : f32[4, 8]\n  return %0\n}", {})
    with pytest.raises(ExportError, match="online Walsh-Hadamard"):
        linear_layers(graph, [], ["w8a8-int8"])


def test_a_weight_a_pass_added_is_refused():
    """A residual rotation of a tied model adds `<embedding>_rotated`: no HF parameter, so no export."""
    from fxforge.export.ct_export import _check_weights_are_parameters
    from fxforge.ir.graph import Weight
    from fxforge.ir.parser import parse_graph

    text = ("graph @f(%i: i64[2]) {\n  %t = const @model.embed_tokens.weight_rotated : f32[16, 8]\n"
            "  %0 = embedding(%t, %i) : f32[2, 8]\n  return %0\n}")
    graph = parse_graph(text, {"model.embed_tokens.weight_rotated": Weight(torch.zeros(16, 8))})
    model = torch.nn.Module()
    with pytest.raises(ExportError, match="weight_rotated"):
        _check_weights_are_parameters(graph, model, ["model.embed_tokens.weight"], {})


def test_unknown_format_and_missing_package(exported, monkeypatch, tmp_path):
    compiled, _, _ = exported("w8a8-fp8")
    with pytest.raises(ExportError, match="unknown export format"):
        compiled.export(str(tmp_path / "a"), format="gguf")
    monkeypatch.setitem(__import__("sys").modules, "compressed_tensors", None)
    with pytest.raises(ExportError, match=r"fxforge\[vllm\]"):
        compiled.export(str(tmp_path / "b"))


def test_cli_export_from_an_artifact(exported, tmp_path, capsys):
    from fxforge.cli import main

    compiled, out, ours = exported("w8a8-fp8")
    compiled.save(str(tmp_path / "art"))
    assert main(["export", str(tmp_path / "art"), "--format", "compressed-tensors", "-o", str(tmp_path / "ckpt")]) == 0
    assert "wrote compressed-tensors checkpoint" in capsys.readouterr().out
    a, b = load_file(f"{out}/model.safetensors"), load_file(f"{tmp_path}/ckpt/model.safetensors")
    assert all(a[k].view(torch.uint8).equal(b[k].view(torch.uint8)) for k in a)
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "x")]) == 2


def test_stacked_linears_export_as_their_hf_layers(tmp_path):
    """The kernel executors stack q/k/v and gate/up (`concat_linears`); the checkpoint still holds the HF layers,
    bit for bit those of the unstacked (reference executor) compile, biases included."""
    torch.manual_seed(0)
    model = testing._hf("LlamaConfig", "LlamaForCausalLM", hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=256, attention_bias=True)
    with torch.no_grad():  # HF initialises biases to zero: make them count
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    x = X[:1, :4]
    states = {}
    for executor in ("reference", "interpret"):
        compiled = fxforge.compile_aot(model, (x,), executor=executor, quantize="w8a8-int8")
        if executor == "interpret":
            assert any("+" in n for n in compiled.graph.weights), "the kernel executor should stack siblings"
        out = Path(compiled.export(str(tmp_path / executor)))
        states[executor] = load_file(str(out / "model.safetensors"))
    ref, got = states["reference"], states["interpret"]
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref), [k for k in ref if not torch.equal(got[k], ref[k])]


@pytest.mark.parametrize("quantize", [None, "w8a8-int8"])
@pytest.mark.parametrize("arch", ["qwen2_moe", "glm4_moe", "granitemoe_swa", "aria_text"])
def test_experts_stacked_with_a_shared_mlp_export_as_their_hf_layers(arch, quantize, tmp_path):
    """`moe_shared` stacks a shared MLP into the experts' weights: the checkpoint still holds the HF experts and the
    shared MLP's gate / up / down, bit for bit (the experts stay 16-bit under w8a8, as the moe op's are)."""
    model = testing.gqa_decoder(arch, 1)
    compiled = fxforge.compile_aot(model, (X[:1, :6],), executor="reference", quantize=quantize)
    assert [op.attrs["shared"] for op in compiled.graph.find("moe")] == [1 if arch in ("glm4_moe", "aria_text") else 2]
    state = load_file(str(Path(compiled.export(str(tmp_path))) / "model.safetensors"))
    want = {k: v for k, v in model.state_dict().items() if "expert" in k or "shared_mlp" in k}
    assert want and all(torch.equal(state[k], v) for k, v in want.items()), [k for k in want if k not in state]
