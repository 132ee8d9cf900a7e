"""Capturing a stack of identical layers once (`frontend/layer_reuse.py`): the graph is the one a full
export gives, and any layer that is not the same function drops the reuse (never a wrong graph)."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.frontend import layer_reuse
from fxforge.frontend.export import capture_export
from fxforge.ir.fhash import graph_key


class Block(torch.nn.Module):
    def __init__(self, i: int, scale: float = 1.0, branch_on: int | None = None) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.layer_idx, self.scale, self.branch_on = i, scale, branch_on

    def forward(self, x, bias):
        y = x + torch.relu(self.fc(x)) * self.scale + bias
        return y * 2 if self.layer_idx == self.branch_on else y  # a layer_idx-dependent graph


class Stack(torch.nn.Module):
    def __init__(self, blocks: list[Block], every_output: bool = False) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(blocks)
        self.head = torch.nn.Linear(8, 3)
        self.every_output = every_output

    def forward(self, x):
        bias = x.mean(-1, keepdim=True)  # a value every layer reads (as RoPE tables are)
        outs = []
        for layer in self.layers:
            x = layer(x, bias)
            outs.append(x)
        return tuple(outs) if self.every_output else self.head(x)


def capture(model, reuse=True):
    torch.manual_seed(1)
    return capture_export(model.eval(), (torch.randn(2, 5, 8),), reuse_layers=reuse)


def reused(cap) -> bool:
    return any("layers reused" in n or "graph reused" in n for n in cap.notes)


def test_identical_layers_captured_once_give_the_full_export_s_graph():
    torch.manual_seed(0)
    model = Stack([Block(i) for i in range(5)])
    cap = capture(model)
    assert reused(cap), cap.notes
    assert graph_key(cap.lowered.graph, weights=True) == graph_key(capture(model, reuse=False).lowered.graph, weights=True)


@pytest.mark.parametrize("blocks,every_output,why", [
    ([Block(i, scale=2.0 if i == 3 else 1.0) for i in range(5)], False, None),  # not one structure key
    ([Block(i, branch_on=3) for i in range(5)], False, "differ from the eager model"),  # only layer_idx differs
    ([Block(i) for i in range(5)], True, "an output reads"),  # every layer's output is returned
    ([Block(i, scale=1.0 + i % 2, branch_on=5) for i in range(7)], False, "differ from the eager model"),  # two kinds
])
def test_layers_that_are_not_one_function_are_each_exported(blocks, every_output, why):
    torch.manual_seed(0)
    model = Stack(blocks, every_output).eval()
    compiled = fxforge.compile_aot(model, (torch.randn(2, 5, 8),), executor="reference")
    notes = compiled.fxforge_report.graphs[0].notes
    assert not any("graph reused" in n for n in notes), notes
    if why:
        assert any(why in n and "no layer reuse" in n for n in notes), notes
    x = torch.randn(3, 4, 8)
    got = compiled(x)
    with torch.no_grad():
        want = model(x)
    for g, w in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        torch.testing.assert_close(g, w)


def test_alternating_kinds_are_each_cloned_from_their_own_kind():
    # local/global attention layers (Gemma 2): two structure keys in turn, each cloned from an exported twin
    torch.manual_seed(0)
    model = Stack([Block(i, scale=1.0 + i % 2) for i in range(7)])
    cap = capture(model)
    assert any("3 of 7 layers exported, layers 1, 2' graphs reused for the other 4" in n for n in cap.notes), cap.notes
    assert graph_key(cap.lowered.graph, weights=True) == graph_key(capture(model, reuse=False).lowered.graph, weights=True)


@pytest.mark.parametrize("kinds,prefix,templates", [
    ((0,) * 8, 2, {(0, 0): 1}),
    ((0, 1) * 4, 4, {(0, 1): 3, (1, 0): 2}),  # ends on the last layer's kind
    ((0, 0, 0, 1) * 3 + (0,), 5, {(0, 0): 2, (0, 1): 3, (1, 0): 4}),  # Gemma 3's 5:1 in short
    ((0, 1, 1, 1, 1, 1), 3, {(0, 1): 1, (1, 1): 2}),  # a first layer of its own (a dense layer before MoE ones)
    ((0, 0, 0, 0, 0, 1), None, None),  # the one global layer is the last: nothing to clone it from
    ((0, 1, 2, 3), None, None),
])
def test_plan_exports_the_shortest_prefix_holding_every_pair_of_kinds(kinds, prefix, templates):
    plan = layer_reuse.plan_for("layers", kinds)
    assert (plan and plan.prefix, plan and plan.templates) == (prefix, templates)


def test_structure_key_ignores_only_layer_idx():
    a, b = Block(0), Block(7)
    assert layer_reuse.structure_key(a) == layer_reuse.structure_key(b)
    b.scale = 0.5
    assert layer_reuse.structure_key(a) != layer_reuse.structure_key(b)
    assert layer_reuse.stack_of(Stack([Block(0), Block(1)])) is None  # two layers: nothing to reuse
    assert layer_reuse.stack_of(Stack([Block(i, scale=1.0 + (i == 3)) for i in range(5)])) is None  # one odd layer


@pytest.mark.slow
def test_three_layer_llama_matches_eager():
    model = zoo.llama(layers=3)
    ids = zoo.example_input("llama", batch=2, seq=8)
    compiled = fxforge.compile_aot(model, (ids,), executor="reference")
    assert any("2 of 3 layers exported" in n for n in compiled.fxforge_report.graphs[0].notes), compiled.fxforge_report.graphs[0].notes
    x = torch.randint(0, 256, (3, 11))
    with torch.no_grad():
        want = model(x).logits
    torch.testing.assert_close(compiled(x).logits, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral"])
def test_hf_models_reused_graph_is_the_full_graph(arch):
    model = zoo.build(arch, layers=4)
    ids = zoo.example_input(arch, batch=2, seq=8)
    a, b = capture_export(model, (ids,)), capture_export(model, (ids,), reuse_layers=False)
    assert any("2 of 4 layers exported" in n for n in a.notes), a.notes
    assert graph_key(a.lowered.graph, weights=True) == graph_key(b.lowered.graph, weights=True)


@pytest.mark.slow
def test_gemma2_local_and_global_layers_reused_graph_is_the_full_graph():
    model = zoo._hf("Gemma2Config", "Gemma2ForCausalLM", hidden_size=64, intermediate_size=128, num_hidden_layers=5,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256, sliding_window=4)
    ids = zoo.example_input("llama", batch=2, seq=8)  # longer than the window: the local layers' mask differs
    a, b = capture_export(model, (ids,)), capture_export(model, (ids,), reuse_layers=False)
    assert any("3 of 5 layers exported" in n for n in a.notes), a.notes
    assert graph_key(a.lowered.graph, weights=True) == graph_key(b.lowered.graph, weights=True)


def test_graph_key_with_weights_digests_a_0_dim_weight():
    # Gemma's scalar constants: a 0-dim tensor has no byte view (the digest raised on them)
    from fxforge.ir.fhash import _tensor_digest
    a, b = _tensor_digest(torch.tensor(2.0)), _tensor_digest(torch.tensor(3.0))
    assert a != b and a.startswith("torch.float32():") and a == _tensor_digest(torch.tensor(2.0))


def test_replicated_graph_is_checked_without_regenerating_its_code(monkeypatch):
    # regenerating the Python of every cloned node cost ~3 ms a layer: the check runs the graph node by node
    from fxforge.frontend import export

    exported, real_export, real_recompile = [], export._export, torch.fx.GraphModule.recompile

    def recompile(self):
        assert not exported, "the graph module's code was regenerated after the export"
        return real_recompile(self)

    def export_then_flag(*args, **kwargs):
        ep = real_export(*args, **kwargs)
        exported.append(ep)
        return ep

    monkeypatch.setattr(export, "_export", export_then_flag)
    monkeypatch.setattr(torch.fx.GraphModule, "recompile", recompile)
    torch.manual_seed(0)
    model = Stack([Block(i) for i in range(5)]).eval()
    cap = capture(model)
    assert reused(cap) and exported, cap.notes
    monkeypatch.undo()
    x = torch.randn(2, 5, 8)
    ep = torch.export.export(model, (x,), strict=False)
    weights, tensors = export._weight_table(ep, model)
    inputs = [tensors[weights[n.name]] if n.name in weights else x for n in ep.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():
        torch.testing.assert_close(layer_reuse.run_graph(ep.graph_module, inputs)[0], model(x))
