"""Every standard template configuration builds for sm_90 and sm_80 without spills and within shared memory,
and so does every template configuration of the size sweep (hidden 64..256, head dims 64 and 128, each mask
kind, each quantization scheme): spills that one size hides show at another. CI runs this file on the newest
Triton and on 3.6.0 (`make test-triton36`).

The compiles run in fresh subprocesses without TRITON_INTERPRET (other test modules set it for the
interpreter), through `fxforge.codegen.build.build_in_subprocess`. A configuration that spills is fixed
by shrinking its blocks in `fxforge.codegen.blocks`, not by loosening this test.
"""

from __future__ import annotations

import pytest
import triton
from standard_specs import HEAD_DIMS, decode_specs, size_sweep_specs, standard_specs

from fxforge.codegen.build import SHARED_LIMITS, build_in_subprocess, specs_for_arch


@pytest.mark.parametrize("arch", [90, 80])
def test_standard_specs_build(arch):
    specs = specs_for_arch(standard_specs(), arch)
    assert len(specs) >= 8
    _check_builds(specs, arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [90, 80])
def test_size_sweep_builds(arch):
    specs = specs_for_arch(size_sweep_specs(), arch)
    labels = " ".join(s["label"] for s in specs)  # sizes that compile identically (same blocks) are built once
    # a head dim is padded to BLOCK_D, so D=32 builds as D=24 did: every padded width must be covered
    block_d = {s["constexprs"]["BLOCK_D"] for s in specs if s["kernel"] == "attention_kernel"}
    assert block_d == {triton.next_power_of_2(d) for d in HEAD_DIMS}, block_d
    assert "x96x96" in labels and "x768x192" in labels
    _check_builds(specs, arch)


@pytest.mark.parametrize("arch", [90, 80])
def test_decode_table_builds(arch):
    """The decode-shaped GEMM configs (small BLOCK_N, long BLOCK_K, split-K) build spill-free on the arch they are for."""
    specs = specs_for_arch(decode_specs(arch), arch)
    assert any(s["constexprs"]["BLOCK_N"] == 16 for s in specs) and all(s["constexprs"]["BLOCK_M"] <= 64 for s in specs)
    assert any(s["constexprs"]["SPLIT_K"] > 1 for s in specs)  # o_proj / down_proj at M <= 16
    _check_builds(specs, arch)


def _check_builds(specs, arch):
    builds = build_in_subprocess(specs, arch, timeout=900, sass_counts=False)
    assert len(builds) == len(specs)
    report = "\n".join(f"{b.label}: ok={b.ok} regs={b.registers} stack={b.spills} shared={b.shared_bytes} {b.error[:300]}"
                       for b in builds)
    for b in builds:
        assert b.ok, report
        assert b.arch == arch
        assert 0 < b.registers <= 255, report
        assert b.spills == 0, report
        assert 0 < b.shared_bytes <= SHARED_LIMITS[arch], report
        assert b.ptx_lines > 0


def test_bf16_specs_only_from_sm90():
    all_specs = standard_specs()
    assert any(s["constexprs"].get("INPUT_PRECISION") and "bfloat16" in s["label"] for s in all_specs)
    assert not any("bfloat16" in s["label"] for s in specs_for_arch(all_specs, 80))
    assert len(specs_for_arch(all_specs, 90)) == len(all_specs)


def test_failed_build_is_reported_not_raised():
    bad_sig = dict(standard_specs()[0], signature={"a_ptr": "*fp16"})  # arguments missing
    bad_kernel = dict(standard_specs()[0], kernel="no_such_kernel")
    builds = build_in_subprocess([bad_sig, bad_kernel], 80, timeout=120, jobs=1)
    assert not builds[0].ok and "signature lacks" in builds[0].error
    assert not builds[1].ok and "no_such_kernel" in builds[1].error
