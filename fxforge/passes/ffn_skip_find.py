"""Finding FFN blocks (and token positions) in a graph, for the `ffn_skip` pass.

An FFN block is the residual pattern `out = add(r, y)` with `y = mlp(u)`, `u = norm(h)`:
- walking back from y, every op is row-local (pointwise, GEMM with a const weight, a norm or softmax
  over the last dim, a reshape that keeps the last dim, a slice of the last dim) and the walk ends at
  consts/fulls and exactly one value u, the result of a `rms_norm` or `layer_norm`;
- the walk holds at least two GEMMs (up and down projections), and nothing outside it reads its
  intermediate values (y is read by the add alone), so the FFN can run on a subset of rows;
- y and r have the add's shape.
This covers pre-norm Llama/Mistral/Qwen2/Phi-3 (r = h), GPT-2 (Conv1D: reshape -> matmul -> bias ->
reshape around every GEMM), post-norm BERT (r = u), and the parallel residual of GPT-NeoX / Phi-2
(`h + attn(ln1(h)) + mlp(ln2(h))`, or one shared norm in Phi): there the add that takes the MLP output
may first sum it with the attention output instead of the stream; dropping y's rows from that sum is
the same skip, and the stream the FFN's size is measured against is still the norm's input h.
Quantized FFNs match too: `qlinear` quantizes its activations per row (or per block of a row), and
the online Hadamard rotation (`hadamard`, inserted by `rotate`) mixes channels within a row only.
Attention never matches (its op is not row-local), so it is never skipped and the KV cache stays whole.

Positions (for the warm-up) come from, in order: a graph input named `*cache_position*` (i64 [T]) or
`*position_ids*` (i64 [B, T]) (AOT graphs keep argument names), else the first i64 graph input or
`arange` over the sequence dim (plus a scalar offset in a KV-cache graph) that flows into the position
embedding (a table named like `wpe`/`pos*`) or, cast to float, into a product with a const (the rotary
embedding's inverse frequencies): JIT graphs name inputs `argN_1`, so the use tells. A graph with none
gets row indices within each call (noted in the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.types import dims_equal

NORMS = ("rms_norm", "layer_norm")
GEMMS = ("linear", "matmul", "qlinear")
ROW_COMPOSITES = ("rms_norm", "layer_norm", "softmax", "log_softmax")
LAST_DIM_OPS = ("hadamard",)  # act on each row along the last dim only: the online rotation of quantized FFNs
LEAVES = ("const", "full")


@dataclass
class FfnBlock:
    """One FFN block: `add_op` computes r + y; the FFN maps u (= norm(h)) to y through `body` (graph order)."""

    site: str
    u: Value
    h: Value
    y: Value
    r: Value
    add_op: Op
    body: list[Op] = field(default_factory=list)

    @property
    def stream(self) -> Value:
        """What the FFN's output is measured against: the norm's input, or u itself after a post-norm."""
        return self.u if self.r is self.u else self.h


def _row_local(op: Op, body_value: Value) -> bool:
    """May this op run on a compacted [k, F] version of its body operand(s)?"""
    cat, code = op.opdef.category, op.opcode
    last = lambda v: v.type.shape[-1] if v.type.rank else None  # noqa: E731
    if code == "reshape":
        return op.result.type.rank >= 1 and dims_equal(last(op.result), last(body_value))
    if code == "slice":
        return op.attrs["dim"] % body_value.type.rank == body_value.type.rank - 1
    if code in GEMMS:
        return op.operands[0] is body_value
    if code in ROW_COMPOSITES:
        return code in NORMS or op.attrs["dim"] % body_value.type.rank == body_value.type.rank - 1
    return cat == "pointwise" or code in LAST_DIM_OPS


def _outside_ok(op: Op, v: Value) -> bool:
    """Operands from outside the body: GEMM weights/biases, or values broadcasting along the last dim."""
    if op.opcode in GEMMS or op.opcode in ROW_COMPOSITES:
        return op.operands[0] is not v
    return all(d == 1 for d in v.type.shape[:-1])


def _walk(y: Value) -> tuple[list[Op], Value | None]:
    """Ops from y back to its single norm input u (None when the walk meets anything else)."""
    seen: dict[int, Op] = {}
    roots: set[int] = set()
    root: Value | None = None
    stack = [y]
    while stack:
        v = stack.pop()
        p = v.producer
        if p is None:
            return [], None
        if p.opcode in LEAVES or id(p) in seen:
            continue
        if p.opcode in NORMS and v is not y:
            roots.add(id(v))
            root = v
            continue
        body_vals = [o for o in p.operands if not (o.producer is not None and o.producer.opcode in LEAVES)]
        if not body_vals:
            continue
        seen[id(p)] = p
        stack.extend(body_vals)
    if len(roots) != 1:
        return [], None
    return list(seen.values()), root


def _check_body(graph: Graph, body: list[Op], u: Value, y: Value, add_op: Op) -> bool:
    ids = {id(op) for op in body}
    inner = {id(r) for op in body for r in op.results}
    if sum(op.opcode in GEMMS for op in body) < 2:
        return False
    for op in body:
        dep = [v for v in op.operands if id(v) in inner or v is u]
        if not dep or not all(_row_local(op, v) for v in dep):
            return False
        if any(not _outside_ok(op, v) for v in op.operands if id(v) not in inner and v is not u):
            return False
        for r in op.results:
            users = [x for x in r.uses if id(x) not in ids]
            if r is y:
                if users != [add_op] or any(o is y for o in graph.outputs):
                    return False
            elif users or any(o is r for o in graph.outputs):
                return False
    return True


def _site(graph: Graph, body: list[Op], fallback: str) -> str:
    """The common dotted prefix of the body's weight names (`model.layers.3.mlp`)."""
    names = [op.operands[i].producer.attrs["weight"] for op in body for i in range(1, len(op.operands))
             if op.operands[i].producer is not None and op.operands[i].producer.opcode == "const"]
    if not names:
        return fallback
    parts = [n.split(".") for n in names]
    common = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return ".".join(common) or fallback


