"""Stacked linears read back as the Hugging Face layers they were made of.

For the kernel executors, `concat_linears` stacks sibling linears (q/k/v, gate/up) into one GEMM whose weight
is named `prefix.{q_proj+k_proj+v_proj}.weight[.q]` and whose result is split again by `slice`s along the last
dim. A checkpoint stores the original layers, so an exporter splits the stacked weight (and bias) back by rows:
every part of a stacked weight (dense values, codes, scales, zero points) is per output row.

Decisions: the parts' row counts come from the slices that split the stacked result (the graph's own record
of the stacking), in the order the name lists them; a stacked result read other than by exactly one slice per
part is refused by the caller (`None` here), never guessed.
"""

from __future__ import annotations

import dataclasses
import re

from torch import Tensor

from fxforge.ir.graph import Graph, Op

STACKED = re.compile(r"\{([^{}]+)\}")


def parts_of(name: str) -> list[str]:
    """The weight names a stacked one was made of, in row order; [name] for a weight that is not stacked."""
    m = STACKED.search(name)
    if m is None:
        return [name]
    return [name[:m.start()] + part + name[m.end():] for part in m.group(1).split("+")]


def part_rows(op: Op, n_parts: int) -> list[int] | None:
    """Rows of each part of the stacked linear `op`, read from the slices that split its result."""
    cuts = sorted((u.attrs["start"], u.attrs["end"]) for u in op.result.uses if u.opcode == "slice")
    if len(cuts) != n_parts or cuts[0][0] != 0 or any(a[1] != b[0] for a, b in zip(cuts, cuts[1:])):
        return None
    return [end - start for start, end in cuts]


def split_rows(t: Tensor | None, rows: list[int]) -> list[Tensor | None]:
    return [None] * len(rows) if t is None else [p.contiguous() for p in t.split(rows, dim=0)]


def split_layer(layer, names: list[str], rows: list[int]) -> list:
    """One `layers.Layer` per part (every per-row field split by `rows`)."""
    fields = ("dense", "codes", "scale", "zero")
    split = {f: split_rows(getattr(layer, f), rows) for f in fields}
    return [dataclasses.replace(layer, name=name, **{f: split[f][i] for f in fields}) for i, name in enumerate(names)]


def plain_parts(graph: Graph) -> dict[str, Tensor]:
    """{original name: tensor} of the stacked plain (not encoded) weights and biases of the graph's linears."""
    out: dict[str, Tensor] = {}
    for op in graph.ops:
        if op.opcode not in ("linear", "qlinear"):
            continue
        for operand in op.operands[1:3]:
            p = operand.producer
            if p is None or p.opcode != "const":
                continue
            names = parts_of(p.attrs["weight"])
            w = graph.weight(p.attrs["weight"])
            rows = part_rows(op, len(names)) if len(names) > 1 and w.encoding is None else None
            if rows is not None:
                out.update(zip(names, split_rows(w.data, rows)))
    return out
