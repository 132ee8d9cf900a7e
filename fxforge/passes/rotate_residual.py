"""QuaRot's residual-stream rotation for RMSNorm transformers (Llama, Mistral, Qwen2 style), folded into weights.

`rotate_stream(graph, seed)` finds the residual stream: it starts at the one `embedding` whose
table is a const, and grows through `add(stream, linear(...))` (the linear is a *writer*); every other
use of a stream value must be `rms_norm(stream, [g])` whose result feeds only linears (*readers*).
With Q = D * blockdiag(H_b) (D random signs, seeded; b the largest Hadamard size dividing the width,
the whole width when it is one) the graph computes the same function with:
    E <- E Q (the embedding table),  reader W <- (W diag(g)) Q and g <- 1,  writer W <- Q^T W, bias <- bias Q
because rms_norm(h Q) = rms_norm(h) Q for an orthogonal Q (the RMS of a row is rotation invariant).
Anything else on the stream (LayerNorm: mean subtraction and a bias do not commute with Q; a stream
value that is a graph output; an op reading the stream that is not a norm or a residual add; linear
weights shared between layers) leaves the graph untouched, with the reason in `notes`. The online
form of the rotate pass then covers those models (BERT-like LayerNorm models).

Decisions: math in float64, stored back in each weight's dtype; an embedding table tied to lm_head is
untied (the embedding's const gets a fresh weight name, `<name>_rotated`), so lm_head keeps its name
(and its "stays high precision" default); the norm weights become ones (kept as ops: fusion is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fxforge.ir.graph import Graph, Op, Value, Weight
from fxforge.ir.hadamard import hadamard_ref, largest_block
from fxforge.passes.calibrate import site_name


class NotAStream(Exception):
    """The graph has no residual stream this rotation supports (the message says why)."""


@dataclass
class StreamResult:
    layers: dict[str, int] = field(default_factory=dict)  # layer -> Hadamard block of Q
    notes: dict[str, str] = field(default_factory=dict)
    reader_inputs: set[int] = field(default_factory=set)  # ids of rotated norm outputs
    input_maps: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)  # reader: x -> x'
    writers: list[str] = field(default_factory=list)


def _const_weight(v: Value) -> str | None:
    p = v.producer
    return p.attrs["weight"] if p is not None and p.opcode == "const" else None


def _linear_reader(op: Op, x: Value) -> bool:
    return op.opcode == "linear" and op.operands[0] is x and _const_weight(op.operands[1]) is not None


def _find(graph: Graph) -> tuple[Op, list[Op], list[Op]]:
    """(embedding op, rms_norm readers, writer linears) or NotAStream."""
    embs = [op for op in graph.find("embedding") if _const_weight(op.operands[0]) is not None]
    if len(embs) != 1:
        raise NotAStream(f"{len(embs)} embedding lookups with a const table (needs exactly one)")
    outputs = {id(v) for v in graph.outputs}
    stream, readers, writers = [embs[0].result], [], []
    for v in stream:
        if id(v) in outputs:
            raise NotAStream(f"stream value %{v.name} is a graph output")
        for u in v.uses:
            if u.opcode == "rms_norm" and u.operands[0] is v and (len(u.operands) == 1 or _const_weight(u.operands[1])):
                r = u.result
                if id(r) in outputs or not r.uses or not all(_linear_reader(c, r) for c in r.uses):
                    raise NotAStream(f"rms_norm %{r.name} feeds something other than linears")
                readers.append(u)
            elif u.opcode == "add" and len(u.operands) == 2 and sum(o is v for o in u.operands) == 1:
                other = u.operands[1] if u.operands[0] is v else u.operands[0]
                lin = other.producer
                if lin is None or lin.opcode != "linear" or _const_weight(lin.operands[1]) is None or len(other.uses) != 1:
                    raise NotAStream(f"residual add %{u.result.name} adds something other than a linear's output")
                writers.append(lin)
                stream.append(u.result)
            else:
                kind = "LayerNorm (mean subtraction, bias)" if u.opcode == "layer_norm" else u.opcode
                raise NotAStream(f"stream value %{v.name} is read by {kind}")
    if not readers:
        raise NotAStream("no rms_norm reads the stream")
    return embs[0], readers, writers


def _rotation(n: int, seed: int) -> tuple[Tensor, int]:
    b = largest_block(n)
    signs = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)).to(torch.float64) * 2 - 1
    return signs[:, None] * hadamard_ref(torch.eye(n, dtype=torch.float64), block=b), b


def _set(graph: Graph, name: str, t: Tensor, like: Tensor) -> None:
    graph.weights[name] = Weight(t.to(like.dtype).contiguous())


def rotate_stream(graph: Graph, seed: int = 0) -> StreamResult:
    """Rotate the residual stream in place (see the module docstring); notes say why when it cannot."""
    res = StreamResult()
    try:
        emb, readers, writers = _find(graph)
    except NotAStream as e:
        res.notes["residual rotation"] = f"not applied: {e}; online rotations only"
        return res
    linears = [c for r in readers for c in r.result.uses] + writers
    names = [_const_weight(op.operands[1]) for op in linears]
    if len(set(names)) != len(names):
        res.notes["residual rotation"] = "not applied: a linear weight is shared between layers"
        return res
    table = _const_weight(emb.operands[0])
    n = graph.weight(table).data.shape[1]
    q, b = _rotation(n, seed)
    if table in names or sum(1 for op in graph.ops if op.opcode == "const" and op.attrs["weight"] == table) > 1:
        new = f"{table}_rotated"
        graph.add_weight(new, Weight(graph.weight(table).data.clone()))
        const = graph.insert_before(emb, "const", [], {"weight": new}, name=f"{emb.operands[0].name}_rotated")
        graph.set_operand(emb, 0, const.result)
        table = new
    e = graph.weight(table).data
    _set(graph, table, e.to(torch.float64) @ q, e)
    for norm in readers:
        g = graph.weight(_const_weight(norm.operands[1])).data.to(torch.float64) if len(norm.operands) == 2 else None
        for lin in norm.result.uses:
            w = graph.weight(_const_weight(lin.operands[1])).data
            wg = w.to(torch.float64) * (g[None, :] if g is not None else 1.0)
            _set(graph, _const_weight(lin.operands[1]), wg @ q, w)
            layer = site_name(graph, lin)
            res.layers[layer] = b
            res.input_maps[layer] = _reader_map(g, q)
        if g is not None:
            gname = _const_weight(norm.operands[1])
            _set(graph, gname, torch.ones_like(g), graph.weight(gname).data)
        res.reader_inputs.add(id(norm.result))
    for lin in writers:
        w = graph.weight(_const_weight(lin.operands[1])).data
        _set(graph, _const_weight(lin.operands[1]), q.T @ w.to(torch.float64), w)
        if len(lin.operands) == 3 and _const_weight(lin.operands[2]) is not None:
            bname = _const_weight(lin.operands[2])
            bias = graph.weight(bname).data
            _set(graph, bname, bias.to(torch.float64) @ q, bias)
        layer = site_name(graph, lin)
        res.layers[layer] = b
        res.writers.append(layer)
    return res


def _reader_map(g: Tensor | None, q: Tensor) -> Callable[[Tensor], Tensor]:
    """Original reader input x = rms_norm(h) * g  ->  rotated input rms_norm(h) Q (for the error report)."""
    def fn(x: Tensor) -> Tensor:
        xs = x.to(torch.float64)
        if g is not None:
            xs = torch.where(g != 0, xs / torch.where(g != 0, g, torch.ones_like(g)), torch.zeros_like(xs))
        return (xs @ q).to(x.dtype)
    return fn
