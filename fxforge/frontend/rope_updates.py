"""Hugging Face's input-dependent RoPE frequencies (dynamic NTK scaling, LongRoPE) at decode capture.

HF's `dynamic_rope_update` re-picks a rotary embedding's `inv_freq` from the positions of each call: "dynamic"
types grow it past `original_max_seq_len` (a data-dependent branch torch.export refuses), "longrope" swaps in its
long factors past `original_max_position_embeddings` (a write into the `inv_freq` buffer, which the decode capture
refuses). Below those lengths both use the rotary's `original_inv_freq`, so a step compiled for `max_length`
positions within them is exact with that table and no update: `static_rope(model, max_length)` sets that up for
the export and restores the model after. Past them a static step would have to switch tables mid-generation: refused
with a CaptureError that names the limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fxforge.errors import CaptureError

_UPDATED = ("dynamic", "longrope")  # rope types whose frequencies depend on the positions seen


def _updated(kind: str) -> bool:
    return any(word in kind for word in _UPDATED)


def _limit(module: torch.nn.Module, kind: str, layer_type: str | None) -> int:
    """The sequence length up to which `module`'s rope type `kind` keeps its original frequencies (dynamic NTK:
    the config's max_position_embeddings; LongRoPE: its original_max_position_embeddings)."""
    if "dynamic" in kind:
        return int(module.original_max_seq_len)
    params = module.config.rope_parameters
    return int((params[layer_type] if layer_type else params)["original_max_position_embeddings"])


def _checked_types(module: torch.nn.Module, max_length: int) -> str | dict:
    """`module.rope_type` with every position-dependent type made "default", after checking max_length fits."""
    kinds = module.rope_type
    per_layer = kinds if isinstance(kinds, dict) else {None: kinds}
    for layer_type, kind in per_layer.items():
        if _updated(kind) and max_length > (limit := _limit(module, kind, layer_type)):
            raise CaptureError(f"{type(module).__name__} uses {kind!r} RoPE, whose frequencies change once a sequence "
                               f"is longer than {limit} positions; a compiled decode step keeps one table: compile with "
                               f"max_length <= {limit}")
    fixed = {t: "default" if _updated(k) else k for t, k in per_layer.items()}
    return fixed if isinstance(kinds, dict) else fixed[None]


@contextlib.contextmanager
def static_rope(model: torch.nn.Module, max_length: int) -> Iterator[None]:
    """Within the block, every rotary embedding of `model` whose frequencies depend on the positions uses its
    original ones without updating them (exact for sequences of up to `max_length`, checked); restored after."""
    saved = []
    try:
        for module in model.modules():
            kinds = getattr(module, "rope_type", None)
            if not isinstance(kinds, str | dict) or not any(_updated(k) for k in
                                                            (kinds.values() if isinstance(kinds, dict) else [kinds])):
                continue
            fixed = _checked_types(module, max_length)
            buffers = {n: b for n, b in module.named_buffers(recurse=False) if n.endswith("inv_freq")
                       and not n.endswith("original_inv_freq")}
            saved.append((module, kinds, buffers))
            module.rope_type = fixed
            for name, table in buffers.items():  # the original table (a longer call may have left another there)
                module._buffers[name] = getattr(module, name.removesuffix("inv_freq") + "original_inv_freq").to(table)
        yield
    finally:
        for module, kinds, buffers in saved:
            module.rope_type = kinds
            module._buffers.update(buffers)
