"""Rotation and smoothing: exact in fp32 on real HF architectures (rotate/smooth only, no quantization),
and they lower the quantization error where activations have outlier channels; the method plan and
its options."""

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.errors import ConfigError
from fxforge.ir import evaluate, verify
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_graph
from fxforge.passes.manager import PassContext, PassManager
from fxforge.passes.quant_methods import resolve_methods
from fxforge.passes.rotate import Rotate
from fxforge.passes.smooth import Smooth


def qwen2():
    return zoo._hf("Qwen2Config", "Qwen2ForCausalLM", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)


def capture(name):
    torch.manual_seed(0)
    model = qwen2() if name == "qwen2" else zoo.build(name)
    x = zoo.example_input("llama" if name == "qwen2" else name)
    graph = fxforge.compile_aot(model, (x,)).graph
    return model, graph, x


KEYS = {"quantize": "quantize.scheme", "quantize_method": "quantize.method", "rotate": "rotate.enabled",
        "smooth": "smooth.enabled", "gptq": "quantize.gptq"}


def run(graph, passes, calibration=None, **options):
    g = parse_graph(print_graph(graph), {k: type(w)(w.data.clone(), w.encoding, dict(w.payload))
                                         for k, w in graph.weights.items()})
    pm = PassManager(passes, verify=True)
    opts = {KEYS[k]: v for k, v in options.items()}
    out = pm.run(g, PassContext(options=opts, calibration=calibration, verify=True))
    return out, {r.name: r.stats for r in pm.trace.records}


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "bert"])
def test_rotation_alone_keeps_the_function(name):
    model, graph, x = capture(name)
    with torch.no_grad():
        eager = model(x).logits if name != "bert" else model(x).last_hidden_state
    g, stats = run(graph, [Rotate()], quantize="w8a8-int8", rotate=True)
    verify(g)
    assert rel(evaluate(g, [x])[0], eager) <= 1e-4
    st = stats["rotate"]
    if name == "bert":  # LayerNorm stream: online rotation of every quantized linear's input
        assert "not applied" in st["notes"]["residual rotation"]
        assert all(v["form"] == "online" for v in st["layers"].values())
    else:  # residual rotation for q/k/v/gate/up, online Hadamard only before o_proj and down_proj
        assert st["notes"] == {} and st["hadamard_ops"] == 4
        assert st["layers"]["model.layers.0.self_attn.q_proj"]["form"] == "residual"
        assert st["layers"]["model.layers.0.mlp.down_proj"]["form"] == "online"
        assert len(g.find("hadamard")) == 4


@torch.no_grad()
def with_outliers(model, scale=40.0):
    """The same function with fixed-channel activation outliers in the inputs of q/k/v and gate/up."""
    for layer in model.model.layers:
        for norm, readers in ((layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                       layer.self_attn.v_proj)),
                              (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj))):
            norm.weight[[3, 17]] *= scale
            for lin in readers:
                lin.weight[:, [3, 17]] /= scale
    return model


@pytest.fixture(scope="module")
def outlier_llama():
    torch.manual_seed(0)
    model = with_outliers(zoo.build("llama"))
    x = zoo.example_input("llama")
    graph = fxforge.compile_aot(model, (x,)).graph
    calib = [[zoo.example_input("llama", batch=4, seq=32, seed=s)] for s in (5, 6)]
    return graph, x, evaluate(graph, [x])[0], calib


@pytest.mark.parametrize("method", [{"rotate": True}, {"smooth": True}])
def test_methods_lower_w8a8_error_with_outliers(outlier_llama, method):
    from fxforge.passes.quantize import Quantize

    graph, x, ref, calib = outlier_llama
    base, _ = run(graph, [Quantize()], quantize="w8a8-int8", calibration=calib)
    g, stats = run(graph, [Rotate(), Smooth(), Quantize()], quantize="w8a8-int8", quantize_method="rtn",
                   calibration=calib, **method)
    e0, e1 = rel(evaluate(base, [x])[0], ref), rel(evaluate(g, [x])[0], ref)
    assert e1 < 0.7 * e0, (e0, e1)
    name = "rotate" if "rotate" in method else "smooth"
    layer = stats[name]["layers"]["model.layers.0.self_attn.q_proj"]
    assert layer["rtn_error_after"] < layer["rtn_error_before"]


