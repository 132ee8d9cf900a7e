"""`fxforge costmodel profile -> train -> eval` on a tiny model set (two MLP widths): profiling in local worker
processes, evaluation's profiling job in this process; jobs on a local Ray cluster (the `ray` extra, installed by
requirements-dev); and the errors a user can make. Builds for sm_90 only, so it stays cheap.

The CLI runs here without TRITON_INTERPRET in the environment (the interpret executor arranges the interpreter
itself), so the spawned build workers are fresh processes that build in-process: one process start per worker,
not a build subprocess per kernel (what a worker that ran the interpreter, or has the variable set, must do).
The whole profile on Ray (which reuses its interpreting workers for the builds) is the slow test below."""

import json
from pathlib import Path

import pytest

from fxforge.cli.app import main
from fxforge.costmodel import dataset

HERE = Path(__file__).parent
TRAIN = f"{HERE / 'models.py'}:mlp_train"
HELDOUT = f"{HERE / 'models.py'}:mlp_heldout"


PROFILE = ["costmodel", "profile", "--models", TRAIN, "--example-input", "float32[1,4,64]", "--schemes", "dense,w8a8-int8",
           "--arch", "90", "--mlir", "off"]


@pytest.fixture
def no_interpret_variable(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cm")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRITON_INTERPRET", raising=False)
        assert main([*PROFILE, "--workers", "2", "-o", str(d / "ds.json")]) == 0
    assert main(["costmodel", "train", "--data", str(d / "ds.json"), "-o", str(d / "model.json")]) == 0
    return d


def check_dataset(path: Path) -> None:
    ds = dataset.load(path)
    assert ds["device"] and ds["versions"]["triton"] and ds["feature_set"] == "ir" and ds["archs"] == [90]
    rows = dataset.measured(ds["rows"])
    assert len(rows) == 8  # 3 dense kernels (2 GEMMs, layer norm) + 5 with int8 (2 act-quant, 2 qlinear, norm)
    assert {r["scheme"] for r in rows} == {"dense", "w8a8-int8"}
    assert all(r["registers"] > 0 and r["instructions"] > 0 for r in rows)
    qlin = [r for r in rows if r["features"].get("op:qlinear")]
    assert qlin and all(r["bag"].get("scheme:w8a8-int8") for r in qlin)


def test_profile_writes_a_versioned_dataset(trained):
    check_dataset(trained / "ds.json")


@pytest.mark.slow
def test_profile_on_a_local_ray_cluster(tmp_path):
    """The same profile with every job and build batch on Ray (`--ray auto` starts a local cluster)."""
    ray = pytest.importorskip("ray")
    try:
        assert main([*PROFILE, "--ray", "auto", "-o", str(tmp_path / "ds.json")]) == 0
    finally:
        ray.shutdown()
    check_dataset(tmp_path / "ds.json")


def test_jobs_run_on_a_local_ray_cluster_in_job_order():
    """`--ray auto` starts a local cluster (its CPUs are the parallelism); its workers import the job function
    by reference (a stdlib one: no torch import per worker) and the results come back in job order."""
    ray = pytest.importorskip("ray")
    import shlex

    from fxforge.costmodel.parallel import parallelism, run_jobs

    try:
        assert parallelism(1, "auto") == int(ray.cluster_resources()["CPU"]) >= 1
        assert run_jobs(shlex.split, ["c a", "b", "e d f"], ray="auto") == ["c", "a", "b", "e", "d", "f"]
        assert run_jobs(shlex.split, ["c a", "b"], ray="auto", flat=False) == [["c", "a"], ["b"]]
    finally:
        ray.shutdown()


def test_eval_on_a_heldout_model(trained, no_interpret_variable, capsys):
    out = trained / "eval.json"
    assert main(["costmodel", "eval", "--models", HELDOUT, "--example-input", "float32[1,8,64]",
                 "--schemes", "dense", "--arch", "90", "--workers", "2", "--mlir", "off",
                 "--model-file", str(trained / "model.json"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_kernels"] >= 3
    assert set(report["spearman"]) == {"registers", "instructions"} and "time" not in report["spearman"]
    assert set(report["mape"]) == {"registers", "instructions"} and report["mape"]["instructions"] < 0.5
    assert set(report["roofline_spearman"]) >= {"registers", "instructions"}


def test_eval_refuses_a_training_model(trained, capsys):
    assert main(["costmodel", "eval", "--models", TRAIN, "--example-input", "float32[1,4,64]", "--arch", "90",
                 "--model-file", str(trained / "model.json"), "--json", str(trained / "x.json")]) == 2
    assert "held-out models only" in capsys.readouterr().err


def test_unreachable_ray_address_is_a_clear_error(capsys):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()  # else run_jobs would use that cluster, not probe the address
    from fxforge.costmodel.parallel import run_jobs
    from fxforge.errors import ConfigError

    with pytest.raises(ConfigError, match="Ray cluster"):
        run_jobs(len, [{}], ray="127.0.0.1:1", timeout=5)  # nothing listens: refused at once


def test_ray_without_ray_installed_says_how(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from fxforge.costmodel.parallel import run_jobs
    from fxforge.errors import ConfigError

    with pytest.raises(ConfigError, match="pip install 'fxforge\\[ray\\]'"):
        run_jobs(len, [{}], ray="auto")


def test_bad_scheme_and_missing_model_file(capsys):
    assert main(["costmodel", "profile", "--models", TRAIN, "--example-input", "float32[1,4,64]",
                 "--schemes", "dense,w3"]) == 2
    assert "--schemes" in capsys.readouterr().err
    assert main(["costmodel", "profile", "--models", "nope.py:f", "--example-input", "float32[1,4,64]"]) == 2
    assert "does not exist" in capsys.readouterr().err
