"""Which linears a weight rewrite (quantize, sparsify, the method planner) may touch, and by which rule.

Shared by every pass that rewrites linear weights, so lm_head, tied embeddings and per-layer glob overrides
follow one rule everywhere.

Decisions:
- lm_head stays high precision / dense unless an override names it: it is small next to the body and its
  error goes straight into the logits.
- A weight whose storage is shared with an embedding table (tied) is never rewritten: the embedding would
  silently change with it.
"""

from __future__ import annotations

import fnmatch

import torch

from fxforge.ir.graph import Graph, Op

DEFAULT_OVERRIDES: dict[str, str | None] = {"lm_head": None, "*.lm_head": None}
# rows of N(0, 1) input a rewrite's error is measured on when no calibration data is given
RANDOM_ROWS = 256


def choose_by_pattern(layer: str, default: str | None, overrides: dict[str, str | None] | None) -> str | None:
    """The choice for a layer: the first matching glob (user overrides, then defaults), else `default`."""
    for pattern, value in [*(overrides or {}).items(), *DEFAULT_OVERRIDES.items()]:
        if fnmatch.fnmatchcase(layer, pattern):
            return value
    return default


def embedding_tables(graph: Graph) -> tuple[set[str], set[int]]:
    """Names and storage pointers of the graph's embedding tables (to spot tied weights)."""
    names, ptrs = set(), set()
    for op in graph.find("embedding"):
        producer = op.operands[0].producer
        if producer is not None and producer.opcode == "const":
            names.add(producer.attrs["weight"])
            ptrs.add(graph.weight(producer.attrs["weight"]).data.untyped_storage().data_ptr())
    return names, ptrs


def skip_reason(graph: Graph, op: Op, tied: tuple[set[str], set[int]]) -> str | None:
    """Why this linear's weight cannot be rewritten, or None if it can."""
    producer = op.operands[1].producer
    if producer is None or producer.opcode != "const":
        return "weight is not a const"
    name = producer.attrs["weight"]
    w = graph.weight(name)
    if w.encoding is not None or w.data.dim() != 2:
        return "weight is not a plain 2-D tensor"
    if name in tied[0] or w.data.untyped_storage().data_ptr() in tied[1]:
        return "weight is tied to an embedding"
    return None


def relative_error(y_q: torch.Tensor, y: torch.Tensor) -> float:
    denom = y.norm().item()
    return (y_q - y).norm().item() / denom if denom > 0 else (y_q - y).norm().item()


def free_name(graph: Graph, name: str) -> str:
    """`name`, made a legal weight name (nn.Sequential's "0.weight" starts with a digit) and unused."""
    name = name if name[:1].isalpha() or name[:1] == "_" else f"w{name}"
    out, i = name, 0
    while out in graph.weights:
        i += 1
        out = f"{name}{i}"
    return out
