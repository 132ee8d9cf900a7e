"""A captured q/k/v-heads module as a decode graph with cache writes, for the rope_sites tests
(test_arch_variants.py, test_weightless_norms.py)."""

from __future__ import annotations

import torch

from fxforge.frontend.export import capture_export
from fxforge.ir import DType, Graph, TensorType, evaluate, verify
from fxforge.passes import PassContext
from fxforge.passes.canonicalize import Canonicalize
from fxforge.passes.cse import CommonSubexpressionElimination
from fxforge.passes.dce import DeadCodeElimination
from fxforge.passes.rope_sites import rope_sites


def rope_site_graph(m: torch.nn.Module, x: torch.Tensor, pos: torch.Tensor) -> tuple[Graph, object]:
    """m(x, pos) -> (q, k, v) captured, canonicalised, cse'd and dce'd as the pipeline does (checked bit for bit
    against m), k and v written into [1, Hkv, 8, D] caches at pos: the graph and its one RoPE + cache-write site."""
    g = capture_export(m, (x, pos), dynamic=False).lowered.graph
    for p in (Canonicalize(), CommonSubexpressionElimination(), DeadCodeElimination()):
        g = p.run(g, PassContext())
    for a, b in zip(evaluate(g, [x, pos]), m(x, pos), strict=True):
        assert torch.equal(a, b)
    q, k, v = g.outputs
    caches = [g.add_input(n, TensorType((1, k.type.shape[1], 8, k.type.shape[3]), q.type.dtype)) for n in ("kc", "vc")]
    at = g.add_input("at", TensorType((q.type.shape[2],), DType.i64))
    g.set_outputs([q, *(g.add_op("cache_write", [c, at, t], {"dim": 2}).result for c, t in zip(caches, (k, v)))])
    verify(g)
    (site,) = rope_sites(g)
    return g, site
