"""Which experts implementation a transformers MoE model is captured with.

transformers 5 runs a MoE block's experts through `config._experts_implementation` ("grouped_mm" by default: token
sorting, `histc`, a grouped GEMM custom op, `index_put`, all torch externs in the captured graph). Capture selects
"batched_mm" instead (each (token, slot) row gathers its expert's weights, one bmm per projection), the form
`passes/moe_rules.py` turns into one `moe` op, and restores the model's own choice afterwards.

Decisions: only on models whose class declares it can switch (`_can_set_experts_implementation`); the eager
numbers are the same math (per-row dot products), so the capture's numerics checks still compare like with like.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

BATCHED = "batched_mm"


class BatchedExperts:
    """A reusable switch to "batched_mm" for `model` (a no-op when its experts cannot switch or already are batched).
    transformers' `set_experts_implementation` walks every module to find the configs it sets (~150 us for a 4-layer
    Mixtral), too slow for the JIT wrapper, which enters this on every call: the configs and the value each takes are
    found once here, by one switch and back, and entering only sets those attributes (restored on exit)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.switched: list[tuple[object, object]] = []  # (config, its value under "batched_mm")
        self._saved: list[object] = []
        can = getattr(type(model), "_can_set_experts_implementation", None)
        get = getattr(model, "get_experts_implementation", None)
        if can is None or get is None or not can() or set(get().values()) == {BATCHED}:
            return
        configs = list({id(c): c for c in _configs(model)}.values())
        before = get()
        model.set_experts_implementation(BATCHED)  # validates, and gives each config its value
        self.switched = [(c, c._experts_implementation_internal) for c in configs]
        model.set_experts_implementation(before)

    def __enter__(self) -> bool:
        self._saved = [c._experts_implementation_internal for c, _ in self.switched]
        for config, value in self.switched:
            config._experts_implementation_internal = value
        return bool(self.switched)

    def __exit__(self, *exc: object) -> None:
        for (config, _), value in zip(self.switched, self._saved, strict=True):
            config._experts_implementation_internal = value


def _configs(model: torch.nn.Module) -> Iterator[object]:
    """The configs of `model` and of its sub-models, those `set_experts_implementation` may set."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_experts_implementation_internal"):
            yield config


def batched_experts(model: torch.nn.Module) -> BatchedExperts:
    """Within: `model`'s experts run as "batched_mm" when it has switchable experts (`as` gives whether it switched)."""
    return BatchedExperts(model)
