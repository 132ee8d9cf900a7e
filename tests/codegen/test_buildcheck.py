"""Every kernel every zoo model launches builds for sm_90 and sm_80: no spills, shared memory within limits.

The models run once under the interpreter (executor="interpret") while their launches are recorded
(`fxforge.codegen.buildcheck`); the distinct specs of all models are built once per arch (in
subprocesses without TRITON_INTERPRET), then `check_kernels` runs per model against the shared build
cache and writes the figures into each model's trace. A kernel that spills or no longer compiles
fails here: fix its blocks (`fxforge.codegen.blocks`) or the generator, not this test.
"""

from __future__ import annotations

import json

import pytest
import torch
import triton
import triton.language as tl

import fxforge
from fxforge import testing as zoo
from fxforge.codegen import buildcheck as bc
from fxforge.codegen.build import SHARED_LIMITS

MODELS = ["llama", "mistral", "gpt2", "bert", "mlp"]
ARCHS = (90, 80)


@pytest.fixture(scope="module")
def checked():
    """{model: (compiled, input, specs, launches, builds)} with all models' distinct specs built once per arch."""
    models = {}
    for name in MODELS:
        x = zoo.example_input(name, batch=2, seq=8)
        compiled = fxforge.compile_aot(zoo.build(name), (x,), executor="interpret")
        launches = bc.record_launches(lambda c=compiled, x=x: c(x))
        models[name] = [compiled, x, bc.launch_specs(launches), launches]
    unique = list({s["key"]: s for m in models.values() for s in m[2]}.values())
    bc.build_specs(unique, ARCHS, timeout=600)  # into bc.BUILD_CACHE, shared by everything below
    cached = len(bc.BUILD_CACHE)
    out = {}
    for name, (compiled, x, specs, launches) in models.items():
        check = bc.check_kernels(compiled, (x,), ARCHS)  # records again: the same specs, all cache hits
        compiled.record.add_check(bc.RECORD_NAME, check.stats, check.seconds)  # as the CLI files it
        out[name] = (compiled, x, specs, launches, check.builds)
    assert len(bc.BUILD_CACHE) == cached, "a second recording of the same model gave different specs"
    return out


def _report(rows):
    return "\n".join(f"{r['label']}: ok={r.get('ok')} regs={r.get('registers')} spills={r.get('spills')} "
                     f"shared={r.get('shared')} {r.get('error', '')[-300:]}" for r in rows)


@pytest.mark.parametrize("name", MODELS)
def test_every_kernel_builds(checked, name):
    compiled, _, specs, launches, builds = checked[name]
    assert launches and specs
    assert sum(s["launches"] for s in specs) == len(launches)
    assert {s["kernel"] for s in specs} >= {"gemm_kernel"}
    record = compiled.record.trace.record(bc.RECORD_NAME)
    assert record.ir_before == record.ir_after == compiled.record.trace.records[-2].ir_after
    assert len(builds) == len(specs) * len(ARCHS)
    for arch in ARCHS:
        rows = record.stats[f"sm_{arch}"]
        assert len(rows) == len(specs)
        report = _report(rows)
        for r in rows:
            assert r["ok"] is True, report
            assert 0 < r["registers"] <= 255, report
            assert r["spills"] == 0, report
            assert 0 <= r["shared"] <= SHARED_LIMITS[arch], report


def test_generated_and_template_kernels_are_found(checked):
    specs = checked["llama"][2]
    generated = [s for s in specs if "path" in s]
    assert generated and all(s["path"].endswith(".py") for s in generated)
    assert any(s["kernel"] == "attention_kernel" for s in specs)
    gemm = next(s for s in specs if s["kernel"] == "gemm_kernel")
    assert gemm["module"] == "fxforge.codegen.templates.gemm"
    assert gemm["signature"]["a_ptr"] == "*fp32" and gemm["signature"]["M"] == "i32"
    assert gemm["constexprs"]["stride_ak"] == 1 and "BLOCK_M" in gemm["constexprs"]
    assert "num_warps" in gemm and "num_stages" in gemm


@triton.jit
def _probe_kernel(x_ptr, y_ptr, n, m, s, scale, BLOCK: tl.constexpr, FP8_DOT: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    v = tl.load(x_ptr + offs * s, mask=offs < n, other=0.0)
    tl.store(y_ptr + offs, v * scale + m, mask=offs < n)


def test_launch_to_spec_types_hints_and_fp8_skip():
    x = torch.zeros(64, dtype=torch.float16)
    y = torch.zeros(64, dtype=torch.float16)  # y[1:] below stays in bounds
    with bc.record_launches() as launches:
        for _ in range(2):
            _probe_kernel[(1,)](x, y, 32, 17, 1, 0.5, BLOCK=32, FP8_DOT=False, num_warps=2)
        _probe_kernel[(1,)](x, y[1:], 32, 17, 1, 0.5, BLOCK=32, FP8_DOT=True)
    assert len(launches) == 3
    specs = bc.launch_specs(launches)
    assert len(specs) == 2 and specs[0]["launches"] == 2
    first, fp8 = specs
    assert first["signature"] == {"x_ptr": "*fp16", "y_ptr": "*fp16", "n": "i32", "m": "i32", "scale": "fp32"}
    assert first["constexprs"] == {"s": 1, "BLOCK": 32, "FP8_DOT": False}  # an int equal to 1 is specialised
    assert first["divisible"] == ["n"] and first["num_warps"] == 2 and first["num_stages"] == 3
    assert "path" in first and "min_arch" not in first and "unaligned" not in first
    assert fp8["unaligned"] == ["y_ptr"] and fp8["min_arch"] == 89
    assert bc.skip_reason(fp8, 80) and not bc.skip_reason(fp8, 90)
    assert bc.build_specs([fp8], (80,), cache={}) == {80: [None]}


def test_inspect_kernels_cli(checked, tmp_path, capsys):
    from fxforge.cli import main

    out = tmp_path / "mlp"
    assert main(["compile", "fxforge/testing.py:mlp", "--example-input", "float32[2,8,64]", "--executor", "interpret",
                 "--build-check", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "build check sm_90:" in printed and "build check sm_80:" in printed
    saved = json.loads((out / "trace.json").read_text())
    stats = next(r for r in saved["records"] if r["name"] == bc.RECORD_NAME)["stats"]
    assert set(stats) == {"sm_90", "sm_80"} and all(r["ok"] for rows in stats.values() for r in rows)
    assert main(["inspect", str(out), "--kernels"]) == 0
    table = capsys.readouterr().out
    assert "sm_90:" in table and "sm_80:" in table and "gemm_kernel" in table and "k2_layer_norm" in table
    assert "NO" not in table

    plain = tmp_path / "plain"
    checked["bert"][0].record.trace.records.pop()  # drop its build_check record, save, and ask again
    checked["bert"][0].save(str(plain))
    assert main(["inspect", str(plain), "--kernels"]) == 0
    assert "--build-check" in capsys.readouterr().out
    assert main(["compile", "fxforge/testing.py:mlp", "--example-input", "float32[2,8,64]", "--build-check",
                 "-o", str(tmp_path / "bad")]) == 2
