"""Heads viewed out of a fused projection in the forms Falcon and GPTBigCode write them (issue #13 on architectures
outside the zoo's Llama family), and the frontend lowerings they need, each against torch:
- Falcon-7B: `x @ W.T` (`numpy_T`), the head split before the q/k/v slices, k and v picked by a constant index,
  one kv head broadcast by sdpa, `mlp += attn` in place;
- GPTBigCode: q, k, v split off `c_attn(x).unsqueeze(1)` (k and v already [B, 1, S, D]), no RoPE, no norms.
Both become one rope_cache site (`rope_sites.py`) after canonicalisation (`head_split_rules.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rope_graphs import rope_site_graph

import fxforge

B, S, HQ, D = 1, 3, 4, 16


def _rope(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), -1) * sin


class _FalconHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn((HQ + 2) * D, HQ * D) / 8)
        self.register_buffer("cos_t", torch.randn(8, D))
        self.register_buffer("sin_t", torch.randn(8, D))

    def forward(self, x, pos):
        heads = (x @ self.w.T).view(B, S, HQ + 2, D)
        q, k, v = heads[:, :, :-2], heads[:, :, [-2]], heads[:, :, [-1]]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        cos, sin = self.cos_t[pos][None, None], self.sin_t[pos][None, None]
        return _rope(q, cos, sin), _rope(k, cos, sin), v


class _BigCodeHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = torch.nn.Linear(HQ * D, (HQ + 2) * D)

    def forward(self, x, pos):
        q, k, v = self.c_attn(x).unsqueeze(1).split([HQ * D, D, D], -1)
        return q.reshape(B, S, HQ, D).transpose(1, 2), k, v


def test_falcon_heads_form_a_rope_cache_site():
    """numpy_T is a permute (so the projection a linear), the constant indices slices, the slices of the head split
    column slices before it: one site with one kv head, nothing left on the host."""
    torch.manual_seed(0)
    g, site = rope_site_graph(_FalconHeads().eval(), torch.randn(B, S, HQ * D), torch.tensor([0, 1, 2]))
    assert (site.q_heads, site.kv_heads, site.head_dim) == (HQ, 1, D) and site.cos is not None
    assert site.qkv.producer.opcode == "linear"
    assert not {"extern", "matmul"} & set(g.op_counts()), g.op_counts()
    assert all(op.operands[0].producer.opcode == "const" for op in g.find("index_select"))  # the tables' rows only


def test_bigcode_heads_form_a_rope_cache_site_without_rope():
    """The split of an unsqueezed projection is column slices reshaped after; k and v as [B, 1, S, D] are the one-head
    view: a site without RoPE tables or norms (its cache writes one kernel, not host writes)."""
    torch.manual_seed(0)
    g, site = rope_site_graph(_BigCodeHeads().eval(), torch.randn(B, S, HQ * D), torch.tensor([0, 1, 2]))
    assert (site.q_heads, site.kv_heads, site.cos, site.qk_norm) == (HQ, 1, None, None)


class _InPlace(torch.nn.Module):
    """`h += y` on the model's own tensor (Falcon's parallel block), and on one a view of which is read after it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        h = self.a(x)
        h += self.b(x)
        h.mul_(0.5)
        g = self.b(x) * 2
        seen = g.view(-1)  # a view taken before g is written: it must see the write
        g.add_(h)
        p = self.a(x) * 3
        p[:, :4].add_(1)  # a view of p: p sees the write
        return h, seen * 3, p


def test_in_place_arithmetic_lowers_only_on_a_tensor_nothing_else_reaches():
    torch.manual_seed(0)
    model, x = _InPlace().eval(), torch.randn(2, 8)
    mod = fxforge.compile_aot(model, (x,), executor="interpret", dynamic=False)
    externs = [op.attrs["target"] for op in mod.graph.ops if op.opcode == "extern"]
    assert externs == ["aten.add_.Tensor"] * 2, externs  # g's and p's view's; h's add_ and mul_ are kernels
    for got, want in zip(mod(x), model(x), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


class _OneKvHead(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_sdpa_broadcasting_one_kv_head_is_grouped_query_attention():
    """sdpa broadcasts a single kv head over the query heads (Falcon-7B): the attention op runs it as GQA, not a
    shape error at run time."""
    q, k, v = torch.randn(1, HQ, 5, D), torch.randn(1, 1, 5, D), torch.randn(1, 1, 5, D)
    mod = fxforge.compile_aot(_OneKvHead(), (q, k, v), executor="interpret", dynamic=False)
    (att,) = mod.graph.find("attention")
    assert att.attrs["enable_gqa"]
    torch.testing.assert_close(mod(q, k, v), _OneKvHead()(q, k, v), atol=1e-5, rtol=1e-5)
