"""Bad input gets a clear fxforge error that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.errors import ArtifactError, CaptureError, ConfigError, FxforgeError, InputError, NotCompilableError


def test_not_a_module_or_function():
    with pytest.raises(NotCompilableError, match="nn.Module or a function"):
        fxforge.compile(42)
    with pytest.raises(NotCompilableError, match="instantiate it first"):
        fxforge.compile(zoo.MLP)
    with pytest.raises(NotCompilableError, match="torch.nn.Module"):
        fxforge.compile_aot(lambda x: x, (torch.zeros(2),))


def test_bad_options():
    with pytest.raises(ConfigError, match="unknown compile option"):
        fxforge.compile(zoo.mlp(), verfy=True)
    with pytest.raises(ConfigError, match="executor"):
        fxforge.CompileConfig(executor="gpu")
    with pytest.raises(ConfigError, match="canonicalise"):
        fxforge.compile_aot(zoo.mlp(), (torch.randn(2, 3, 64),), passes=["canonicalise"])


def test_inputs_that_do_not_fit_a_compiled_model():
    compiled = fxforge.compile_aot(zoo.mlp(), (torch.randn(2, 3, 64),))
    with pytest.raises(InputError, match=r"f32\[s0, s1, 64\].*float16"):
        compiled(torch.randn(2, 3, 64, dtype=torch.float16))
    with pytest.raises(InputError, match=r"f32\[s0, s1, 64\]"):
        compiled(torch.randn(2, 3, 32))
    with pytest.raises(InputError, match="positional"):
        compiled(torch.randn(2, 3, 64), torch.randn(1))
    with pytest.raises(InputError, match="cannot be captured"):
        fxforge.compile_aot(zoo.mlp(), (object(),))


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: one graph cannot express it
            return x * 2
        return x - 1


def test_model_export_cannot_capture_says_why_and_suggests_jit():
    with pytest.raises(CaptureError, match="fxforge.compile") as info:
        fxforge.compile_aot(DataDependent(), (torch.randn(4),))
    assert "DataDependent" in str(info.value)
    jit = fxforge.compile(DataDependent())  # the JIT path handles it through a graph break
    x = torch.randn(4)
    assert torch.allclose(jit(x), DataDependent()(x))


def test_missing_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        fxforge.load(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(ArtifactError, match="incomplete"):
        fxforge.load(tmp_path / "half")


def test_every_error_is_a_fxforge_error():
    for cls in (ArtifactError, CaptureError, ConfigError, InputError, NotCompilableError):
        assert issubclass(cls, FxforgeError)


def test_argument_captured_as_constant_must_match():
    model = zoo.build("llama")
    compiled = fxforge.compile_aot(model, (zoo.example_input("llama"),))  # exported with use_cache=False
    x = zoo.example_input("llama", batch=2, seq=5)
    assert compiled(x, use_cache=False).logits.shape == (2, 5, 256)
    with pytest.raises(InputError, match="compiled for an argument equal to False"):
        compiled(x, use_cache=True)
    with pytest.raises(InputError, match="unexpected input"):
        compiled(x, not_an_argument=1)


def test_calibration_that_no_pass_reads_is_an_error():
    x = torch.randn(2, 3, 64)
    with pytest.raises(ConfigError, match=r"no pass of the pipeline .* reads them"):
        fxforge.compile_aot(zoo.mlp(), (x,), calibration=[(x,)])
    with pytest.raises(ConfigError, match="'<pass>.<option>'"):
        fxforge.compile_aot(zoo.mlp(), (x,), pass_options={"quantize": "w8a8-int8"})
    q = fxforge.compile_aot(zoo.mlp(), (x,), quantize="w8a8-int8", calibration=[(x,)])
    assert q.record.trace.record("quantize").stats["error_data"] == "calibration"


def test_complex_tensors_are_refused_by_name():
    """Complex values ride as real pairs (`frontend/aten_complex.py`) but cannot run as externs: with a dynamic head
    width the pairs' reshape is an extern, so view_as_complex of it is refused, the capture naming the op and why (a
    bare TypeError from the dtype table once). Static sizes: tests/frontend/test_rms_norm_repeat.py."""

    class ComplexRope(torch.nn.Module):
        def forward(self, x):
            f = torch.polar(torch.ones_like(x[..., ::2]), x[..., ::2])
            return torch.view_as_real(torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * f).flatten(-2)

    with pytest.raises(CaptureError, match="view_as_complex .* on a complex tensor: lowering gave"):
        fxforge.compile_aot(ComplexRope(), (torch.randn(2, 8),))