def find_ffn_blocks(graph: Graph) -> list[FfnBlock]:
    """Every FFN block of the graph, in graph order."""
    blocks: list[FfnBlock] = []
    for op in graph.ops:
        if op.opcode != "add" or len(op.operands) != 2:
            continue
        for y, r in ((op.operands[1], op.operands[0]), (op.operands[0], op.operands[1])):
            shape = op.result.type.shape
            if y.type.rank < 2 or len(y.type.shape) != len(shape) or r.type.rank != len(shape):
                continue
            if not all(dims_equal(a, b) for a, b in zip(y.type.shape, shape)) or \
               not all(dims_equal(a, b) for a, b in zip(r.type.shape, shape)):
                continue
            body, u = _walk(y)
            if u is None or not _check_body(graph, body, u, y, op):
                continue
            order = {id(o): i for i, o in enumerate(graph.ops)}
            body.sort(key=lambda o: order[id(o)])
            site = _site(graph, body, f"ffn{len(blocks)}")
            blocks.append(FfnBlock(site, u, u.producer.operands[0], y, r, op, body))
            break
    return blocks


PASS_THROUGH = ("reshape", "expand", "cast", "slice", "add")  # ops positions flow through unchanged in meaning


def _from_const(v: Value) -> bool:
    """A const, possibly reshaped, expanded or cast (HF's `inv_freq[None, :, None].expand(...).float()`)."""
    while v.producer is not None and v.producer.opcode in ("reshape", "expand", "cast"):
        v = v.producer.operands[0]
    return v.producer is not None and v.producer.opcode == "const"


def _feeds_positions(v: Value, depth: int = 6) -> bool:
    """Does v (integer) reach a position consumer: an embedding table of positions (GPT-2's wpe) or,
    cast to float, a product with a const (the rotary embedding's inverse frequencies)?"""
    for u in v.uses:
        if u.opcode == "embedding" and u.operands[1] is v:
            table = u.operands[0].producer
            if table is not None and table.opcode == "const" and any(k in table.attrs["weight"] for k in ("pos", "wpe")):
                return True
        elif u.opcode in ("mul", "matmul") and v.type.dtype.is_float and any(_from_const(o) for o in u.operands if o is not v):
            return True
        elif u.opcode in PASS_THROUGH and depth > 0 and _feeds_positions(u.results[0], depth - 1):
            return True
    return False


def _candidates(graph: Graph, seq_dim) -> list[tuple[Value, str]]:
    out = []
    for v in graph.inputs:
        if v.type.dtype == DType.i64 and 1 <= v.type.rank <= 2 and dims_equal(v.type.shape[-1], seq_dim):
            out.append((v, f"graph input %{v.name}"))
    for op in graph.ops:
        if op.opcode == "arange" and op.result.type.dtype == DType.i64 and dims_equal(op.result.type.shape[0], seq_dim):
            v = op.result
            while True:  # arange(T) + past length: the positions in a KV-cache graph
                nxt = [u for u in v.uses if u.opcode == "add" and all(o is v or o.type.rank == 0 for o in u.operands)]
                if not nxt:
                    break
                v = nxt[0].result
            out.append((v, f"arange %{v.name} over the sequence"))
    return out


def find_positions(graph: Graph, seq_dim) -> tuple[Value | None, str]:
    """The value holding each token's position (broadcasting to [B, T]) and where it came from: an
    input named like cache_position / position_ids, else the first integer input or arange over the
    sequence that feeds the position embedding or the rotary embedding."""
    cands = _candidates(graph, seq_dim)
    for key in ("cache_position", "position_ids"):
        for v, where in cands:
            if key in v.name:
                return v, where
    for v, where in cands:
        if _feeds_positions(v):
            return v, where + " (feeds the position/rotary embedding)"
    return None, "none found"
