"""Where the KV cache lives in a graph: each `attention` op with its query, and its keys and values as a
cache would store them (before the GQA head repeat), plus whether K comes out of a rotate_half RoPE.

Shared by `kv_cache` (which quantizes K and V there) and `ksort` (which permutes K's channels there).

Decisions:
- K / V "as cached" are the tensors [b, heads_kv, s, head_dim] before HF's repeat_kv chain
  (reshape -> expand -> reshape); without that chain, the attention operand itself. Quantizing per
  block along head_dim commutes with the repeat, so either place gives the same numbers; before the
  repeat is where a cache writes.
- RoPE is recognised in HF's rotate_half form: add(mul(x, cos), mul(cat(neg(slice(x, hi)), slice(x, lo)), sin)).
"""

from __future__ import annotations

from dataclasses import dataclass

from fxforge.ir.graph import Graph, Op, Value


@dataclass
class AttentionSite:
    op: Op
    index: int
    q: Value
    k: Value  # as cached: [b, heads_kv, s, head_dim]
    v: Value
    k_reader: Op  # the op that reads `k` on the way to the attention (repeat chain or the attention)
    v_reader: Op
    heads: int
    kv_heads: int
    head_dim: int
    rope: bool
    v_head_dim: int  # v's (MiMo-V2-Flash, MLA per head: != head_dim)


def _before_repeat(v: Value) -> tuple[Value, Op | None]:
    """(the tensor before a reshape -> expand -> reshape head repeat, the chain's first op) or (v, None)."""
    p = v.producer
    if p is None or p.opcode != "reshape":
        return v, None
    e = p.operands[0].producer
    if e is None or e.opcode != "expand":
        return v, None
    u = e.operands[0].producer
    if u is None or u.opcode != "reshape" or len(u.operands[0].type.shape) != 4:
        return v, None
    return u.operands[0], u


def is_rope(v: Value) -> bool:
    """Is v = x * cos + rotate_half(x) * sin (HF's rotate_half layout)?"""
    p = v.producer
    if p is None or p.opcode != "add":
        return False
    muls = [o.producer for o in p.operands]
    if any(m is None or m.opcode != "mul" for m in muls):
        return False
    for m in muls:
        for operand in m.operands:
            c = operand.producer
            if c is not None and c.opcode == "cat" and any(
                    o.producer is not None and o.producer.opcode == "neg" for o in c.operands):
                return True
    return False


def attention_sites(graph: Graph) -> list[AttentionSite]:
    """Every attention op whose q, k, v are rank-4 [b, heads, s, head_dim] with static heads and head_dim."""
    sites = []
    for i, op in enumerate(graph.find("attention")):
        q, k_att, v_att = op.operands[:3]
        if any(t.type.rank != 4 for t in (q, k_att, v_att)):
            continue
        k, k_chain = _before_repeat(k_att)
        v, v_chain = _before_repeat(v_att)
        heads, kv_heads, d, dv = q.type.shape[1], k.type.shape[1], q.type.shape[3], v.type.shape[3]
        if not all(isinstance(n, int) for n in (heads, kv_heads, d, dv)):
            continue
        sites.append(AttentionSite(op, i, q, k, v, k_chain or op, v_chain or op, heads, kv_heads, d, is_rope(k), dv))
    return sites


def replace_use(graph: Graph, reader: Op, old: Value, new: Value) -> None:
    """Make `reader` read `new` wherever it read `old`."""
    for i, o in enumerate(reader.operands):
        if o is old:
            graph.set_operand(reader, i, new)
