"""RoPE applied to the heads before their transpose to [B, H, S, D] (issue #13 on architectures outside the zoo's Llama
family), each against torch:
- Llama 4: `view_as_complex` RoPE (the complex product on real pairs, `frontend/aten_complex.py`), then a weightless
  L2 norm of each q/k head, then the transpose;
- Gemma 4: a weighted q/k norm, rotate_half RoPE with tables [1, S, 1, D], then the transpose.
Both become one rope_cache site whose tables index [B, S, 1, W] (`heads_last`): graph-level here, the template against
torch's math; the architectures' decode runs in tests/runtime/test_arch_decode.py (slow)."""

from __future__ import annotations

import pytest
import torch
from rope_graphs import rope_site_graph

from fxforge.codegen.templates.rope_cache import rope_cache
from fxforge.ir import evaluate
from fxforge.ir.ops import OPS

B, S, HQ, HKV, D, EPS = 1, 3, 4, 2, 16, 1e-5
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _l2(t):
    """Llama 4's L2 norm (`Llama4TextL2Norm`): in fp32, cast back."""
    f = t.float()
    return (f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + EPS)).type_as(t)


def _complex_rope(t, freqs_cis):
    pairs = torch.view_as_complex(t.float().reshape(*t.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs_cis).flatten(3).type_as(t)


def _rotate_half(t):
    return torch.cat((-t[..., D // 2:], t[..., :D // 2]), -1)


class _Heads(torch.nn.Module):
    """q, k, v of one projection, RoPE'd on [B, S, H, D] and transposed after: Llama 4's form or Gemma 4's."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.qkv = torch.nn.Linear(32, (HQ + 2 * HKV) * D, bias=False)
        self.register_buffer("theta", torch.randn(8, D // 2))
        self.qn, self.kn = (torch.nn.Parameter(1 + torch.randn(D) / 4) for _ in range(2))

    def forward(self, x, pos):
        q, k, v = (t.view(B, S, -1, D) for t in self.qkv(x).split([HQ * D, HKV * D, HKV * D], -1))
        angles = self.theta[pos].float()  # (Llama 4 builds its tables in fp32)
        if self.form == "llama4":
            freqs_cis = torch.polar(torch.ones_like(angles), angles)[None, :, None]
            q, k = (_l2(_complex_rope(t, freqs_cis)) for t in (q, k))
        else:
            cos, sin = (f(torch.cat((angles, angles), -1))[None, :, None].to(x.dtype) for f in (torch.cos, torch.sin))
            q, k = (OPS["rms_norm"].ref(t, w, eps=EPS) for t, w in ((q, self.qn), (k, self.kn)))
            q, k = (t * cos + _rotate_half(t) * sin for t in (q, k))
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


@pytest.mark.parametrize("form,dtype", [("llama4", torch.float32), ("llama4", torch.float16),
                                        ("gemma4", torch.float32)])
def test_rope_before_the_head_transpose_is_one_site(form, dtype):
    """The transpose after RoPE (and the norm) is the site's; its tables are read as [B, S, 1, W]: Llama 4's complex
    RoPE is interleaved with one entry per pair and its L2 norm the weightless norm after RoPE."""
    torch.manual_seed(0)
    m, x = _Heads(form).to(dtype).eval(), torch.randn(B, S, 32, dtype=dtype)
    g, site = rope_site_graph(m, x, torch.tensor([0, 1, 2]))
    assert "extern" not in g.op_counts() and site.heads_last and (site.q_heads, site.kv_heads, site.head_dim) == (
        HQ, HKV, D)
    assert {op.opcode for op in site.ops} >= {"permute", "rms_norm", "cache_write"}
    if form == "llama4":
        assert (site.interleaved, site.pair_tables, site.norm_after) == (True, True, True)
        assert site.qk_norm[:2] == (None, None) and tuple(site.cos.type.shape) == (1, S, 1, D // 2)
    else:
        assert (site.interleaved, site.pair_tables, site.norm_after) == (False, False, False)
        assert tuple(site.cos.type.shape) == (1, S, 1, D) and site.qk_norm[0] is not None


def test_rope_before_the_transpose_needs_both_transposes():
    """k transposed by another permutation is not the head transpose: no site (pointwise kernels instead)."""
    from fxforge.passes.rope_sites import rope_sites

    torch.manual_seed(0)
    g, _ = rope_site_graph(_Heads("llama4").eval(), torch.randn(B, S, 32), torch.tensor([0, 1, 2]))
    (perm,) = [op for op in g.ops if op.opcode == "permute" and op.operands[0].producer.opcode == "rms_norm"
               and [u.opcode for u in op.result.uses] == ["cache_write"]]  # k's
    perm.attrs["dims"] = (2, 0, 1, 3)
    assert rope_sites(g) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_cache_heads_last_tables(dtype):
    """The template with [1, S, 1, D/2] tables of one entry per pair (interleaved) and the weightless norm after
    RoPE against torch's complex RoPE and L2 norm; tables that only broadcast heads-first are a ShapeError."""
    torch.manual_seed(0)
    qkv = torch.randn(B, S, (HQ + 2 * HKV) * D, dtype=dtype) * 3
    angles = torch.randn(S, D // 2)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)[None, :, None]
    cos, sin = freqs_cis.real.contiguous(), freqs_cis.imag.contiguous()
    pos, L = torch.tensor([4, 0, 2]), 6
    kc, vc = torch.zeros(B, HKV, L, D, dtype=dtype), torch.zeros(B, HKV, L, D, dtype=dtype)
    q, _, _ = rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=HQ, kv_heads=HKV, head_dim=D, interleaved=True,
                         pair_tables=True, qk_norm=(None, None, EPS), norm_after=True, heads_last=True)
    x = qkv.reshape(B, S, -1, D)
    want = OPS["rms_norm"].ref(_complex_rope(x, freqs_cis), None, eps=EPS).transpose(1, 2)
    tol = TOL[dtype] * 8
    torch.testing.assert_close(q.float(), want[:, :HQ].float(), atol=tol, rtol=tol)
    torch.testing.assert_close(kc[:, :, pos].float(), want[:, HQ:HQ + HKV].float(), atol=tol, rtol=tol)
    assert torch.equal(vc[:, :, pos], x.transpose(1, 2)[:, HQ + HKV:])
    from fxforge.errors import ShapeError
    with pytest.raises(ShapeError, match="broadcast"):
        rope_cache(qkv, cos.transpose(1, 2), sin.transpose(1, 2), pos, kc, vc, q_heads=HQ, kv_heads=HKV, head_dim=D,
                   interleaved=True, pair_tables=True, heads_last=True)


class _NormedV(_Heads):
    """Gemma 4's head path: q/k norms, RoPE before the transpose, and a norm of v (weightless, Gemma 4's, or not)."""

    def __init__(self, weighted: bool) -> None:
        super().__init__("gemma4")
        self.vn = torch.nn.Parameter(1 + torch.randn(D) / 4) if weighted else None

    def forward(self, x, pos):
        q, k, v = super().forward(x, pos)
        return q, k, OPS["rms_norm"].ref(v.transpose(1, 2), self.vn, eps=EPS).transpose(1, 2)


def test_weightless_v_norm_joins_the_site():
    """Gemma 4's v norm is the site's (`v_norm`, its eps): the template's v rows against torch; a weighted v norm is
    not (no site)."""
    torch.manual_seed(0)
    x, at = torch.randn(B, S, 32), torch.tensor([0, 1, 2])
    g, site = rope_site_graph(_NormedV(weighted=False).eval(), x, at)
    assert site.v_norm == EPS and site.heads_last
    qkv, pos, L = torch.randn(B, S, (HQ + 2 * HKV) * D) * 3, torch.tensor([1, 5, 2]), 6
    kc, vc = torch.zeros(B, HKV, L, D), torch.zeros(B, HKV, L, D)
    rope_cache(qkv, None, None, pos, kc, vc, q_heads=HQ, kv_heads=HKV, head_dim=D, v_norm=EPS)
    heads = qkv.reshape(B, S, -1, D).transpose(1, 2)
    torch.testing.assert_close(vc[:, :, pos], OPS["rms_norm"].ref(heads[:, HQ + HKV:], None, eps=EPS), atol=1e-6,
                               rtol=1e-5)
    assert torch.equal(kc[:, :, pos], heads[:, HQ:HQ + HKV])
    with pytest.raises(ValueError):  # rope_site_graph finds no site
        rope_site_graph(_NormedV(weighted=True).eval(), x, at)


@pytest.mark.parametrize("form,dtype", [("llama4", torch.float16), ("gemma4", torch.float16)])
def test_site_kernel_matches_the_graph(form, dtype):
    """rope_cache called with what the site reads gives the graph's q and cache rows (the reference executor, one
    rounding per op) within an ulp or two of fp16: heads-last tables, complex pairs, the norms, the v norm."""
    torch.manual_seed(0)
    m = (_NormedV(weighted=False) if form == "gemma4" else _Heads(form)).to(dtype).eval()
    x, at = torch.randn(B, S, 32, dtype=dtype), torch.tensor([0, 1, 2])
    g, site = rope_site_graph(m, x, at)
    seen = {}
    caches = [torch.zeros(1, HKV, 8, D, dtype=dtype) for _ in range(2)]
    want = evaluate(g, [x, at, *caches, at], observe=lambda op, outs: seen.update(zip(map(id, op.results), outs)))
    kc, vc = (torch.zeros(1, HKV, 8, D, dtype=dtype) for _ in range(2))
    kw = dict(interleaved=site.interleaved, pair_tables=site.pair_tables, heads_last=site.heads_last,
              v_norm=site.v_norm, norm_after=site.norm_after, norm_fp32=site.norm_fp32)
    norm = tuple(seen[id(w)] if w is not None else None for w in site.qk_norm[:2]) + (site.qk_norm[2],)
    q, _, _ = rope_cache(seen[id(site.qkv)], seen[id(site.cos)], seen[id(site.sin)], at, kc, vc, q_heads=HQ,
                         kv_heads=HKV, head_dim=D, qk_norm=norm, **kw)
    ulp = torch.finfo(dtype).eps * 2
    for got, ref in ((q, want[0]), (kc, want[1]), (vc, want[2])):
        torch.testing.assert_close(got.float(), ref.float(), atol=ulp, rtol=ulp)


class _TemperedNoPE(torch.nn.Module):
    """Llama 4's layers without RoPE: q scaled per token on [B, S, H, D] (attention temperature tuning), then both
    transposed; no norms."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(32, (HQ + 2 * HKV) * D, bias=False)

    def forward(self, x, pos):
        q, k, v = (t.view(B, S, -1, D) for t in self.qkv(x).split([HQ * D, HKV * D, HKV * D], -1))
        scales = (torch.log1p(torch.floor((pos.float() + 1.0) / 4)) * 0.1 + 1.0).view(1, S, 1, 1)
        q = (q * scales).to(q.dtype)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_q_scaled_before_the_transpose_is_the_sites_q_scale(dtype):
    """Llama 4's NoPE layers: the per-token q scale on [B, S, H, D] before the transpose is the site's q_scale read as
    [B, S, 1, 1] (`heads_last`, no tables); in 16 bits the scale stays fp32 and the product is cast back (one rounding,
    the template's); the template against torch."""
    torch.manual_seed(0)
    m = _TemperedNoPE().eval().to(dtype)
    g, site = rope_site_graph(m, torch.randn(B, S, 32, dtype=dtype), torch.tensor([0, 5, 9]))
    assert site.cos is None and site.q_scale is not None and site.heads_last
    assert tuple(site.q_scale.type.shape) == (1, S, 1, 1)
    qkv, pos, L = torch.randn(B, S, (HQ + 2 * HKV) * D).to(dtype), torch.tensor([2, 0, 4]), 6
    scale = torch.tensor([1.5, 0.5, 2.0 + 2 ** -12]).view(1, S, 1, 1)  # fp32 (2 + 2^-12 is no fp16 number)
    kc, vc = torch.zeros(B, HKV, L, D, dtype=dtype), torch.zeros(B, HKV, L, D, dtype=dtype)
    q, _, _ = rope_cache(qkv, None, None, pos, kc, vc, q_heads=HQ, kv_heads=HKV, head_dim=D, q_scale=scale,
                         heads_last=True)
    heads = qkv.reshape(B, S, -1, D)
    assert torch.equal(q, (heads[:, :, :HQ].float() * scale).to(dtype).transpose(1, 2))
    assert torch.equal(kc[:, :, pos], heads[:, :, HQ:HQ + HKV].transpose(1, 2))
