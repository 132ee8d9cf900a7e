"""Weight and graph names in the IR text: any non-empty string round-trips exactly (quoted when it
is not plain), and bad quoted names are IRParseErrors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxforge.ir.dtypes import DType
from fxforge.ir.errors import IRError, IRParseError
from fxforge.ir.graph import Graph
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_global, print_graph
from fxforge.ir.types import TensorType


def graph_with_weight(name: str, graph_name: str = "forward") -> Graph:
    g = Graph(graph_name)
    x = g.add_input("x", TensorType((2, 3), DType.f32))
    w = g.add_op("const", [], {"weight": g.add_weight(name, torch.ones(3))}).result
    g.set_outputs([g.add_op("mul", [x, w]).result])
    return g


@pytest.mark.parametrize("name, printed", [
    ("layers.0.weight", "@layers.0.weight"),
    ("0.weight", "@0.weight"),
    ("a-b.c", "@a-b.c"),
    ("a b", '@"a b"'),
    ('q"x', '@"q\\"x"'),
    ("é", '@"\\u00e9"'),
    ("line\nbreak", '@"line\\nbreak"'),
])
def test_print_global(name, printed):
    assert print_global(name) == printed
    g = graph_with_weight(name, graph_name=name)
    text = print_graph(g)
    assert f"const {printed} :" in text and text.startswith(f"graph {printed}(")
    parsed = parse_graph(text, {name: torch.ones(3)})
    assert print_graph(parsed) == text and parsed.name == name and set(parsed.weights) == {name}


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_any_name_round_trips(name):
    text = print_graph(graph_with_weight(name, name))
    parsed = parse_graph(text)
    assert print_graph(parsed) == text
    assert parsed.name == name and parsed.ops[0].attrs["weight"] == name


@pytest.mark.parametrize("text", ['@""', '@"\\q"', '@"unterminated'])
def test_bad_quoted_names(text):
    with pytest.raises(IRParseError):
        parse_graph(f"graph {text}(%x: f32[2]) {{\n  return %x\n}}\n")


def test_empty_weight_name_refused():
    with pytest.raises(IRError, match="non-empty"):
        Graph().add_weight("", torch.ones(1))
