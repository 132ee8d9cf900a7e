"""benchmarks/gpu/decode.py runs end to end in its CPU dry-run mode (a tiny Llama, reference executor):
the table has a row per variant with figures, fxforge's fp32 step agrees with eager's, and the GPU-only
rows say why they are skipped. The GPU run itself is `benchmarks/gpu/run_all.sh`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_decode_bench", ROOT / "benchmarks" / "gpu" / "decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_the_table(tmp_path):
    bench = _bench()
    md = bench.main(["--dry-run", "--out", str(tmp_path), "--batches", "1", "--contexts", "16", "--reps", "1",
                     "--variants", "eager", "torch.compile max-autotune", "fxforge bf16", "fxforge w4a16-int4"])
    text = md.read_text()
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| ")}
    for variant in ("eager", "fxforge bf16", "fxforge w4a16-int4"):
        assert float(rows[variant][4]) > 0 and float(rows[variant][5]) > 0, text  # ms/token, tok/s
    assert float(rows["fxforge bf16"][8]) <= 1e-4  # fp32 in the dry run: eager's logits
    assert "dry run" in rows["torch.compile max-autotune"][9]
    assert "needs a GPU" in text and (tmp_path / md.name.replace(".md", ".json")).exists()


def test_dry_run_of_the_moe_model(tmp_path):
    """--model mixtral: the Mixtral-shaped decoder (tiny here) through the moe op, 16-bit and int4 experts."""
    md = _bench().main(["--dry-run", "--model", "mixtral", "--out", str(tmp_path), "--batches", "1", "--contexts",
                        "16", "--reps", "1", "--variants", "eager", "fxforge bf16", "fxforge w4a16-int4"])
    text = md.read_text()
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| ")}
    assert "mixtral-shaped" in text and md.name.startswith("decode-dryrun-mixtral-")
    assert float(rows["fxforge bf16"][8]) <= 1e-4 and float(rows["fxforge w4a16-int4"][5]) > 0, text


def test_budget_skips_what_does_not_fit(tmp_path):
    bench = _bench()
    md = bench.main(["--dry-run", "--out", str(tmp_path), "--batches", "1", "--contexts", "16", "--budget-s", "0",
                     "--variants", "eager"])
    assert "time budget" in md.read_text()


@pytest.mark.parametrize("flag", ["--variants"])
def test_unknown_variant_is_refused(flag):
    with pytest.raises(SystemExit):
        _bench().main(["--dry-run", flag, "nope"])
