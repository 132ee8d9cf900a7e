"""Which experts implementation a transformers MoE model is captured with.

transformers 5 runs a MoE block's experts through `config._experts_implementation` ("grouped_mm" by default: token
sorting, `histc`, a grouped GEMM custom op, `index_put`, all torch externs in the captured graph). Capture selects
"batched_mm" instead (each (token, slot) row gathers its expert's weights, one bmm per projection), the form
`passes/moe_rules.py` turns into one `moe` op, and restores the model's own choice afterwards.

Decisions: only on models whose class declares it can switch (`_can_set_experts_implementation`); the eager
numbers are the same math (per-row dot products), so the capture's numerics checks still compare like with like.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

BATCHED = "batched_mm"


@contextlib.contextmanager
def batched_experts(model: torch.nn.Module) -> Iterator[bool]:
    """Within: `model`'s experts run as "batched_mm" when it has switchable experts (yields whether it switched)."""
    can = getattr(type(model), "_can_set_experts_implementation", None)
    get = getattr(model, "get_experts_implementation", None)
    if can is None or get is None or not can():
        yield False
        return
    before = get()
    if set(before.values()) == {BATCHED}:
        yield False
        return
    model.set_experts_implementation(BATCHED)
    try:
        yield True
    finally:
        model.set_experts_implementation(before)
