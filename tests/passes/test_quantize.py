"""The quantize pass on the zoo Llama: every scheme rewrites every linear but lm_head, the graph
verifies, logits stay close to fp32 (bounds per scheme below), weights shrink, overrides work, and
the error report covers every layer.

Relative logits error bounds (measured on this model: int8 0.010, fp8 0.040, int4 g128 0.120,
int4 g32 0.097, w4a8 0.134, w4a8 + LoRC r8 0.089): int8 < 2%, fp8 < 6%, int4 < 18%, w4a8 < 20%,
w4a8 + LoRC < 12%. Weight bytes vs fp16 (this model's 64/128 dims): int8 / fp8 >= 1.8x,
int4 and w4a8 >= 3.3x, w4a8 + LoRC r8 >= 1.4x (rank-8 fp16 factors are big next to a 32x64 layer)."""

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.ir import evaluate, verify
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_graph
from fxforge.passes import PassContext, PassManager
from fxforge.passes.linear_sites import choose_by_pattern as choose_scheme
from fxforge.passes.quantize import Quantize

LINEARS = 15  # 2 layers x 7 projections + lm_head


@pytest.fixture(scope="module")
def llama():
    model = zoo.build("llama")
    x = zoo.example_input("llama")
    graph = fxforge.compile_aot(model, (x,)).graph
    return graph, x, evaluate(graph, [x])[0]


def fresh(graph):
    return parse_graph(print_graph(graph), dict(graph.weights))


def run(graph, calibration=None, **options):
    ctx = PassContext(options={f"quantize.{k}": v for k, v in options.items()}, calibration=calibration, verify=True)
    pm = PassManager([Quantize()], verify=True)
    out = pm.run(fresh(graph), ctx)
    return out, pm.trace.record("quantize").stats


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


CALIB = [[zoo.example_input("llama", seed=5)]]
BOUNDS = [("w8a8-int8", {}, 0.02, 1.8), ("w8a8-fp8", {}, 0.06, 1.8), ("w4a16-int4", {}, 0.18, 3.3),
          ("w4a16-int4", {"group": 32}, 0.18, 3.3), ("w4a8-fp", {}, 0.20, 3.3),
          ("w4a8-fp", {"lorc_rank": 8}, 0.12, 1.4)]


@pytest.mark.parametrize("scheme,extra,bound,shrink", BOUNDS)
def test_scheme_rewrites_all_linears_but_lm_head(llama, scheme, extra, bound, shrink):
    graph, x, ref = llama
    g, stats = run(graph, scheme=scheme, calibration=CALIB, **extra)
    verify(g)
    assert len(g.find("qlinear")) == LINEARS - 1
    (head,) = g.find("linear")
    assert head.operands[1].producer.attrs["weight"] == "lm_head.weight"
    assert all(op.attrs["scheme"] == scheme for op in g.find("qlinear"))
    assert rel(evaluate(g, [x])[0], ref) < bound
    layers = stats["layers"]
    assert len(layers) == LINEARS - 1 and set(stats["skipped"]) == {"lm_head"}
    for name, info in layers.items():
        assert info["error_data"] == "calibration" and 0 < info["rel_error"] < bound, name
        assert info["bytes_stored"] == 2 * info["bytes_fp16"]
        assert info["bytes_fp16"] / info["bytes_after"] >= shrink, (name, info)
        assert f"{name}.weight" not in g.weights and f"{name}.weight.q" in g.weights
    s = stats["summary"]
    assert s["max_rel_error"] == max(v["rel_error"] for v in layers.values())
    assert s["bytes_fp16_before"] / s["bytes_after"] >= shrink
    assert s["output_rel_error"] < bound


def test_lorc_lowers_the_error(llama):
    graph, x, ref = llama
    g0, s0 = run(graph, scheme="w4a8-fp")
    g8, s8 = run(graph, scheme="w4a8-fp", lorc_rank=8)
    assert s0["error_data"].startswith("random") and s8["summary"]["mean_rel_error"] < s0["summary"]["mean_rel_error"]
    assert rel(evaluate(g8, [x])[0], ref) < rel(evaluate(g0, [x])[0], ref)
    assert all(op.attrs["lorc_rank"] == 8 and len(op.operands) == 4 for op in g8.find("qlinear"))


def test_overrides(llama):
    graph, _, _ = llama
    overrides = {"model.layers.0.*": "w8a8-int8", "*.down_proj": None, "lm_head": "w8a8-fp8"}
    g, stats = run(graph, scheme="w4a8-fp", overrides=overrides)
    schemes = {name: info["scheme"] for name, info in stats["layers"].items()}
    assert schemes["model.layers.0.mlp.down_proj"] == "w8a8-int8"  # first match wins
    assert "model.layers.1.mlp.down_proj" in stats["skipped"]
    assert schemes["lm_head"] == "w8a8-fp8"  # a user pattern beats the default
    assert schemes["model.layers.1.self_attn.q_proj"] == "w4a8-fp"
    assert all(s == "w8a8-int8" for n, s in schemes.items() if n.startswith("model.layers.0."))
    assert len(g.find("qlinear")) == LINEARS - 1 and len(g.find("linear")) == 1


def test_off_by_default_and_bad_scheme(llama):
    graph, _, _ = llama
    g, stats = run(graph)
    assert stats == {"enabled": False} and not g.find("qlinear")
    with pytest.raises(ValueError, match="known schemes"):
        run(graph, scheme="w3a3")


def test_tied_embedding_stays(llama):
    graph, x, ref = llama
    g = fresh(graph)
    g.weights["lm_head.weight"] = g.weights["model.embed_tokens.weight"]  # tie them
    ctx = PassContext(options={"quantize.scheme": "w8a8-int8", "quantize.overrides": {"lm_head": "w8a8-int8"}})
    Quantize().run(g, ctx)
    assert ctx.stats["skipped"] == {"lm_head": "weight is tied to an embedding"}


def test_choose_scheme_patterns():
    assert choose_scheme("lm_head", "w8a8-int8", None) is None
    assert choose_scheme("model.lm_head", "w8a8-int8", None) is None
    assert choose_scheme("a.b", "w8a8-int8", {"a.*": "w4a8-fp"}) == "w4a8-fp"
    assert choose_scheme("a.b", "w8a8-int8", {"x.*": None}) == "w8a8-int8"


def test_quantized_graph_round_trips_as_text(llama):
    graph, x, _ = llama
    g, _ = run(graph, scheme="w4a8-fp", lorc_rank=4)
    text = print_graph(g)
    g2 = parse_graph(text, dict(g.weights))
    verify(g2)
    assert print_graph(g2) == text
    torch.testing.assert_close(evaluate(g2, [x])[0], evaluate(g, [x])[0])
