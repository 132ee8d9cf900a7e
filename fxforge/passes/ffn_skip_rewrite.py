"""Rewriting FFN blocks into skip dataflow, for the `ffn_skip` pass (ops: `fxforge.ir.skip_ops`).

Per gated block, before its residual add:
```
%idx  = skip_gate(%u, %h, %pos, %w) {kind="linear", threshold=..., warmup=..., count="ffn_kept3"} : i64[ffn_kept3]
%uk   = gather_rows(%u, %idx)                      : f32[ffn_kept3, D]
...     the FFN's ops, cloned onto the kept rows     : f32[ffn_kept3, F] ... [ffn_kept3, D]
%out  = scatter_add_rows(%r, %yk, %idx)            : f32[B, T, D]   (replaces add(%r, %y))
```
The decode form (`mask`: no compaction, nothing data-dependent, so a decode step stays capturable):
```
%keep = skip_keep(%u, %h, %pos, %w) {kind="linear", threshold=..., warmup=...} : f32[B, T, 1]
%a_k  = row_keep(%a, %keep)      before every GEMM of the FFN (its input's skipped rows are zero)
%y_k  = row_keep(%y, %keep)      the masked add: %out = add(%r, %y_k)
```
The GEMM templates read `row_keep`'s flags as a prologue and skip the K loop of tiles whose rows are
all off (`fuse` / `codegen/templates/gemm.py`); the result is the reference's x * keep either way.
And a `skip_count` per block (protected blocks too: their rows count), stacked by one `skip_counts`
appended to the graph's outputs; the runtime reads that output into the run-time counters.

Decisions:
- Cloning keeps each op and its attributes; row-only reshapes (the GPT-2 Conv1D sandwich) become
  nothing, since every cloned value is already [k, F]; a last-dim slice gets dim=1; an outside
  operand that broadcasts along the last dim with leading 1s is reshaped to its last dim.
- The oracle gate keeps the whole FFN and gathers its output's rows: it measures, it saves nothing.
- The old FFN ops and the add are erased here (not left to dce), so the trace's diff shows the rewrite.
"""

from __future__ import annotations

from collections.abc import Sequence

from fxforge.ir.graph import Graph, Op, Value, Weight
from fxforge.ir.skip_ops import WEIGHTED
from fxforge.passes.ffn_skip_find import GEMMS, FfnBlock

COUNTS_NAME = "ffn_skip_counts"


def _outside(graph: Graph, anchor: Op, v: Value) -> Value:
    if v.type.rank >= 2 and all(d == 1 for d in v.type.shape[:-1]):
        return graph.insert_before(anchor, "reshape", [v], {"shape": (v.type.shape[-1],)}).result
    return v


def clone_on_rows(graph: Graph, block: FfnBlock, uk: Value) -> Value:
    """The FFN's ops re-made on the compacted rows uk [k, D]; returns yk [k, D]."""
    env: dict[int, Value] = {id(block.u): uk}
    inner = {id(r) for op in block.body for r in op.results} | {id(block.u)}
    anchor = block.add_op
    for op in block.body:
        if op.opcode == "reshape":
            env[id(op.result)] = env[id(op.operands[0])]
            continue
        operands = [env[id(v)] if id(v) in inner else _outside(graph, anchor, v) for v in op.operands]
        attrs = dict(op.attrs)
        if op.opcode == "slice":
            attrs["dim"] = 1
        new = graph.insert_before(anchor, op.opcode, operands, attrs,
                                  result_types=None if op.opdef.infer is not None else [r.type for r in op.results])
        for old, res in zip(op.results, new.results):
            env[id(old)] = res
    return env[id(block.y)]


