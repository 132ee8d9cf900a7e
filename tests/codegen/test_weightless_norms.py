"""NanoChat's decoder-layer forms (issue #13 on a hidden architecture), each against torch: RMSNorms without a weight
as the dense GEMM's prologue (`norm=(None, eps)`, `norm_prologues.NORM_PROLOGUES` arity 1), and its attention head
path in rope_cache: RoPE with the rotation negated (`rotate_half` = cat(x2, -x1)), then a weightless per-head q/k
RMSNorm (`norm_after`), then the cache write; plus the graph-level site of that form. Kernel- and graph-level
(cheap); the model's decode runs in tests/runtime/test_arch_decode.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fxforge.codegen.templates.gemm import linear
from fxforge.codegen.templates.rope_cache import rope_cache
from fxforge.errors import ShapeError
from fxforge.ir.ops import OPS

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _norm(x, eps=1e-6):
    return OPS["rms_norm"].ref(x, None, eps=eps)


def _neg_rot(x):
    """NanoChat's rotate_half: cat(x2, -x1), the negation of Llama's."""
    d = x.shape[-1] // 2
    return torch.cat((x[..., d:], -x[..., :d]), -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gemm_weightless_rms_norm_prologue(dtype):
    torch.manual_seed(0)
    x = (torch.randn(3, 96) * 3).to(dtype)  # K = 96: a partial last K tile
    w = (torch.randn(40, 96) / 10).to(dtype)
    want = F.linear(_norm(x).float(), w.float())
    got = linear(x, w, norm=(None, 1e-6))
    assert got.shape == (3, 40) and (got.float() - want).abs().max() <= TOL[dtype] * 4 * want.abs().max()
    relu2 = linear(x, w, norm=(None, 1e-6), activation="relu2")  # NanoChat's fc1: the prologue with an epilogue
    assert (relu2.float() - torch.relu(want) ** 2).abs().max() <= TOL[dtype] * 8 * (want ** 2).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_cache_negated_rotation_weightless_norm_after(dtype):
    """q = rms_norm(x_q * cos + cat(x2, -x1) * sin) without weights, the k cache likewise, v as is (NanoChat's
    attention: RoPE, then its q/k norm); the graph's roundings in fp16 (RoPE rounded, then the norm's one)."""
    torch.manual_seed(0)
    B, S, Hq, Hkv, D, L, eps = 1, 2, 4, 2, 16, 6, 1e-6
    qkv = torch.randn(B, S, (Hq + 2 * Hkv) * D, dtype=dtype) * 3
    cos, sin = (torch.randn(1, 1, S, D, dtype=dtype) for _ in range(2))
    pos = torch.tensor([3, 1])
    kc, vc = torch.zeros(B, Hkv, L, D, dtype=dtype), torch.zeros(B, Hkv, L, D, dtype=dtype)
    q, _, _ = rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D, qk_norm=(None, None, eps),
                         norm_after=True, negated=True)
    x = qkv.reshape(B, S, -1, D).transpose(1, 2)

    def rope_norm(h):
        h, c, s = h.float(), cos.float(), sin.float()
        return _norm((h * c + _neg_rot(h) * s).to(dtype), eps)

    tol = TOL[dtype] * 8
    torch.testing.assert_close(q.float(), rope_norm(x[:, :Hq]).float(), atol=tol, rtol=tol)
    torch.testing.assert_close(kc[:, :, pos].float(), rope_norm(x[:, Hq:Hq + Hkv]).float(), atol=tol, rtol=tol)
    assert torch.equal(vc[:, :, pos], x[:, Hq + Hkv:])
    with pytest.raises(ShapeError, match="qk_norm"):  # one weightless, one not
        rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D,
                   qk_norm=(None, torch.ones(D, dtype=dtype), eps))


def test_rope_cache_negated_before_norm_and_interleaved():
    """The negated rotation alone (no norm), the weightless per-head norm before RoPE, and the interleaved form
    negated (rotate(x)[2i] = x[2i + 1], rotate(x)[2i + 1] = -x[2i])."""
    torch.manual_seed(0)
    B, S, Hq, Hkv, D, L, eps = 1, 2, 4, 2, 16, 6, 1e-6
    qkv = torch.randn(B, S, (Hq + 2 * Hkv) * D) * 3
    cos, sin = (torch.randn(1, 1, S, D) for _ in range(2))
    pos = torch.tensor([0, 5])
    x = qkv.reshape(B, S, -1, D).transpose(1, 2)
    pairs = torch.stack((x[..., 1::2], -x[..., ::2]), -1).flatten(-2)
    for kw, xn, rot in [({}, x, _neg_rot(x)), ({"qk_norm": (None, None, eps)}, _norm(x, eps), _neg_rot(_norm(x, eps))),
                        ({"interleaved": True}, x, pairs)]:
        kc, vc = torch.zeros(B, Hkv, L, D), torch.zeros(B, Hkv, L, D)
        q, _, _ = rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D, negated=True, **kw)
        want = xn * cos + rot * sin
        torch.testing.assert_close(q, want[:, :Hq], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kc[:, :, pos], want[:, Hq:Hq + Hkv], atol=1e-5, rtol=1e-5)


class _NanoChatHeads(torch.nn.Module):
    """NanoChat's attention up to the cache (transformers' own `apply_rotary_pos_emb` and `NanoChatRMSNorm`) after
    one [q; k; v] linear: head views, RoPE with its negated rotate_half, then the weightless q/k norms."""

    def __init__(self, hq: int = 4, hkv: int = 2, d: int = 16) -> None:
        from transformers.models.nanochat.modeling_nanochat import NanoChatRMSNorm

        super().__init__()
        self.heads, self.d = (hq, hkv, hkv), d
        self.qkv = torch.nn.Linear(32, (hq + 2 * hkv) * d, bias=False)
        self.q_norm, self.k_norm = NanoChatRMSNorm(1e-6), NanoChatRMSNorm(1e-6)
        self.register_buffer("cos_t", torch.randn(8, d))
        self.register_buffer("sin_t", torch.randn(8, d))

    def forward(self, x, pos):
        from transformers.models.nanochat.modeling_nanochat import apply_rotary_pos_emb

        q, k, v = self.qkv(x).split([h * self.d for h in self.heads], -1)
        q, k, v = (t.view(*x.shape[:2], -1, self.d).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary_pos_emb(q, k, self.cos_t[pos][None], self.sin_t[pos][None])
        return self.q_norm(q), self.k_norm(k), v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nanochat_heads_form_a_rope_cache_site(dtype):
    """With cache writes after it, NanoChat's head path is one rope_cache site: negated, its weightless norms after
    RoPE (fp16: the fp32 norm between casts canonicalised to rms_norm(x)); a cat of the other order, cat(-x1, x2),
    rotates nothing."""
    from rope_graphs import rope_site_graph

    from fxforge.passes.fuse import partition
    from fxforge.passes.rope_sites import rope_sites

    torch.manual_seed(0)
    m, x, pos = _NanoChatHeads().to(dtype).eval(), torch.randn(1, 3, 32, dtype=dtype), torch.tensor([0, 1, 2])
    g, site = rope_site_graph(m, x, pos)
    assert site.negated and site.norm_after and site.qk_norm == (None, None, 1e-6) and not site.norm_fp32
    (group,) = [grp for grp in partition(g).groups if grp.kind == "rope_cache"]
    assert group.inputs == site.reads
    cats = [op for op in g.ops if op.opcode == "cat" and op.operands[1].producer.opcode == "neg"]
    for cat in cats:  # cat(x2, -x1) -> cat(-x1, x2): not a rotation of either sign
        a, b = cat.operands
        g.set_operand(cat, 0, b)
        g.set_operand(cat, 1, a)
    assert len(cats) == 2 and rope_sites(g) == []


@pytest.mark.parametrize("dtype,M,split_k,weighted", [(torch.float16, 5, None, False), (torch.float32, 5, 2, True),
                                                      (torch.float32, 130, None, False)])
def test_gemm_norm_of_a_norm_prologue(dtype, M, split_k, weighted):
    """z = rms_norm(h[, pw]) (the post-norm step without its add: `post_norm=(None, w or None, eps)`), stored, then
    the weightless norm of z in the same load (NanoChat's embedding norm and its first layer's input norm); several
    column tiles at M=5 (the first writes z), split-K, and M=130 (z by the `post_norm_rows` kernel first)."""
    torch.manual_seed(0)
    K, N = 96, 160 if M < 16 else 16
    h, w = torch.randn(M, K, dtype=dtype) * 3, (torch.randn(N, K) / 10).to(dtype)
    pw = (1 + torch.randn(K) / 4).to(dtype) if weighted else None
    z_want = OPS["rms_norm"].ref(h, pw, eps=1e-6)
    want = F.linear(_norm(z_want).float(), w.float())
    z_out = torch.full((M, K), float("nan"), dtype=dtype)
    y, z = linear(h, w, post_norm=(None, pw, 1e-6), norm=(None, 1e-6), keep_z=True, z_out=z_out, split_k=split_k)
    torch.testing.assert_close(z, z_want, atol=TOL[dtype], rtol=TOL[dtype])
    assert (y.float() - want).abs().max() <= TOL[dtype] * 4 * want.abs().max()


def test_norm_of_a_norm_fuses_into_the_gemm():
    """e -> n1 = rms_norm(e) -> linear(rms_norm(n1)) + ... -> add(n1, .): the first GEMM's group takes both norms and
    stores n1 for the residual add (one launch fewer); a norm the GEMM reads directly stays its plain prologue. The
    generated module gives the graph's reference result."""
    from fxforge.codegen import generate_module
    from fxforge.ir import DType, Graph, TensorType, evaluate, sym
    from fxforge.ir.evaluate import bind_symbols
    from fxforge.passes.fuse import fuse, partition

    torch.manual_seed(2)
    g = Graph()
    e = g.add_input("e", TensorType((1, sym("s0"), 32), DType.f32))

    def const(name, *shape):
        return g.add_op("const", [], {"weight": g.add_weight(name, torch.randn(*shape) * 0.2)}).result

    n1 = g.add_op("rms_norm", [e], {"eps": 1e-6}).result
    up = g.add_op("linear", [g.add_op("rms_norm", [n1], {"eps": 1e-6}).result, const("up", 48, 32)], {}).result
    down = g.add_op("linear", [g.add_op("relu", [up], {}).result, const("down", 32, 48)], {}).result
    g.set_outputs([g.add_op("add", [n1, down], {}).result])
    part = partition(g)
    first = next(grp for grp in part.groups if grp.kind == "gemm" and grp.params["post_norm"] is not None)
    assert [o.opcode for o in first.ops][:3] == ["rms_norm", "rms_norm", "linear"] and n1 in first.outputs
    assert first.params["post_norm"].add is None and not any(grp.kind == "row" for grp in part.groups)
    inputs = [torch.randn(1, 3, 32) * 3]
    mod = generate_module(fuse(g))
    assert "post_norm=(None, None, 1e-06)" in mod.source and "keep_z=True" in mod.source
    got = mod.run(inputs, bind_symbols([v.type for v in g.inputs], inputs, [v.name for v in g.inputs]))
    torch.testing.assert_close(got[0], evaluate(g, inputs)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("M", [1, 70])  # 70 rows: prefill (the norm by one row kernel first)
def test_qlinear_decode_weightless_norm_prologue(M):
    """The 4-bit decode GEMM's RMSNorm prologue without a weight (`norm=(None, eps)`: NanoChat's norms before its
    w4a16 QKV and fc1) against `qlinear_ref` on the op table's weightless rms_norm."""
    from fxforge.codegen.pool import Workspace
    from fxforge.codegen.templates.qlinear_decode import qlinear_w4_decode
    from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref
    from fxforge.ir.weight_layouts import to_decode_layout

    torch.manual_seed(M)
    N, K, group = 48, 192, 64
    w = encode_weight(torch.randn(N, K), "w4a16-int4", group=group)
    x = (torch.randn(M, K) * 3).half()
    y = qlinear_w4_decode(x, to_decode_layout(w), norm=(None, 1e-6), ws=Workspace())
    ref = qlinear_ref(_norm(x).float(), decode_weight(w), None, scheme="w4a16-int4", act_format=None, group=group,
                      lorc_rank=0)
    assert y.shape == (M, N) and (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()
