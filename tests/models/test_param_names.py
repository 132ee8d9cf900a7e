"""Any parameter or buffer name torch allows compiles (issue #7.2): nn.Sequential's `0.weight`,
names with dashes, spaces, quotes, backslashes and non-ASCII letters; through JIT, AOT, a saved
artifact and the IR text form."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_graph

TOL = 1e-5
ODD = ["w-eight", "poids é", 'q"uote', "back\\slash", "ünïcode_名前", "tab\there"]


def sequential() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)).eval()


class OddNames(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        for i, name in enumerate(ODD[:3]):
            setattr(self, name, torch.nn.Parameter(torch.randn(8, 8) / 3))
            self.register_buffer(ODD[3 + i], torch.randn(8))
        self.inner = torch.nn.ModuleDict({"a-b": torch.nn.Linear(8, 8)})

    def forward(self, x):
        for i, name in enumerate(ODD[:3]):
            x = torch.tanh(x @ getattr(self, name).T + getattr(self, ODD[3 + i]))
        return self.inner["a-b"](x)


def close(a, b) -> bool:
    return (a - b).abs().max().item() <= TOL


@pytest.mark.parametrize("make", [sequential, OddNames])
def test_jit(make):
    model = make().eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert close(fxforge.compile(model, verify=True)(x), model(x))


@pytest.mark.parametrize("executor", ["reference", "interpret"])
@pytest.mark.parametrize("make", [sequential, OddNames])
def test_aot_save_load(make, executor, tmp_path):
    model = make().eval()
    x = torch.randn(3, 8)
    compiled = fxforge.compile_aot(model, (torch.randn(2, 8),), verify=True, executor=executor)
    with torch.no_grad():
        expected = model(x)
    assert close(compiled(x), expected)
    graph = compiled.fxforge_report.graphs[0].program.graph
    assert {n for n, _ in model.named_parameters()} <= set(graph.weights)
    compiled.save(str(tmp_path / "art"))
    assert close(fxforge.load(str(tmp_path / "art"))(x), expected)


def test_odd_names_round_trip_through_text():
    model = OddNames().eval()
    compiled = fxforge.compile_aot(model, (torch.randn(2, 8),), verify=True)
    graph = compiled.fxforge_report.graphs[0].program.graph
    text = print_graph(graph)
    assert '@"poids \\u00e9"' in text and "@w-eight" in text and '@"q\\"uote"' in text
    parsed = parse_graph(text, dict(graph.weights))
    assert print_graph(parsed) == text
    assert set(parsed.weights) == set(graph.weights)
