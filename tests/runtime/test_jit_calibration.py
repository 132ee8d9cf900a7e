"""Calibration on the JIT path: the examples reach every graph dynamo captures (a recording run), so a
JIT-quantized model measures the same per-layer errors on them as the AOT path does."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import testing as zoo


def quantize_stats(report) -> list[dict]:
    return [r.stats for g in report.graphs for r in g.trace.records if r.name == "quantize"]


@pytest.fixture(scope="module")
def setup():
    model = zoo.build("llama", layers=1)
    calib = [{"input_ids": zoo.example_input("llama", batch=2, seq=12, seed=s), "use_cache": False} for s in range(3)]
    return model, calib


def test_jit_calibrates_like_aot(setup):
    model, calib = setup
    aot = fxforge.compile_aot(model, (zoo.example_input("llama", batch=2, seq=12),), quantize="w8a8-int8",
                              calibration=calib)
    jit = fxforge.compile(model, quantize="w8a8-int8", calibration=calib)
    plain = fxforge.compile(model, quantize="w8a8-int8")
    x = zoo.example_input("llama", batch=2, seq=12, seed=9)
    with torch.no_grad():
        got = jit(input_ids=x, use_cache=False).logits
        plain(input_ids=x, use_cache=False)
        assert torch.allclose(got, aot(x).logits, atol=1e-5)
    (a,), (j,), (p,) = (quantize_stats(c.fxforge_report) for c in (aot, jit, plain))
    assert j["error_data"] == "calibration" and p["error_data"].startswith("random")
    assert set(j["layers"]) == set(a["layers"]) and j["layers"]
    for name, layer in j["layers"].items():
        assert layer["error_data"] == "calibration"
        assert layer["rel_error"] == pytest.approx(a["layers"][name]["rel_error"], rel=1e-6), name
    assert j["summary"]["output_rel_error"] == pytest.approx(a["summary"]["output_rel_error"], rel=1e-6)
    assert any(abs(layer["rel_error"] - p["layers"][n]["rel_error"]) > 1e-6 for n, layer in j["layers"].items())
    assert len(jit.fxforge_report.graphs) == 1 and jit.fxforge_report.calls == 1  # examples ran eagerly, once


def test_a_graph_the_examples_never_reached_says_so(setup):
    model, calib = setup
    jit = fxforge.compile(model, quantize="w8a8-int8", calibration=calib)
    x = zoo.example_input("llama", batch=1, seq=5, seed=9)
    with torch.no_grad(), pytest.warns(UserWarning, match="compiled without calibration data"):
        jit(x, use_cache=True)  # a different input structure: a graph of its own
    notes = [n for g in jit.fxforge_report.graphs for n in g.notes]
    assert any("no calibration example reached this graph" in n for n in notes)
