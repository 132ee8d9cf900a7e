"""End to end on real architectures: fxforge's outputs against PyTorch eager (fp32, <= 1e-5)."""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree

import fxforge
from fxforge import testing as zoo
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_graph

TOL = 1e-5
LANGUAGE_MODELS = ["llama", "mistral", "gpt2", "bert"]


def tensors(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def max_diff(a, b) -> float:
    ta, tb = tensors(a), tensors(b)
    assert len(ta) == len(tb) and ta, "outputs differ in structure"
    return max((x - y).abs().max().item() for x, y in zip(ta, tb))


def eager(model, x):
    with torch.no_grad():
        return model(x, use_cache=False) if hasattr(model, "config") and hasattr(model.config, "use_cache") else model(x)


@pytest.mark.parametrize("name", LANGUAGE_MODELS + ["mlp"])
def test_aot_matches_eager_at_three_lengths_without_recompiling(name):
    model = zoo.build(name)
    compiled = fxforge.compile_aot(model, (zoo.example_input(name, batch=2, seq=16),), verify=True)
    for seq in (16, 7, 33):
        x = zoo.example_input(name, batch=3, seq=seq, seed=seq)
        out = compiled(x)
        assert type(out) is type(eager(model, x))
        assert max_diff(out, eager(model, x)) <= TOL
    report = compiled.fxforge_report
    assert len(report.graphs) == 1 and report.calls == 3  # one graph ran at three lengths


@pytest.mark.parametrize("name", LANGUAGE_MODELS + ["mlp"])
def test_jit_matches_eager(name):
    model = zoo.build(name)
    compiled = fxforge.compile(model, verify=True)
    assert isinstance(compiled, type(model))
    x = zoo.example_input(name, batch=2, seq=12)
    with torch.no_grad():
        out = compiled(x, use_cache=False) if name != "mlp" and name != "bert" else compiled(x)
    assert max_diff(out, eager(model, x)) <= TOL
    assert compiled.fxforge_report.calls >= 1


def test_decorated_function_matches_eager():
    w = torch.randn(32, 16)

    @fxforge.compile
    def block(x, y):
        return torch.softmax(x @ w.T, dim=-1) * torch.sigmoid(y).sum(-1, keepdim=True)

    @fxforge.compile(verify=True)
    def scaled(x):
        return torch.nn.functional.silu(x) * 2.0 + 1

    x, y = torch.randn(4, 16), torch.randn(4, 8)
    expected = torch.softmax(x @ w.T, dim=-1) * torch.sigmoid(y).sum(-1, keepdim=True)
    assert (block(x, y) - expected).abs().max().item() <= TOL
    assert (scaled(x) - (torch.nn.functional.silu(x) * 2.0 + 1)).abs().max().item() <= TOL
    assert block.fxforge_report.calls == 1 and scaled.fxforge_report.calls == 1


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_generate_through_compiled_forward(name):
    model = zoo.build(name)
    prompt = zoo.example_input(name, batch=1, seq=8)
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=16, do_sample=False, min_new_tokens=16)
        compiled = fxforge.compile(model)
        got = compiled.generate(prompt, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    assert torch.equal(got, expected)
    report = compiled.fxforge_report
    # prefill + 15 decode steps all ran compiled code (the cache grows: dynamo recompiles once, dynamic)
    assert report.calls == 16, str(report)
    assert report.graphs[0].calls == 1 and sum(g.calls for g in report.graphs[1:]) == 15


@pytest.mark.parametrize("name", LANGUAGE_MODELS + ["mlp"])
def test_ir_round_trips_through_text(name):
    model = zoo.build(name)
    compiled = fxforge.compile_aot(model, (zoo.example_input(name),))
    text = print_graph(compiled.graph)
    assert print_graph(parse_graph(text, compiled.graph.weights)) == text
    for record in compiled.record.trace.records:  # every stage of the pipeline, too
        assert print_graph(parse_graph(record.ir_after)) == record.ir_after


def test_jit_dynamic_runs_three_lengths_without_recompiling():
    model = zoo.build("llama")
    compiled = fxforge.compile(model, dynamic=True)
    with torch.no_grad():
        for seq in (9, 17, 30):
            x = zoo.example_input("llama", batch=2, seq=seq, seed=seq)
            assert max_diff(compiled(x, use_cache=False), eager(model, x)) <= TOL
    assert len(compiled.fxforge_report.graphs) == 1 and compiled.fxforge_report.calls == 3


@pytest.mark.slow
def test_many_compiled_models_in_one_process_all_run_compiled():
    # Hugging Face models share one forward wrapper; dynamo's default recompile limit (8) would
    # otherwise send the ninth compiled model silently to eager.
    with torch.no_grad():
        for seed in range(10):
            model = zoo.build("llama", seed=seed, layers=1)
            compiled = fxforge.compile(model)
            x = zoo.example_input("llama", batch=1, seq=6)
            assert max_diff(compiled(x, use_cache=False), eager(model, x)) <= TOL
            assert compiled.fxforge_report.calls == 1, f"model {seed} did not run compiled code"


def test_a_call_that_runs_no_compiled_code_is_reported():
    @torch._dynamo.disable
    def opaque(x):
        return x * 2

    def f(x):
        return opaque(x)

    compiled = fxforge.compile(f)
    with pytest.warns(UserWarning, match="ran no fxforge-compiled code"):
        assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 2.0))
