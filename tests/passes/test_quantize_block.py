"""The quantize pass with the MX / NVFP4 block schemes on the zoo Llama: every linear but lm_head becomes
a qlinear of a #blockfp weight, GPTQ (the default with calibration) beats round-to-nearest per layer,
logits stay close to fp32, the IR round-trips as text, and sizes that do not fit a block are refused.

Relative logits error bounds (measured on this model, GPTQ with calibration: mxfp8 ~0.03, mxint8
~0.01, mxfp6 ~0.03, mxfp4 ~0.13, nvfp4 ~0.10)."""

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.errors import ConfigError
from fxforge.ir import evaluate, verify
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_graph
from fxforge.ir.types import BlockFP
from fxforge.passes import PassContext, PassManager
from fxforge.passes.quantize import Quantize

BOUNDS = {"mxfp8": 0.06, "mxint8": 0.03, "mxfp6": 0.07, "mxfp4": 0.22, "nvfp4": 0.18}
CALIB = [[zoo.example_input("llama", seed=s)] for s in range(5, 13)]  # 256 tokens: more than any layer is wide


@pytest.fixture(scope="module")
def llama():
    model = zoo.build("llama")
    x = zoo.example_input("llama")
    graph = fxforge.compile_aot(model, (x,)).graph
    return graph, x, evaluate(graph, [x])[0]


def run(graph, calibration=None, **options):
    ctx = PassContext(options={f"quantize.{k}": v for k, v in options.items()}, calibration=calibration, verify=True)
    pm = PassManager([Quantize()], verify=True)
    out = pm.run(parse_graph(print_graph(graph), dict(graph.weights)), ctx)
    return out, pm.trace.record("quantize").stats


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("scheme", sorted(BOUNDS))
def test_block_scheme_rewrites_linears_with_gptq(llama, scheme):
    graph, x, ref = llama
    g, stats = run(graph, scheme=scheme, calibration=CALIB, gptq=True)
    verify(g)
    qs = g.find("qlinear")
    assert len(qs) == 14 and len(g.find("linear")) == 1
    for op in qs:
        enc = op.operands[1].type.encoding
        assert isinstance(enc, BlockFP) and op.attrs["act_format"] == enc.format
    err = rel(evaluate(g, [x])[0], ref)
    assert 0 < err < BOUNDS[scheme]
    for name, info in stats["layers"].items():
        assert info["method"] == "gptq" and info["rel_error"] <= info["rtn_rel_error"] * 1.02, name
    # the IR (with #blockfp consts) round-trips as text and evaluates the same
    again = parse_graph(print_graph(g), dict(g.weights))
    assert print_graph(again) == print_graph(g)
    assert torch.equal(evaluate(again, [x])[0], evaluate(g, [x])[0])


def test_gptq_beats_round_to_nearest_end_to_end(llama):
    graph, x, ref = llama
    g_rtn, _ = run(graph, scheme="mxfp4", calibration=CALIB, gptq=False)
    g_gptq, _ = run(graph, scheme="mxfp4", calibration=CALIB, gptq=True)
    assert rel(evaluate(g_gptq, [x])[0], ref) < rel(evaluate(g_rtn, [x])[0], ref)


def test_block_that_does_not_divide_in_features_is_a_config_error():
    model = torch.nn.Sequential(torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 48)
    with pytest.raises(ConfigError, match=r"'0'.*input dim 48 is not a multiple of mxfp8's block size 32"):
        fxforge.compile_aot(model, (x,), quantize="mxfp8")
    # 48 is a multiple of NVFP4's 16
    out = fxforge.compile_aot(model, (x,), quantize="nvfp4")
    assert len(out.graph.find("qlinear")) == 2
    with pytest.raises(ConfigError, match="fixed block of 32"):
        fxforge.CompileConfig(quantize="mxfp4", quantize_group=64)