def test_smoothing_alone_keeps_the_function_and_awq_for_weight_only(outlier_llama):
    graph, x, ref, calib = outlier_llama
    for scheme, method in (("w8a8-int8", "smoothquant"), ("w4a16-int4", "awq")):
        g, stats = run(graph, [Smooth()], quantize=scheme, quantize_method="rtn", smooth=True, calibration=calib)
        assert rel(evaluate(g, [x])[0], ref) <= 1e-4
        layers = stats["smooth"]["layers"]
        assert layers["model.layers.0.mlp.up_proj"]["method"] == method
        assert layers["model.layers.0.mlp.down_proj"]["producer"] == "linear"  # folded into up_proj's rows
        assert not layers["model.layers.0.self_attn.o_proj"]["smoothed"]  # after attention: nowhere to fold
        assert all(v["rtn_error_after"] <= v["rtn_error_before"] for v in layers.values() if "rtn_error_after" in v)


def test_method_plan():
    every = ("smooth", "rotate", "gptq")
    plan = resolve_methods({"quantize.scheme": "w8a8-int8"}, True, available=every)
    assert plan["rotate"] and plan["gptq"] and not plan["smooth"]
    plan = resolve_methods({"quantize.scheme": "w8a8-int8"}, False, available=every)
    assert not any(plan.on.values()) and set(plan.skipped) == {"rotate", "gptq"}
    plan = resolve_methods({"quantize.scheme": "w4a16-int4", "smooth.enabled": True}, False)
    assert not plan["smooth"] and plan.skipped["smooth"] == "needs calibration data"
    plan = resolve_methods({"quantize.scheme": "w8a8-fp8", "quantize.method": "rtn", "rotate.enabled": True}, True)
    assert plan["rotate"] and not plan["smooth"] and not plan["gptq"]


def test_each_layer_gets_its_own_schemes_methods(outlier_llama):
    """A compile with overrides only (as a budget's plan compiles) runs each scheme's default methods on
    its layers: GPTQ on both, rotation only where the scheme wants it (w8a8-int8, not w8a8-fp8)."""
    from fxforge.passes.quantize import Quantize

    graph, x, ref, calib = outlier_llama
    overrides = {"model.layers.0.*": "w8a8-fp8", "model.layers.1.*": "w8a8-int8"}
    opts = {"quantize.overrides": overrides}
    g = parse_graph(print_graph(graph), {k: type(w)(w.data.clone(), w.encoding, dict(w.payload))
                                         for k, w in graph.weights.items()})
    pm = PassManager([Rotate(), Smooth(), Quantize()], verify=True)
    pm.run(g, PassContext(options=opts, calibration=calib, verify=True))
    stats = {r.name: r.stats for r in pm.trace.records}
    layers = stats["quantize"]["layers"]
    assert {v["method"] for v in layers.values()} == {"gptq"}, {k: v["method"] for k, v in layers.items()}
    rotated = {k for k, v in stats["rotate"]["layers"].items() if v.get("form") == "online"}
    assert stats["rotate"]["enabled"] and not any(k.startswith("model.layers.0.") for k in rotated)
    assert any(k.startswith("model.layers.1.") for k in rotated)


def test_config_validates_method_options():
    with pytest.raises(ConfigError, match="'auto', 'rtn'"):
        fxforge.CompileConfig(quantize_method="gptq")
    with pytest.raises(ConfigError, match="None .* True or False"):
        fxforge.CompileConfig(rotate="yes")
    with pytest.raises(ConfigError, match="rotate_mode"):
        fxforge.CompileConfig(rotate_mode="residual")
    from fxforge.pipeline import default_pipeline, pass_options

    cfg = fxforge.CompileConfig(quantize="w8a8-int8", rotate=True, rotate_block=64)
    assert pass_options(cfg)["rotate.enabled"] is True and pass_options(cfg)["rotate.block"] == 64
    assert default_pipeline(cfg)[-5:-2] == ["rotate", "smooth", "quantize"]
