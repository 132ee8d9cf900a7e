"""The calling convention of a compiled graph: how each flat runtime argument reaches it.

The frontend fills it in when it lowers a captured graph, the runtime (`Program`, artifacts) uses it
on every call; so it lives in `ir/`, which every layer may import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy


@dataclass
class InputSlot:
    """How one flat runtime argument reaches the graph: a tensor input, a size symbol, or ignored
    (a parameter the graph holds as a weight, or a value the graph does not read)."""

    kind: str  # "tensor" | "symbol" | "weight" | "const"
    symbol: sympy.Symbol | None = None
    value: Any = None  # for "const": the value it was captured with

# The signature of a captured decode step (`frontend/kv_capture.py`), by which the runtime knows a
# CompiledModule can `generate()`: step(input_ids, cache_position, kv) -> logits.
DECODE_STEP_ARGS = ("input_ids", "cache_position", "kv")
