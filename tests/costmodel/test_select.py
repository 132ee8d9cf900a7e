"""Selection under an accuracy budget on the zoo MLP: the plan holds the budget on other inputs, stores
fewer weight bytes than dense, says when nothing fits, and refuses bad options."""

from pathlib import Path

import pytest

import fxforge
from fxforge import testing
from fxforge.costmodel import models
from fxforge.errors import ConfigError


def _calib(n=2, seed=0):
    return [testing.example_input("mlp", batch=2, seq=8, seed=seed + s) for s in range(n)]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def model():
    return testing.build("mlp")


def test_plan_meets_budget_on_other_inputs_and_saves_bytes(model):
    dense = fxforge.compile_aot(model, (_calib()[0],), quantize_method="rtn")
    c = fxforge.compile_aot(model, (_calib()[0],), budget=0.02, calibration=_calib(), quantize_method="rtn")
    plan = c.record.plan
    assert plan["met"] and plan["error"] <= 0.02
    assert set(plan["plan"]) == {"up", "down"}
    assert any(row["choice"] != "dense" for row in plan["plan"].values())
    assert all(row["predicted_time_us"] > 0 for row in plan["plan"].values())
    assert c.record.weight_bytes < dense.record.weight_bytes
    errs = [_rel(c(x), model(x)) for x in _calib(3, seed=50)]
    assert max(errs) <= 1.5 * 0.02
    # each chosen candidate's own error is the measured one for that site alone
    for site, row in plan["plan"].items():
        cands = {c_["choice"]: c_ for c_ in plan["candidates"][site]}
        assert cands[row["choice"]]["error"] == pytest.approx(row["error"], abs=1e-6)
        assert cands["dense"]["error"] == 0


def test_tighter_budget_never_stores_more_bytes_than_looser(model):
    loose = fxforge.compile_aot(model, (_calib()[0],), budget=0.05, calibration=_calib(), quantize_method="rtn")
    tight = fxforge.compile_aot(model, (_calib()[0],), budget=0.006, calibration=_calib(), quantize_method="rtn")
    assert loose.record.plan["met"]
    assert loose.record.plan["predicted_time_us"] <= tight.record.plan["predicted_time_us"]


def test_no_plan_fits_keeps_dense_and_says_so(model):
    dense = fxforge.compile_aot(model, (_calib()[0],), quantize_method="rtn")
    c = fxforge.compile_aot(model, (_calib()[0],), budget=1e-7, calibration=_calib(), quantize_method="rtn")
    plan = c.record.plan
    assert not plan["met"] and all(row["choice"] == "dense" for row in plan["plan"].values())
    assert any("stays dense" in n for n in plan["notes"]) and any("stays dense" in n for n in c.record.notes)
    assert c.record.weight_bytes == dense.record.weight_bytes
    x = _calib(1, seed=9)[0]
    assert _rel(c(x), model(x)) < 1e-5


def test_missing_shipped_model_falls_back_to_roofline(model, monkeypatch):
    monkeypatch.setattr(models, "SHIPPED", Path("/nonexistent/model.json"))
    c = fxforge.compile_aot(model, (_calib()[0],), budget=0.02, calibration=_calib(), quantize_method="rtn")
    assert c.record.plan["predictor"].startswith("roofline")
    assert any("roofline" in n for n in c.record.plan["notes"])


def test_shipped_model_is_used_when_present():
    assert models.shipped_model() is not None, "the package ships fxforge/costmodel/data/model.json"
    from fxforge.costmodel.select import _Predictor

    assert _Predictor(models.shipped_model(), 90).name.startswith("learned")


@pytest.mark.parametrize("options, words", [
    ({"budget": 0.0, "calibration": [1]}, "must be a number > 0"),
    ({"budget": -0.1, "calibration": [1]}, "must be a number > 0"),
    ({"budget": 0.05}, "needs calibration"),
    ({"budget": 0.05, "calibration": [1], "quantize": "w8a8-int8"}, "drop quantize"),
])
def test_bad_budget_options(options, words):
    with pytest.raises(ConfigError, match=words):
        fxforge.CompileConfig(**options)


def test_cli_compile_budget_and_inspect_plan(tmp_path, capsys):
    import torch

    from fxforge.cli.app import main

    calib = tmp_path / "calib.pt"
    torch.save(_calib(), calib)
    out = tmp_path / "art"
    factory = f"{Path(__file__).parent / 'models.py'}:mlp_train"
    assert main(["compile", factory, "--example-input", "float32[2,8,64]", "--budget", "0.02", "--calibration",
                 str(calib), "--quantize-method", "rtn", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--plan"]) == 0
    text = capsys.readouterr().out
    assert "budget 0.02: met" in text and "up" in text and "down" in text and "weight bytes" in text
    assert main(["inspect", str(out)]) == 0
    assert "plan (budget 0.02, met" in capsys.readouterr().out
    assert main(["compile", factory, "--example-input", "float32[2,8,64]", "--budget", "x", "-o", str(out)]) == 2
    assert "--budget" in capsys.readouterr().err
