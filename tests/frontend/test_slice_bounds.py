"""Slices with torch's bounds conventions lower to views, not externs: a start before the first row clamps to it
(HF's sliding-window cache keeps `k[:, :, -window + 1:]`, all of a shorter cache), on a static length and on a
symbolic one that dynamo's guards keep below the window (JIT decode: the cache length grows by one a step)."""

from __future__ import annotations

import torch

import fxforge


class Window(torch.nn.Module):
    """The last 4095 rows of cat(past, new) (EXAONE-MoE's sliding-window layers' cache update)."""

    def forward(self, past: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        kept = torch.cat([past, new], dim=1)[:, -4095:]
        return kept * 2.0 + kept[:, 1:-1].sum(1, keepdim=True)


def test_a_start_before_the_first_row_clamps_statically():
    past, new = torch.randn(2, 5, 8), torch.randn(2, 1, 8)
    compiled = fxforge.compile_aot(Window(), (past, new), executor="reference")
    assert compiled.record.externs == {} and not compiled.graph.find("extern")
    torch.testing.assert_close(compiled(past, new), Window()(past, new))


def test_a_start_before_the_first_row_of_a_symbolic_length_is_the_whole_dim():
    model = fxforge.compile(Window(), executor="reference")
    for rows in (5, 6, 7):  # the second length makes dynamo's graph symbolic in it
        past, new = torch.randn(2, rows, 8), torch.randn(2, 1, 8)
        torch.testing.assert_close(model(past, new), Window()(past, new))
    graphs = model.fxforge_report.graphs
    assert len(graphs) == 2 and all(not g.externs for g in graphs), [g.externs for g in graphs]
