"""Attention reads K and V as cached: HF's GQA head repeat goes into the attention op (issue #13).

HF's `repeat_kv` expands each kv head to the query heads that share it before sdpa:

    %u = reshape(%k) : [b, hkv, 1, s, d];  %e = expand(%u) : [b, hkv, n, s, d];  %r = reshape(%e) : [b, hkv*n, s, d]
    %o = attention(%q, %r, %r_v, ...) {enable_gqa=False}
 -> %o = attention(%q, %k, %v, ...) {enable_gqa=True}

The last reshape of an expanded tensor cannot be a view: torch copies the whole cache there, in every
layer of every decode step (an allocation `run()` would make per call, and the cache read twice). Query
head h of the repeat reads kv head h // n, which is exactly sdpa's `enable_gqa` (and the attention
templates': flash-decoding packs a kv head's query heads in one tile). dce drops the chain.

Decisions:
- Both K and V must carry the chain with the same n (else nothing changes); the chain is matched by
  shapes, not names: [b, hkv, s, d] -> [b, hkv, 1, s, d] -> [b, hkv, n, s, d] -> [b, hkv*n, s, d].
- Runs for the generated-kernel executors (the reference executor keeps HF's graph as captured), after
  the KV-cache passes (which find the cache before this very chain, `attention_sites.py`).
"""

from __future__ import annotations

from fxforge.ir.graph import Graph, Value
from fxforge.passes.manager import PassContext


def repeat_source(v: Value) -> tuple[Value, int] | None:
    """(the [b, hkv, s, d] tensor, n) when v is HF's repeat_kv of it, else None."""
    r = v.producer
    e = r.operands[0].producer if r is not None and r.opcode == "reshape" else None
    u = e.operands[0].producer if e is not None and e.opcode == "expand" else None
    if u is None or u.opcode != "reshape":
        return None
    src = u.operands[0]
    if src.type.rank != 4 or u.result.type.rank != 5 or e.result.type.rank != 5:
        return None
    b, hkv, s, d = src.type.shape
    n = e.result.type.shape[2]
    ok = (tuple(u.result.type.shape) == (b, hkv, 1, s, d) and tuple(e.result.type.shape) == (b, hkv, n, s, d)
          and isinstance(n, int) and isinstance(hkv, int) and tuple(v.type.shape) == (b, hkv * n, s, d))
    return (src, n) if ok else None


class GqaAttention:
    """stats: attentions (how many now read K/V before the head repeat)."""

    name = "gqa_attention"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        count = 0
        for op in list(graph.find("attention")):
            if op.attrs.get("enable_gqa") or len(op.operands) < 3:
                continue
            k, v = repeat_source(op.operands[1]), repeat_source(op.operands[2])
            if k is None or v is None or k[1] != v[1]:
                continue
            graph.set_operand(op, 1, k[0])
            graph.set_operand(op, 2, v[0])
            op.attrs = {**op.attrs, "enable_gqa": True}
            count += 1
        ctx.stats["attentions"] = count
        return graph
