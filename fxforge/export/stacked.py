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

import torch
from torch import Tensor

from fxforge.ir.graph import Graph, Op
from fxforge.ir.moe_ops import by_role

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
    """{original name: tensor} of the stacked plain (not encoded) weights and biases of the graph's linears, and of
    the `moe` ops' experts stacked with a shared MLP (`moe_experts`)."""
    out: dict[str, Tensor] = {}
    for op in graph.find("moe"):
        out.update(moe_experts(graph, op))
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


def moe_experts(graph: Graph, op: Op) -> dict[str, Tensor]:
    """{original name: tensor} of a `moe` op's experts stacked with S shared experts (`passes/moe_shared.py`): the
    routed experts' [E, 2I, H] and [E, H, I] (transposed: [E, H, 2I], [E, I, H]), and the shared MLP's gate and up
    [S * I, H] (or both as one [gate; up] [2 S I, H]) and down [H, S * I], its row blocks put back in order."""
    S = op.attrs["shared"]
    out: dict[str, Tensor] = {}
    if not S:
        return out
    transposed = op.attrs["transposed"]  # [E, H, 2I] / [E, I, H]: each block transposed back first
    roles = by_role(op.operands, op.attrs)
    for role in ("w_gate_up", "w_down"):
        name = roles[role].producer.attrs["weight"]  # a const: the rule stacks constants only
        names, w = parts_of(name), graph.weights.get(name)
        if w is None or w.encoding is not None or len(names) not in ((2, 3) if role == "w_gate_up" else (2,)):
            continue
        routed, blocks = w.data[:-S], w.data[-S:].transpose(1, 2) if transposed else w.data[-S:]
        if role == "w_gate_up":  # blocks [S, 2I, H]: rows [gate; up] of I each (one weight of both: its halves)
            inter = blocks.shape[1] // 2
            shared = [blocks[:, :inter].reshape(-1, blocks.shape[2]), blocks[:, inter:].reshape(-1, blocks.shape[2])]
            shared = shared if len(names) == 3 else [torch.cat(shared)]
        else:  # blocks [S, H, I]: the down projection's columns by block
            shared = [blocks.permute(1, 0, 2).reshape(blocks.shape[1], -1)]
        out.update(zip(names, [t.contiguous() for t in (routed, *shared)]))
    return out
