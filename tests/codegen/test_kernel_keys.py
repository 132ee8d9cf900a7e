"""The compile cache (issue #13): functional hashes of the IR key generated kernels and modules.

Identical decoder layers share one generated kernel per group (the kernel count does not grow with
depth), the functional hash ignores names and weight values but not shapes, and a second compile of
the same model takes its module text from the cache; all of it still computes eager's logits."""

from __future__ import annotations

import torch

import fxforge
from fxforge import testing as zoo
from fxforge.codegen import kernel_keys
from fxforge.codegen import module as gen
from fxforge.ir.fhash import graph_key

GENERATED = ("pointwise", "row")


def _compile(layers: int, seed: int = 0, hidden: int = 64):
    torch.manual_seed(seed)
    model = zoo.llama(hidden=hidden, layers=layers, heads=4, kv_heads=2, intermediate=128)
    ids = zoo.example_input("llama", batch=1, seq=6)
    return model, ids, fxforge.compile_aot(model, (ids,), executor="interpret")


def _generated(compiled) -> list:
    return [k for k in compiled.program.executor.kernels if k.kind in GENERATED]


def test_identical_layers_share_kernels_and_match_eager():
    model2, ids, two = _compile(2)
    _, _, four = _compile(4)
    g2, g4 = _generated(two), _generated(four)
    assert len(g4) > len(g2)  # more launches...
    assert len({k.name for k in g4}) == len({k.name for k in g2}) < len(g2)  # ...of the same kernels
    source = four.program.executor.module.source
    assert source.count("@triton.jit") == len({k.name for k in g4})
    with torch.no_grad():
        want = model2(ids, use_cache=False).logits
    assert (two(ids).logits - want).abs().max().item() <= 1e-4


def test_graph_key_ignores_names_and_weight_values_not_shapes():
    _, _, a = _compile(2, seed=0)
    _, _, b = _compile(2, seed=1)  # other weights
    _, _, c = _compile(2, seed=0, hidden=32)
    assert graph_key(a.graph) == graph_key(b.graph)
    assert graph_key(a.graph, weights=True) != graph_key(b.graph, weights=True)
    assert graph_key(a.graph) != graph_key(c.graph)
    b.graph.rename_value(b.graph.ops[-1].result, "renamed_output")
    assert graph_key(a.graph) == graph_key(b.graph)


def test_second_compile_is_a_cache_hit():
    _compile(2, seed=3)
    hits, misses = gen.SOURCE_STATS["hits"], kernel_keys.STATS["misses"]
    model, ids, again = _compile(2, seed=4)
    assert gen.SOURCE_STATS["hits"] == hits + 1
    assert kernel_keys.STATS["misses"] == misses  # no kernel was emitted again
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
    assert (again(ids).logits - want).abs().max().item() <= 1e-4
