"""RoPE written over the two halves (GPT-OSS's `_apply_rotary_emb`: cat(x1 c - x2 s, x2 c + x1 s) with tables of D/2
entries) in the rope_cache template: `pair_tables` on rotate_half pairs against torch, the graph-level site of that
form (half or full tables, negated, partial) run by the generated module against the reference evaluator, and the
real GPT-OSS decoder's graph: one rope_cache group, no host cache write (issue #13: one launch, not 3 + 2 host)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gpt_oss.modeling_gpt_oss import _apply_rotary_emb

from fxforge.codegen.templates.rope_cache import rope_cache
from fxforge.errors import ShapeError

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype,rotary,negated", [(torch.float32, 16, False), (torch.float16, 8, True)])
def test_rope_cache_half_tables_matches_torch(dtype, rotary, negated):
    """cos / sin of R/2 entries shared by both halves (channel c and c + R/2 read entry c): q and the k cache as
    GPT-OSS's `_apply_rotary_emb` (negated: sin's sign flipped), channels past R (partial) and v as they are."""
    B, S, Hq, Hkv, D, L = 2, 3, 4, 2, 16, 7
    qkv = torch.randn(B, S, (Hq + 2 * Hkv) * D, dtype=dtype) * 3
    cos, sin = (torch.randn(1, 1, S, rotary // 2, dtype=dtype) for _ in range(2))
    pos = torch.tensor([5, 0, 3])
    kc, vc = torch.zeros(B, Hkv, L, D, dtype=dtype), torch.zeros(B, Hkv, L, D, dtype=dtype)
    q, _, _ = rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D, rotary_dim=rotary,
                         pair_tables=True, negated=negated)
    x = qkv.float().reshape(B, S, -1, D).transpose(1, 2)

    def rope(h):
        return torch.cat([_apply_rotary_emb(h[..., :rotary], cos.float(), -sin.float() if negated else sin.float()),
                          h[..., rotary:]], -1)

    tol = TOL[dtype] * 8
    torch.testing.assert_close(q.float(), rope(x[:, :Hq]), atol=tol, rtol=tol)
    torch.testing.assert_close(kc[:, :, pos].float(), rope(x[:, Hq:Hq + Hkv]), atol=tol, rtol=tol)
    assert torch.equal(vc[:, :, pos], qkv.reshape(B, S, -1, D)[:, :, Hq + Hkv:].transpose(1, 2))
    with pytest.raises(ShapeError, match="broadcast"):  # full tables are not one entry per pair
        rope_cache(qkv, *(torch.randn(1, 1, S, rotary) for _ in range(2)), pos, kc, vc, q_heads=Hq, kv_heads=Hkv,
                   head_dim=D, rotary_dim=rotary, pair_tables=True)


class _HalvesHeads(torch.nn.Module):
    """One [q; k; v] linear with biases, the head views, RoPE over the two halves: GPT-OSS's `_apply_rotary_emb` with
    tables of D/2 entries ("half"), the halves of full tables ("full"), the rotation negated ("negated"), or over the
    first R = D/2 channels only ("partial")."""

    def __init__(self, form: str, hq: int = 4, hkv: int = 2, d: int = 16) -> None:
        super().__init__()
        self.heads, self.d, self.form = (hq, hkv, hkv), d, form
        self.qkv = torch.nn.Linear(32, (hq + 2 * hkv) * d)
        width = {"half": d // 2, "full": d, "negated": d // 2, "partial": d // 4}[form]
        self.register_buffer("cos_t", torch.randn(8, width))
        self.register_buffer("sin_t", torch.randn(8, width))

    def rope(self, x, cos, sin):
        x1, x2 = x.chunk(2, -1) if self.form in ("full", "negated") else (None, None)
        if self.form == "full":
            (c1, c2), (s1, s2) = cos.chunk(2, -1), sin.chunk(2, -1)
            return torch.cat((x1 * c1 - x2 * s1, x2 * c2 + x1 * s2), -1)
        if self.form == "negated":
            return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), -1)
        if self.form == "partial":
            r = 2 * cos.shape[-1]
            return torch.cat((_apply_rotary_emb(x[..., :r], cos, sin), x[..., r:]), -1)
        return _apply_rotary_emb(x, cos, sin)

    def forward(self, x, pos):
        q, k, v = self.qkv(x).split([h * self.d for h in self.heads], -1)
        q, k, v = (t.view(*x.shape[:2], -1, self.d).transpose(1, 2) for t in (q, k, v))
        cos, sin = (t[pos][None, None] for t in (self.cos_t, self.sin_t))
        return self.rope(q, cos, sin), self.rope(k, cos, sin), v


@pytest.mark.parametrize("form", ["half", "full", "negated", "partial"])
def test_two_halves_rope_forms_a_rope_cache_site(form):
    """With cache writes after it, the two-halves form is one rope_cache site (tables of D/2 entries read as one entry
    per pair, full tables read whole), and the generated module (the rope_cache kernel) gives the reference's q and
    caches. Swapping the sub's operands (x2 s - x1 c) or the cat's (second half first) is not RoPE."""
    from rope_graphs import rope_site_graph

    from fxforge.codegen import generate_module
    from fxforge.ir import evaluate
    from fxforge.ir.evaluate import bind_symbols
    from fxforge.passes.fuse import fuse, partition
    from fxforge.passes.rope_sites import rope_sites

    m, x, pos = _HalvesHeads(form).eval(), torch.randn(1, 3, 32), torch.tensor([4, 1, 6])
    g, site = rope_site_graph(m, x, pos)
    want = {"half": (16, True, False, 8), "full": (16, False, False, 16), "negated": (16, True, True, 8),
            "partial": (8, True, False, 4)}[form]
    assert (site.rotary_dim, site.pair_tables, site.negated, site.cos.type.shape[-1]) == want and not site.interleaved
    part = partition(g)
    (group,) = [grp for grp in part.groups if grp.kind == "rope_cache"]
    assert group.inputs == site.reads and [op.opcode for op in group.ops].count("cache_write") == 2
    inputs = [x, pos, *(torch.randn(1, 2, 8, 16) for _ in range(2)), torch.tensor([7, 0, 3])]
    ref = evaluate(g, [t.clone() for t in inputs])
    mod = generate_module(fuse(g))
    assert "_rope_cache(" in mod.source and ("pair_tables=True" in mod.source) == site.pair_tables
    got = mod.run(inputs, bind_symbols([v.type for v in g.inputs], inputs, [v.name for v in g.inputs]))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    g, _ = rope_site_graph(m, x, pos)
    sub = next(op for op in g.ops if op.opcode == "sub")
    a, b = sub.operands
    g.set_operand(sub, 0, b)
    g.set_operand(sub, 1, a)
    assert rope_sites(g) == []
    g, _ = rope_site_graph(m, x, pos)
    cat = next(op for op in g.ops if op.opcode == "cat" and op.operands[0].producer.opcode in ("add", "sub"))
    a, b = cat.operands
    g.set_operand(cat, 0, b)
    g.set_operand(cat, 1, a)
    assert rope_sites(g) == []


def test_gpt_oss_decoder_rope_and_cache_writes_are_one_group():
    """The real GPT-OSS decoder (HF, random weights) compiled for a kernel executor: q/k/v with biases stacked into one
    GEMM, its two-halves RoPE with half tables (attention scaling folded in) and both cache writes one rope_cache
    group; no cache_write on the host."""
    import fxforge
    from fxforge.passes.fuse import partition
    from fxforge.testing import gqa_decoder

    dec = fxforge.compile_decoder(gqa_decoder("gpt_oss", 1), max_length=24, executor="interpret")
    part = partition(dec.graph)
    (group,) = [grp for grp in part.groups if grp.kind == "rope_cache"]
    site = group.params["site"]
    assert site.pair_tables and not site.interleaved and site.rotary_dim == site.head_dim
    assert site.qkv.producer.opcode == "linear" and len(site.qkv.producer.operands) == 3  # with the stacked biases
    writes = [op for op in dec.graph.ops if op.opcode == "cache_write"]
    assert len(writes) == 2 and all(op in group.ops for op in writes)
