"""Train mode (compile_aot warns, leaves the caller's module as it was) and input devices (a meta or
wrong-device input is an InputError naming the input, its device and the device expected)."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.errors import InputError
from fxforge.ir.graph import Graph
from fxforge.runtime.devices import check_arguments, check_devices


class Dropper(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.drop = torch.nn.Dropout(0.5)
        self.inner = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5))

    def forward(self, x):
        return self.inner(self.drop(self.lin(x)))


def test_compile_aot_in_train_mode_warns_and_restores_every_flag():
    model = Dropper().train()
    model.inner.eval()  # mixed flags: each must come back as it was
    before = {name: m.training for name, m in model.named_modules()}
    x = torch.randn(4, 8)
    with pytest.warns(UserWarning, match="compiles for inference with eval-mode semantics"):
        compiled = fxforge.compile_aot(model, (x,))
    assert {name: m.training for name, m in model.named_modules()} == before
    with torch.no_grad():
        want = Dropper.forward(model.eval(), x)  # eval semantics: dropout off
    assert torch.allclose(compiled(x), want, atol=1e-6)


def test_compile_aot_in_eval_mode_does_not_warn(recwarn):
    model = Dropper().eval()
    fxforge.compile_aot(model, (torch.randn(4, 8),), executor="reference")
    assert not [w for w in recwarn if "eval-mode" in str(w.message)]
    assert not any(m.training for m in model.modules())


def test_meta_input_names_the_input_on_both_paths():
    model = zoo.build("mlp")
    x = torch.randn(2, 4, 64)
    aot = fxforge.compile_aot(model, (x,), executor="reference")
    with pytest.raises(InputError, match=r"input 0 \(%x\) is a meta tensor.*runs on cpu"):
        aot(x.to("meta"))
    jit = fxforge.compile(model, executor="reference")
    with pytest.raises(InputError, match=r"input 'x' is a meta tensor.*runs on cpu"):
        jit(x.to("meta"))
    assert jit.fxforge_report.calls == 0  # refused before dynamo saw it


def test_wrong_device_is_named_with_the_device_expected():
    graph = Graph("forward")
    with pytest.raises(InputError, match=r"forward: input 0 is on device cpu, but the compiled code runs on cuda"):
        check_devices(graph, [torch.ones(2)], ("cuda",))
    with pytest.raises(InputError, match=r"input 'mask' is on device cpu.*runs on cuda.*x.to\('cuda'\)"):
        check_arguments((), {"mask": {"a": torch.ones(2)}}, ("cuda",), ["x"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU for a second device")
def test_cuda_input_to_a_cpu_model():
    model = zoo.build("mlp")
    x = torch.randn(2, 4, 64)
    aot = fxforge.compile_aot(model, (x,), executor="reference")
    with pytest.raises(InputError, match=r"input 0 \(%x\) is on device cuda:0, but the compiled code runs on cpu"):
        aot(x.cuda())
