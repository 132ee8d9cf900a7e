"""The hadamard Triton kernel and the fused Hadamard + per-token activation quantization kernel against
the reference (interpreter), and their builds for sm_80 / sm_90 (no spills)."""

import pytest
import torch

from fxforge.codegen.build import build_in_subprocess
from fxforge.codegen.templates.act_quant import hadamard_act_quant_spec, quantize_activations
from fxforge.codegen.templates.hadamard import hadamard, hadamard_spec
from fxforge.ir.hadamard import hadamard_ref
from fxforge.ir.lowp_ops import _quantize_ref

CASES = [(64, 0), (128, 32), (96, 0), (56, 28), (40, 20), (24, 12), (688, 16), (2, 0)]


@pytest.mark.parametrize("n,block", CASES)
def test_kernel_matches_reference(n, block):
    x = torch.randn(5, n, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(hadamard(x, block), hadamard_ref(x, block=block), atol=2e-6, rtol=1e-5)


def test_kernel_half_and_strided_input():
    x = torch.randn(4, 2, 64, dtype=torch.float16)
    torch.testing.assert_close(hadamard(x), hadamard_ref(x), atol=2e-3, rtol=1e-3)
    xt = torch.randn(64, 6).T  # non-contiguous rows
    torch.testing.assert_close(hadamard(xt), hadamard_ref(xt), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["i8", "f8e4m3"])
@pytest.mark.parametrize("n,block", [(64, 0), (128, 32), (56, 28)])
def test_fused_act_quant_matches_reference(fmt, n, block):
    x = torch.randn(6, n, generator=torch.Generator().manual_seed(1)) * 3
    x[:, 3] *= 40  # an outlier channel
    q, s = quantize_activations(x, fmt, block)
    rq, rs = _quantize_ref(hadamard_ref(x, block=block), format=fmt, axis=-1, group=0)
    torch.testing.assert_close(s, rs.squeeze(-1), atol=0, rtol=1e-6)
    assert (q.view(torch.uint8).int() - rq.view(torch.uint8).int()).abs().max() == 0


@pytest.mark.parametrize("arch", [80, 90])
def test_builds_without_spills(arch):
    specs = [hadamard_spec(4096), hadamard_spec(28 * 128, "float32"), hadamard_spec(12),
             hadamard_act_quant_spec("i8", 4096, 0), hadamard_act_quant_spec("i8", 11008, 16)]
    if arch >= 89:
        specs.append(hadamard_act_quant_spec("f8e4m3", 4096, 128))
    builds = build_in_subprocess(specs, arch, jobs=1, sass_counts=False)
    assert len(builds) == len(specs) and all(b.ok and b.spills == 0 for b in builds), builds


def test_rotated_model_runs_hadamard_kernels_and_matches_reference():
    """Online rotations run as hadamard template kernels; the interpret executor equals the reference one."""
    import fxforge
    from fxforge import testing as zoo

    model, x = zoo.build("llama"), zoo.example_input("llama")
    for scheme, kind in (("w8a8-int8", "hadamard[hadamard]"), ("w4a16-int4", "hadamard[hadamard]")):
        options = dict(quantize=scheme, quantize_method="rtn", rotate=True)
        ref = fxforge.compile_aot(model, (x,), executor="reference", **options)(x).logits
        compiled = fxforge.compile_aot(model, (x,), executor="interpret", **options)
        groups = compiled.record.trace.record("fuse").stats["groups"]
        assert groups.count(kind) == 4, groups
        torch.testing.assert_close(compiled(x).logits, ref, atol=1e-4, rtol=1e-4)
