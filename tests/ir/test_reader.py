"""The fast reader of the printer's canonical form (`ir/reader.py`): lark is not needed for printed
text, and any other text gets lark's answer (its graph or its error)."""

from __future__ import annotations

import pytest

from fxforge.ir import parser
from fxforge.ir.errors import IRParseError
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_graph
from fxforge.ir.reader import STATS, read_dim, read_graph, read_type

TEXT = """\
graph @g(%x: f32[s0, 8], %ids: i64[s0]) {
  %w = const @w : f32[16, 8]
  %0 = linear(%x, %w) : f32[s0, 16]
  %1 = reshape(%0) {shape=[s0, 4, 4]} : f32[s0, 4, 4]
  %2 = slice(%1) {dim=0, start=1, end=s0} : f32[(s0 - 1), 4, 4]
  %3 = clamp(%2) {min=-0.5, max=inf} : f32[(s0 - 1), 4, 4]
  %s_0, %s_1 = extern(%3) {target="aten.sort.default", args=[$0, -1], kwargs={descending=true}} : f32[(s0 - 1), 4, 4], i64[(s0 - 1), 4, 4]
  return %s_0, %ids
}
"""


@pytest.fixture
def no_lark(monkeypatch):
    """Building lark's parser fails the test: the text must be read without it."""
    parser._lark.cache_clear()

    def refuse():
        raise AssertionError("lark's parser was built")

    monkeypatch.setattr(parser, "_lark", refuse)


def test_printed_text_is_read_without_lark(no_lark):
    fast = STATS["fast"]
    g = read_graph(TEXT)
    assert print_graph(g) == TEXT and STATS["fast"] == fast + 1
    q = 'f4e2m1[16, 64] #quantized<format="f4e2m1", axis=1, group=32, scale_dtype=f8e4m3, zero_point=false>'
    assert read_type(q).encoding.group == 32
    assert str(read_dim("(s0 - 1)")) == "s0 - 1"


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("  %0 =", "  // a comment\n  %0 ="),  # a comment
    lambda t: t.replace("[s0, 4, 4]}", "[s0,4,4]}"),  # other spacing
    lambda t: t.replace("min=-0.5, ", "min=-5e-1, "),  # another spelling of a number
])
def test_other_text_gets_lark_s_graph(edit):
    text = edit(TEXT)
    fallback = STATS["fallback"]
    assert print_graph(read_graph(text)) == print_graph(parse_graph(text)) == TEXT
    assert STATS["fallback"] == fallback + 1


@pytest.mark.parametrize("bad,words", [
    ("i64[s0]", "i64[" + "9" * 25 + "]"),  # a dim past MAX_DIM would print back exactly: the bound still holds
    ("return %s_0, %ids", "return %s_0, %nope"),  # undefined value
    ("{shape=[s0, 4, 4]}", "{shape=[s0, 4, 4]"),  # unbalanced
    ("f32[s0, 16]", "f32[s0, 2.5]"),  # not an integer dim
])
def test_what_lark_refuses_is_refused_with_its_error(bad, words):
    text = TEXT.replace(bad, words)
    with pytest.raises(IRParseError) as want:
        parse_graph(text)
    with pytest.raises(IRParseError) as got:
        read_graph(text)
    assert str(got.value) == str(want.value)


def test_nesting_bound_holds():
    deep = "[" * 40 + "]" * 40
    text = TEXT.replace("kwargs={descending=true}", f"kwargs={{a={deep}}}")
    with pytest.raises(IRParseError, match="nested deeper"):
        read_graph(text)
