"""Multi-result ATen ops (layer norm with its statistics, topk, sort, var_mean, max.dim, chunk, ...)
end to end: every result survives capture, the IR, its text form and every executor (issue #7.1)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.ir.evaluate import evaluate
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_graph
from fxforge.ir.verify import verify

TOL = 1e-5


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_jit_with_gradients_on_matches_eager(name):
    """No torch.no_grad(): aot_autograd's forward graph returns what backward saves (layer norm's
    mean and rstd, attention's logsumexp), so multi-result ops keep every result. The backward
    graph (compiled by fxforge too) gives eager's gradients."""
    model = zoo.build(name)
    compiled = fxforge.compile(model, verify=True)
    x = zoo.example_input(name, batch=2, seq=10)
    out = compiled(x, use_cache=False)
    assert out.logits.requires_grad
    expected = model(x, use_cache=False)
    assert (out.logits - expected.logits).abs().max().item() <= TOL
    assert compiled.fxforge_report.calls == 1
    out.logits.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    expected.logits.square().mean().backward()
    assert grads and set(grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if n in grads:
            assert torch.allclose(grads[n], p.grad, rtol=1e-3, atol=1e-6), n


def neox(seed: int = 0) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                     vocab_size=256, max_position_embeddings=128, rotary_pct=0.5)
    return transformers.GPTNeoXForCausalLM(cfg).eval()


def test_aot_gpt_neox_matches_eager():
    """GPT-NeoX splits its fused qkv with chunk (a multi-result op)."""
    model = neox()
    x = torch.randint(0, 256, (2, 12))
    compiled = fxforge.compile_aot(model, (x,), verify=True)
    for seq in (12, 5):
        x = torch.randint(0, 256, (3, seq), generator=torch.Generator().manual_seed(seq))
        with torch.no_grad():
            expected = model(x, use_cache=False).logits
        assert (compiled(x).logits - expected).abs().max().item() <= TOL


NEOX_SOURCE = '''
import torch
import transformers


def make_model():
    torch.manual_seed(0)
    cfg = transformers.GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                     vocab_size=256, max_position_embeddings=128, rotary_pct=0.5)
    return transformers.GPTNeoXForCausalLM(cfg).eval()
'''


def test_cli_compiles_gpt_neox(tmp_path):
    (tmp_path / "neox_model.py").write_text(NEOX_SOURCE)
    out = tmp_path / "art"
    result = subprocess.run([sys.executable, "-m", "fxforge.cli", "compile", f"{tmp_path / 'neox_model.py'}:make_model",
                             "--example-input", "int64[2,8]", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = fxforge.load(str(out))
    x = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = neox()(x, use_cache=False).logits
    assert (loaded(x).logits - expected).abs().max().item() <= TOL


class Ranker(torch.nn.Module):
    """Uses topk, sort, var_mean and max/min along a dim, every result of each."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor):
        h = self.proj(x)
        top, top_i = torch.topk(h, 4, dim=-1)
        low, low_i = torch.topk(h, 3, dim=-1, largest=False, sorted=True)
        srt, srt_i = torch.sort(h, dim=-1, descending=True)
        var, mean = torch.var_mean(h, dim=-1, keepdim=True)
        mx, mx_i = torch.max(h, dim=-1)
        mn, mn_i = h.min(dim=0, keepdim=True)
        y = (h - mean) / (var + 1).sqrt() + top.sum(-1, keepdim=True) - low.mean(-1, keepdim=True) + srt[..., :1] * mx[..., None]
        return y, top_i, low_i, srt_i[..., :2], mx_i, mn, mn_i


def ranker_inputs(seq: int = 6):
    return (torch.randn(2, seq, 16, generator=torch.Generator().manual_seed(seq)),)


def check_outputs(out, expected):
    assert len(out) == len(expected)
    for a, b in zip(out, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == torch.int64:
            assert torch.equal(a, b)
        else:
            assert (a - b).abs().max().item() <= TOL


@pytest.mark.parametrize("executor", ["reference", "interpret"])
def test_topk_sort_var_mean_max_aot_matches_eager(executor):
    torch.manual_seed(0)
    model = Ranker().eval()
    compiled = fxforge.compile_aot(model, ranker_inputs(), verify=True, executor=executor)
    graph = compiled.fxforge_report.graphs[0].program.graph
    counts = graph.op_counts()
    assert {"topk", "sort", "var_mean", "max_dim", "min_dim"} <= set(counts), counts
    assert "extern" not in counts, counts
    for seq in (6, 9):
        x = ranker_inputs(seq)
        with torch.no_grad():
            check_outputs(compiled(*x), model(*x))


def test_topk_sort_var_mean_max_jit_matches_eager():
    torch.manual_seed(0)
    model = Ranker().eval()
    compiled = fxforge.compile(model, verify=True)
    x = ranker_inputs()
    check_outputs(compiled(*x), model(*x))  # gradients on
    with torch.no_grad():
        check_outputs(compiled(*x), model(*x))


def test_multi_result_graph_round_trips_through_text():
    torch.manual_seed(0)
    model = Ranker().eval()
    compiled = fxforge.compile_aot(model, ranker_inputs(), verify=True)
    graph = compiled.fxforge_report.graphs[0].program.graph
    text = print_graph(graph)
    assert "%topk, %topk_1 = topk(" in text
    parsed = parse_graph(text, dict(graph.weights))
    verify(parsed)
    assert print_graph(parsed) == text
    x = ranker_inputs(7)
    got = evaluate(parsed, list(x))
    with torch.no_grad():
        check_outputs(got, model(*x))