def add_gate(graph: Graph, block: FfnBlock, kind: str, index: int, pos: Value, threshold: float, warmup: int,
             w=None, bias: float = 0.0, prev: tuple[Value, Value] | None = None, form: str = "compact") -> Op:
    """Insert the block's `skip_gate` (form "compact") or `skip_keep` (form "mask") before its first
    op; `prev` = (input, output) stream of the previous block."""
    anchor = block.body[0] if form == "mask" and kind != "oracle" else block.add_op
    attrs = {"kind": kind, "threshold": float(threshold), "warmup": int(warmup)}
    if form == "compact":
        attrs["count"] = f"ffn_kept{index}"
    if kind in WEIGHTED:
        name = _free_weight(graph, f"{block.site}.skip_gate")
        graph.add_weight(name, Weight(w.detach().float().clone()))
        wv = graph.insert_before(anchor, "const", [], {"weight": name}, name="skip_gate_w").result
        operands = [block.u, block.stream, pos, wv]
        attrs["bias"] = float(bias)
    elif kind == "carry":
        operands = [prev[0], prev[1], pos]
    else:
        operands = [block.y, block.stream, pos]
    opcode = "skip_gate" if form == "compact" else "skip_keep"
    return graph.insert_before(anchor, opcode, operands, attrs, name=f"ffn_keep{index}")


def compact(graph: Graph, block: FfnBlock, gate: Op, kind: str) -> Value:
    """Gather -> FFN on kept rows -> scatter-add; replaces the block's add. Returns the new stream value."""
    anchor, idx = block.add_op, gate.result
    if kind == "oracle":
        yk = graph.insert_before(anchor, "gather_rows", [block.y, idx]).result
    else:
        uk = graph.insert_before(anchor, "gather_rows", [block.u, idx]).result
        yk = clone_on_rows(graph, block, uk)
    out = graph.insert_before(anchor, "scatter_add_rows", [block.r, yk, idx])
    old_name = anchor.result.name
    graph.replace_op(anchor, [out.result])
    graph.rename_value(out.result, old_name)
    if kind != "oracle":
        for op in reversed(block.body):
            graph.erase(op)
    return out.result


def _keep_for(graph: Graph, anchor: Op, keep: Value, x: Value, cache: dict) -> Value:
    """keep [..., 1] in the row shape of x (the GPT-2 Conv1D sandwich flattens the rows)."""
    want = tuple(x.type.shape[:-1]) + (1,)
    if len(want) == keep.type.rank:
        return keep
    if want not in cache:
        cache[want] = graph.insert_before(anchor, "reshape", [keep], {"shape": want}).result
    return cache[want]


def mask(graph: Graph, block: FfnBlock, gate: Op) -> Value:
    """The decode form: every GEMM of the FFN reads `row_keep(input, keep)`, the add reads
    `row_keep(y, keep)`. Returns the new stream value (the add's result, unchanged)."""
    keep, shapes = gate.result, {}
    inner = {id(r) for op in block.body for r in op.results} | {id(block.u)}
    for op in block.body if gate.attrs["kind"] != "oracle" else ():  # the oracle's flags come after the FFN
        if op.opcode in GEMMS and id(op.operands[0]) in inner:
            x = op.operands[0]
            graph.set_operand(op, 0, graph.insert_before(op, "row_keep", [x, _keep_for(graph, op, keep, x, shapes)]).result)
    add = block.add_op
    yk = graph.insert_before(add, "row_keep", [block.y, keep]).result
    graph.set_operand(add, list(add.operands).index(block.y), yk)
    return add.result


def add_count(graph: Graph, block: FfnBlock, gate: Op | None) -> Value:
    """The block's (rows, skipped) count, placed before its add so nothing big stays alive for it."""
    operands = [block.u] + ([gate.result] if gate is not None else [])
    return graph.insert_before(block.add_op, "skip_count", operands).result


def add_counts(graph: Graph, blocks: Sequence[FfnBlock], counts: Sequence[Value]) -> Value:
    """Stack the per-block counts into the `skip_counts` output the runtime reads."""
    op = graph.add_op("skip_counts", list(counts), {"sites": tuple(b.site for b in blocks)}, name=COUNTS_NAME)
    graph.set_outputs([*graph.outputs, op.result])
    return op.result


def _free_weight(graph: Graph, name: str) -> str:
    out, i = name, 0
    while out in graph.weights:
        i += 1
        out = f"{name}{i}"
    return out
