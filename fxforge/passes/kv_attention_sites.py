"""Attention over a packed KV cache: the ops a `kv_attention` kernel group takes (`templates/kv_attention.py`
runs them in one launch at T=1).

The shape matched (a decode step compiled with a kv_cache format, `passes/kv_cache.py`):

    k = kv_load(k_cache) {format, block, head_dim}       # and v = kv_load(v_cache), same format and block
    k_rep = reshape(expand(reshape(k, [B, Hkv, 1, L, D]), [B, Hkv, n, L, D]), [B, Hkv * n, L, D])   # optional
    out = attention(q, k_rep, v_rep, mask?, sinks?)

Decisions:
- Matched structurally on the IR, like `rope_sites.py`: the graph stays what the reference executor
  runs (kv_load decodes the whole cache there); the group only says that the template runs it.
- The head repeat is taken only in HF's exact repeat_kv form (query head h reads kv head h // n),
  which the template's GQA indexing reproduces; without it the attention must see the kv heads
  directly (Hq a multiple of Hkv). Every intermediate must be single-use; else no group (the kv_loads
  then run on the host, correct and slower).
"""

from __future__ import annotations

from dataclasses import dataclass

from fxforge.ir.attention_op import attention_mask, attention_sinks
from fxforge.ir.graph import Graph, Op, Value


@dataclass
class KVAttentionSite:
    attention: Op
    ops: list[Op]  # kv_loads, repeat views and the attention, in no particular order
    q: Value
    k_cache: Value
    v_cache: Value
    mask: Value | None
    format: str
    block: int
    sinks: Value | None = None  # the attention's sinks operand [Hq] (GPT-OSS)


def _single_use(v: Value, graph: Graph) -> bool:
    return len(v.uses) == 1 and not any(v is o for o in graph.outputs)


def _load_of(v: Value, graph: Graph, heads: int) -> tuple[Op, list[Op]] | None:
    """(the kv_load, the repeat views) that `v` is: the load itself, or HF's repeat_kv of it."""
    chain: list[Op] = []
    p = v.producer
    if p is not None and p.opcode == "reshape":
        e = p.operands[0].producer
        u = e.operands[0].producer if e is not None and e.opcode == "expand" else None
        if u is None or u.opcode != "reshape" or u.operands[0].type.rank != 4:  # (a tile of another rank: not it)
            return None
        b, hkv, length, d = u.operands[0].type.shape
        n = heads // hkv if isinstance(hkv, int) and hkv and heads % hkv == 0 else 0
        if (n == 0 or list(u.result.type.shape) != [b, hkv, 1, length, d]
                or list(e.result.type.shape) != [b, hkv, n, length, d] or list(v.type.shape) != [b, heads, length, d]
                or not (_single_use(u.result, graph) and _single_use(e.result, graph))):
            return None
        chain = [u, e, p]
        p = u.operands[0].producer
    if p is None or p.opcode != "kv_load" or not _single_use(p.result, graph) or not _single_use(v, graph):
        return None
    return p, chain


def _site(op: Op, graph: Graph) -> KVAttentionSite | None:
    q, k, v = op.operands[:3]
    if q.type.rank != 4 or not isinstance(q.type.shape[1], int):
        return None
    loads = [_load_of(x, graph, q.type.shape[1]) for x in (k, v)]
    if any(x is None for x in loads) or k is v:
        return None
    (kl, kc), (vl, vc) = loads
    if (kl.attrs["format"], kl.attrs["block"]) != (vl.attrs["format"], vl.attrs["block"]):
        return None
    if kl.attrs["dtype"] != q.type.dtype or {kl.attrs["head_dim"], vl.attrs["head_dim"]} != {q.type.shape[3]}:
        return None  # the packed template reads one head dim: a v head dim apart keeps the kv_loads
    return KVAttentionSite(op, [kl, *kc, vl, *vc, op], q, kl.operands[0], vl.operands[0], attention_mask(op),
                           kl.attrs["format"], kl.attrs["block"], attention_sinks(op))


def kv_attention_sites(graph: Graph) -> list[KVAttentionSite]:
    """Every attention whose K and V are kv_loads of packed caches (see the module docstring)."""
    out = []
    for op in graph.find("attention"):
        site = _site(op, graph)
        if site is not None:
            out.append(site)
    return out
