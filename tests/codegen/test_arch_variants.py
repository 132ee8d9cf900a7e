"""Recognised variants of the decoder-layer patterns of GQA architectures outside Llama/Qwen2 (issue #13 on a
hidden architecture; `benchmarks/arch_probe.py`), each against torch: the gated MLP epilogue with another
activation (Gemma's GeGLU: `gelu(gate, approximate="tanh") * up`) in the dense GEMM and the 4-bit decode GEMM,
rope_cache with per-head q/k RMSNorm before RoPE (Qwen3's q_norm / k_norm), and the `cat` fold that makes
Phi3's full-dim "partial" RoPE the plain one. Kernel-level and graph-level only (cheap); the architectures
themselves run in tests/runtime/test_arch_decode.py (slow)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fxforge.codegen.pool import Workspace
from fxforge.codegen.templates.gemm import linear
from fxforge.codegen.templates.qlinear_decode import qlinear_w4_decode
from fxforge.codegen.templates.rope_cache import rope_cache
from fxforge.errors import ShapeError
from fxforge.ir import DType, Graph, TensorType, evaluate, sym, verify
from fxforge.ir.ops import OPS
from fxforge.ir.optable import GATED_ACTIVATIONS
from fxforge.passes import PassContext
from fxforge.passes.canonicalize import Canonicalize

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
GATES = {"silu": F.silu, "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"), "gelu": F.gelu,
         "relu2": lambda h: torch.square(torch.relu(h))}


def test_every_gated_activation_has_a_torch_form():
    assert set(GATED_ACTIVATIONS) == set(GATES)


@pytest.mark.parametrize("gate,dtype", [("gelu_tanh", torch.float16), ("gelu", torch.float32), ("relu2", torch.float16)])
def test_gemm_gated_epilogue_other_activations(gate, dtype):
    torch.manual_seed(0)
    x, w = torch.randn(3, 96, dtype=dtype), (torch.randn(80, 96) / 10).to(dtype)  # [gate; up], N = 40 each
    g = (1 + torch.randn(96) / 4).to(dtype)
    h = F.linear(OPS["rms_norm"].ref(x, g, eps=1e-6), w).float()
    want = GATES[gate](h[..., :40]) * h[..., 40:]
    got = linear(x, w, norm=(g, 1e-6), swiglu=True, gate=gate)
    assert got.shape == (3, 40) and (got.float() - want).abs().max() <= TOL[dtype] * 4 * want.abs().max()
    silu = linear(x, w, norm=(g, 1e-6), swiglu=True)  # the default stays SwiGLU
    assert (silu.float() - F.silu(h[..., :40]) * h[..., 40:]).abs().max() <= TOL[dtype] * 4 * want.abs().max()
    with pytest.raises(ShapeError, match="gated activation"):
        linear(x, w, swiglu=True, gate="relu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gemm_gated_epilogue_with_biases(dtype):
    """act(x @ Wg^T + bg) * (x @ Wu^T + bu): a gated MLP with biases (Llama's mlp_bias), [bg; bu] as one bias."""
    torch.manual_seed(2)
    x, w, b = torch.randn(3, 96, dtype=dtype), (torch.randn(80, 96) / 10).to(dtype), torch.randn(80).to(dtype)
    h = F.linear(x.float(), w.float(), b.float())
    want = F.silu(h[..., :40]) * h[..., 40:]
    got = linear(x, w, b, swiglu=True)
    assert got.shape == (3, 40) and (got.float() - want).abs().max() <= TOL[dtype] * 4 * want.abs().max()


def test_biased_gate_up_pair_is_one_gated_gemm():
    """concat_linears stacks a biased gate/up pair (dense) and the fuse pass gives it the gated epilogue."""
    from fxforge.passes.concat_linears import ConcatLinears
    from fxforge.passes.fuse import partition

    g = Graph()
    x = g.add_input("x", TensorType((2, 16), DType.f32))
    params = {}
    for name, shape in (("wg", (24, 16)), ("bg", (24,)), ("wu", (24, 16)), ("bu", (24,))):
        g.add_weight(f"mlp.{name}", torch.randn(shape))
        params[name] = g.add_op("const", [], {"weight": f"mlp.{name}"}).result
    gate = g.add_op("linear", [x, params["wg"], params["bg"]], {}).result
    up = g.add_op("linear", [x, params["wu"], params["bu"]], {}).result
    g.set_outputs([g.add_op("mul", [g.add_op("silu", [gate], {}).result, up], {}).result])
    want = evaluate(g, [torch.randn(2, 16, generator=torch.Generator().manual_seed(0))])
    ConcatLinears().run(g, PassContext())
    verify(g)
    part = partition(g)
    assert [grp.kind for grp in part.groups] == ["gemm"] and part.groups[0].params["swiglu"]
    torch.testing.assert_close(evaluate(g, [torch.randn(2, 16, generator=torch.Generator().manual_seed(0))]), want)


def test_qlinear_decode_gated_epilogue_gelu_tanh():
    from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref
    from fxforge.ir.weight_layouts import to_decode_layout

    torch.manual_seed(1)
    N, K = 48, 128
    w = encode_weight(torch.randn(2 * N, K)[torch.stack([torch.arange(N), torch.arange(N, 2 * N)], 1).reshape(-1)],
                      "w4a16-int4", group=64)  # interleaved (gate, up) rows, as decode_layout stores them
    x = torch.randn(2, K).half()
    y = qlinear_w4_decode(x, to_decode_layout(w), swiglu=True, gate="gelu_tanh", ws=Workspace())
    h = qlinear_ref(x.float(), decode_weight(w), None, scheme="w4a16-int4", act_format=None, group=64, lorc_rank=0)
    ref = F.gelu(h[:, 0::2], approximate="tanh") * h[:, 1::2]
    assert y.shape == (2, N) and (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()


def _rot(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), -1)


@pytest.mark.parametrize("dtype,nope", [(torch.float16, False), (torch.float32, True)])
def test_rope_cache_per_head_qk_norm(dtype, nope):
    """q and k heads rms_norm'ed over head_dim with their own weights before RoPE, v as is (Qwen3); `nope`: no RoPE
    (Flint's full-attention layers: cos = sin = None, the norms and the cache writes only)."""
    torch.manual_seed(0)
    B, S, Hq, Hkv, D, L = 1, 2, 4, 2, 16, 6
    qkv = torch.randn(B, S, (Hq + 2 * Hkv) * D, dtype=dtype) * 3
    cos, sin = torch.randn(1, 1, S, D, dtype=dtype), torch.randn(1, 1, S, D, dtype=dtype)
    if nope:  # the identity rotation in the reference below
        cos, sin = None, None
    qn, kn = (1 + torch.randn(D) / 4).to(dtype), (1 + torch.randn(D) / 4).to(dtype)
    pos = torch.tensor([3, 1])
    kc, vc = torch.zeros(B, Hkv, L, D, dtype=dtype), torch.zeros(B, Hkv, L, D, dtype=dtype)
    q, _, _ = rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D, qk_norm=(qn, kn, 1e-6))
    heads = qkv.reshape(B, S, -1, D)
    xq = OPS["rms_norm"].ref(heads[:, :, :Hq], qn, eps=1e-6).transpose(1, 2).float()
    xk = OPS["rms_norm"].ref(heads[:, :, Hq:Hq + Hkv], kn, eps=1e-6).transpose(1, 2).float()
    c, s, tol = (1.0, 0.0, 1e-6) if nope else (cos.float(), sin.float(), TOL[dtype] * 8)
    torch.testing.assert_close(q.float(), xq * c + _rot(xq) * s, atol=tol, rtol=tol)
    torch.testing.assert_close(kc[:, :, pos].float(), xk * c + _rot(xk) * s, atol=tol, rtol=tol)
    assert torch.equal(vc[:, :, pos], heads[:, :, Hq + Hkv:].transpose(1, 2))  # v: not normed
    with pytest.raises(ShapeError, match="qk_norm"):
        rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D, qk_norm=(qn[:8], kn, 1e-6))


def test_rope_cache_partial_rotary():
    """rotary_dim R < D (StableLM's partial_rotary_factor): channels [0, R) rotated with R-channel cos/sin, the rest
    copied, as cat(rope(x[..., :R]), x[..., R:])."""
    torch.manual_seed(0)
    B, S, Hq, Hkv, D, R, L = 1, 2, 4, 2, 16, 4, 6
    qkv = torch.randn(B, S, (Hq + 2 * Hkv) * D)
    cos, sin = torch.randn(1, 1, S, R), torch.randn(1, 1, S, R)
    kc, vc, pos = torch.zeros(B, Hkv, L, D), torch.zeros(B, Hkv, L, D), torch.tensor([0, 5])
    q, _, _ = rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D, rotary_dim=R)
    x = qkv.reshape(B, S, -1, D).transpose(1, 2)

    def rope(h):
        return torch.cat([h[..., :R] * cos + _rot(h[..., :R]) * sin, h[..., R:]], -1)

    torch.testing.assert_close(q, rope(x[:, :Hq]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kc[:, :, pos], rope(x[:, Hq:Hq + Hkv]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ShapeError, match="rotary_dim"):
        rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D, rotary_dim=5)


def _rot_pairs(x):
    """Interleaved rotate (GLM, Helium, Cohere): stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)


@pytest.mark.parametrize("dtype,rotary,pairs,fp32", [(torch.float16, 8, True, False), (torch.float32, 16, False, False),
                                                     (torch.float16, 16, True, True)])
def test_rope_cache_interleaved_and_row_qk_norm(dtype, rotary, pairs, fp32):
    """Interleaved pairs (2i, 2i + 1), partial (GLM: R = D/2, cos/sin of one entry per pair, repeat_interleave'd by
    the model) or full with interleaved tables (Cohere); q and k rms_norm'ed over all their heads at once (OLMo2's
    q_norm / k_norm over the projection, weights [H * D]; `fp32`: weighted in fp32, one rounding) before RoPE, v as is."""
    torch.manual_seed(0)
    B, S, Hq, Hkv, D, L, eps = 1, 2, 4, 2, 16, 6, 1e-6
    qkv = torch.randn(B, S, (Hq + 2 * Hkv) * D, dtype=dtype) * 3
    tables = [torch.randn(1, 1, S, rotary // 2 if pairs else rotary, dtype=dtype) for _ in range(2)]
    qn, kn = (1 + torch.randn(Hq * D) / 4).to(dtype), (1 + torch.randn(Hkv * D) / 4).to(dtype)
    pos = torch.tensor([3, 1])
    kc, vc = torch.zeros(B, Hkv, L, D, dtype=dtype), torch.zeros(B, Hkv, L, D, dtype=dtype)
    q, _, _ = rope_cache(qkv, *tables, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D, qk_norm=(qn, kn, eps),
                         rotary_dim=rotary, interleaved=True, pair_tables=pairs, norm_fp32=fp32)
    c, s = (t.float().repeat_interleave(2, -1) if pairs else t.float() for t in tables)

    def norm(x, w, eps):
        return (OPS["rms_norm"].ref(x.float(), w, eps=eps)).to(dtype) if fp32 else OPS["rms_norm"].ref(x, w, eps=eps)
    xq = norm(qkv[..., :Hq * D], qn, eps=eps).reshape(B, S, Hq, D).transpose(1, 2).float()
    xk = norm(qkv[..., Hq * D:(Hq + Hkv) * D], kn, eps=eps).reshape(B, S, Hkv, D).transpose(1, 2).float()

    def rope(h):
        return torch.cat([h[..., :rotary] * c + _rot_pairs(h[..., :rotary]) * s, h[..., rotary:]], -1)

    tol = TOL[dtype] * 8
    torch.testing.assert_close(q.float(), rope(xq), atol=tol, rtol=tol)
    torch.testing.assert_close(kc[:, :, pos].float(), rope(xk), atol=tol, rtol=tol)
    assert torch.equal(vc[:, :, pos], qkv.reshape(B, S, -1, D)[:, :, Hq + Hkv:].transpose(1, 2))  # v: not normed
    # the norm's roundings are the graph's: bit for bit but for rare reduction-order ties (the other rounding: ~70%)
    assert dtype == torch.float32 or (q == rope(xq).to(dtype)).float().mean() >= 0.95


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_cache_norm_after_rope_and_q_scale(dtype):
    """HunYuan's per-head q/k RMSNorm after RoPE (`norm_after`) and Ministral3's per-token q scale after it
    (`q_scale` [1, 1, S, 1]): q = rms_norm(rope(x_q)) * scale, the k cache rms_norm(rope(x_k)), v as is; with the
    graph's roundings in fp16 (rope rounded, then the norm's two, then the mul's)."""
    torch.manual_seed(0)
    B, S, Hq, Hkv, D, L, eps = 1, 2, 4, 2, 16, 6, 1e-6
    qkv = torch.randn(B, S, (Hq + 2 * Hkv) * D, dtype=dtype) * 3
    cos, sin = (torch.randn(1, 1, S, D, dtype=dtype) for _ in range(2))
    qn, kn = ((1 + torch.randn(D) / 4).to(dtype) for _ in range(2))
    scale = (1 + torch.rand(1, 1, S, 1)).to(dtype)
    pos = torch.tensor([3, 1])
    kc, vc = torch.zeros(B, Hkv, L, D, dtype=dtype), torch.zeros(B, Hkv, L, D, dtype=dtype)
    q, _, _ = rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D, qk_norm=(qn, kn, eps),
                         norm_after=True, q_scale=scale)
    x = qkv.reshape(B, S, -1, D).transpose(1, 2)

    def rope_norm(h, w):  # RoPE in fp32, one rounding (the fused kernels' convention), then the norm's steps
        h, c, s = h.float(), cos.float(), sin.float()
        return OPS["rms_norm"].ref((h * c + _rot(h) * s).to(dtype), w, eps=eps)

    want_q = (rope_norm(x[:, :Hq], qn).float() * scale.float()).to(dtype)
    tol = TOL[dtype] * 8
    torch.testing.assert_close(q.float(), want_q.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(kc[:, :, pos].float(), rope_norm(x[:, Hq:Hq + Hkv], kn).float(), atol=tol, rtol=tol)
    assert torch.equal(vc[:, :, pos], x[:, Hq + Hkv:])
    assert dtype == torch.float32 or (q == want_q).float().mean() >= 0.95
    with pytest.raises(ShapeError, match="norm_after"):
        rope_cache(qkv, cos, sin, pos, kc, vc, q_heads=Hq, kv_heads=Hkv, head_dim=D, norm_after=True)


class _InterleavedAttention(torch.nn.Module):
    """After one [q; k; v] linear, as HF writes them: `glm`: OLMo2's q/k RMSNorm over the whole projection, the head
    views, GLM's interleaved partial RoPE (R = D/2, cos/sin of R channels, their first R/2 repeat_interleave'd);
    `cohere`: no norm, interleaved RoPE over all D channels with interleaved tables, in fp32 between casts (an fp16
    model); `ernie`: ERNIE 4.5's, over all D channels with GLM's repeated tables, fp32 between casts but the pairs
    rotated in fp16 (`q.float() * cos + rotate(q).float() * sin`)."""

    def __init__(self, form: str, hq: int = 4, hkv: int = 2, d: int = 16) -> None:
        super().__init__()
        self.heads, self.d, self.form = (hq, hkv, hkv), d, form
        self.qkv = torch.nn.Linear(32, (hq + 2 * hkv) * d, bias=False)
        self.qn, self.kn = (torch.nn.Parameter(1 + torch.randn(h * d) / 4) for h in (hq, hkv))
        self.register_buffer("cos_t", torch.randn(8, d // 2 if form == "glm" else d))
        self.register_buffer("sin_t", torch.randn(8, d // 2 if form == "glm" else d))

    def forward(self, x, pos):
        def norm(t, w):
            return w * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)) if self.form == "glm" else t

        def rotate(t):
            return torch.stack((-t[..., 1::2], t[..., ::2]), -1).flatten(-2)

        def rope(t):
            if self.form != "glm":  # fp32 between casts, all channels
                f = t.float()
                return (f * cos + (rotate(f) if self.form == "cohere" else rotate(t).float()) * sin).to(t.dtype)
            rot, r = t[..., :cos.shape[-1]], cos.shape[-1]
            return torch.cat([rot * cos + rotate(rot) * sin, t[..., r:]], -1)

        q, k, v = self.qkv(x).split([h * self.d for h in self.heads], -1)
        q, k, v = (t.view(*x.shape[:2], -1, self.d).transpose(1, 2) for t in (norm(q, self.qn), norm(k, self.kn), v))
        cos, sin = (t[pos][None, None] for t in (self.cos_t, self.sin_t))
        if self.form != "cohere":
            cos, sin = (t[..., :t.shape[-1] // 2].repeat_interleave(2, -1) for t in (cos, sin))
        return rope(q), rope(k), v


@pytest.mark.parametrize("form", ["glm", "cohere", "ernie"])
def test_interleaved_rope_lowers_and_forms_a_rope_cache_site(form):
    """aten.stack / repeat_interleave lower to views + cat (no extern, torch's bits); with cache writes after it the
    graph is one rope_cache site: interleaved, tables read before their repeat (the group does not read the repeated
    copy), the row norm's weights [H * D]; Cohere's fp32 RoPE between casts; ERNIE's pairs rotated in fp16 and cast
    (the cast moves to the rotation's source: `cast_rules`). Swapping the pair order is not RoPE."""
    from rope_graphs import rope_site_graph

    from fxforge.passes.fuse import partition
    from fxforge.passes.rope_sites import rope_sites

    torch.manual_seed(0)
    dtype = torch.float32 if form == "glm" else torch.float16
    m, x, pos = _InterleavedAttention(form).to(dtype).eval(), torch.randn(1, 3, 32, dtype=dtype), torch.tensor([0, 1, 2])
    g, site = rope_site_graph(m, x, pos)
    assert "extern" not in g.op_counts()
    d, tables = {"glm": (8, 4), "cohere": (16, 16), "ernie": (16, 8)}[form]
    assert (site.rotary_dim, site.interleaved, site.pair_tables) == (d, True, form != "cohere")
    assert (site.qk_norm is None) if form != "glm" else [tuple(w.type.shape) for w in site.qk_norm[:2]] == [(64,), (32,)]
    (group,) = [grp for grp in partition(g).groups if grp.kind == "rope_cache"]
    assert group.inputs == site.reads and site.cos.type.shape[-1] == tables
    cat = next(op for op in g.ops if op.opcode == "cat" and op.result.type.rank == 5)
    a, b = cat.operands
    g.set_operand(cat, 0, b)
    g.set_operand(cat, 1, a)
    assert rope_sites(g) == []


def test_cat_drops_empty_operands():
    """cat(rope, x[..., D:]) with the pass-through part empty (Phi3 at partial_rotary_factor 1) is rope itself."""
    g = Graph()
    x = g.add_input("x", TensorType((2, sym("s0"), 16), DType.f32))
    y = g.add_op("neg", [x], {}).result
    empty = g.add_op("slice", [x], {"dim": 2, "start": 16, "end": 16, "step": 1}).result
    both = g.add_op("cat", [y, empty], {"dim": 2}).result
    three = g.add_op("cat", [y, empty, x], {"dim": -1}).result
    g.outputs = [both, three]
    inputs = [torch.randn(2, 3, 16)]
    want = evaluate(g, inputs)
    ctx = PassContext()
    Canonicalize().run(g, ctx)
    verify(g)
    assert ctx.stats["rewrites"]["cat_drop_empty"] == 2
    assert g.outputs[0] is y and len(g.outputs[1].producer.operands) == 2
    for a, b in zip(evaluate(g, inputs), want, strict=True):
        assert torch.equal(a, b)


def test_index_unsqueeze_sinks_to_the_leaves():
    """HF's decode mask: le(kv_idx, unsqueeze(arange(s0) + start)); the unsqueeze moves onto arange, so add and le
    form one pointwise tree (one mask kernel per step instead of two); float or 2-D operands are left alone."""
    g = Graph()
    s0 = sym("s0")
    pos = g.add_input("pos", TensorType((s0,), DType.i64))
    start = g.add_op("reshape", [g.add_op("slice", [pos], {"dim": 0, "start": 0, "end": 1, "step": 1}).result],
                     {"shape": []}).result
    idx = g.add_op("add", [g.add_op("arange", [], {"end": s0}).result, start], {}).result
    col = g.add_op("reshape", [idx], {"shape": [1, 1, s0, 1]}).result
    kv = g.add_op("const", [], {"weight": g.add_weight("kv", torch.arange(8).reshape(1, 1, 1, 8))}).result
    xf = g.add_input("xf", TensorType((s0,), DType.f32))
    other = g.add_op("reshape", [g.add_op("neg", [xf], {}).result], {"shape": [1, s0]}).result
    g.outputs = [g.add_op("le", [kv, col], {}).result, other]
    inputs = [torch.tensor([3, 4, 5]), torch.randn(3)]
    want = evaluate(g, inputs)
    ctx = PassContext()
    Canonicalize().run(g, ctx)
    verify(g)
    assert ctx.stats["rewrites"]["sink_index_unsqueeze"] == 1
    add = g.outputs[0].producer.operands[1].producer
    assert add.opcode == "add" and add.operands[0].producer.opcode == "reshape"
    assert g.outputs[1].producer.opcode == "reshape"  # float arithmetic keeps its reshape
    for a, b in zip(evaluate(g, inputs), want, strict=True):
        assert torch.equal(a, b)


def test_square_lowers_to_mul():
    """aten.square (Arcee's ReLU^2 MLP) is x * x in the IR, not an extern, and gives torch's bits."""
    from fxforge.frontend.export import capture_export

    class Relu2(torch.nn.Module):
        def forward(self, x):
            return torch.square(torch.relu(x))

    x = torch.randn(3, 8)
    lowered = capture_export(Relu2(), (x,)).lowered
    assert lowered.externs == {} and "mul" in lowered.graph.op_counts()
    assert torch.equal(evaluate(lowered.graph, [x])[0], torch.square(torch.relu(x)))


@pytest.mark.parametrize("dtype,bias", [(torch.float16, True), (torch.float32, False)])
def test_gemm_layer_norm_prologue(dtype, bias):
    """layer_norm(x, w[, b]) computed in the GEMM's load (StableLM, Starcoder2, Cohere blocks), an offset mean too."""
    torch.manual_seed(0)
    x = (torch.randn(3, 96) + 3).to(dtype)  # K = 96: a partial last K tile
    w, g = (torch.randn(40, 96) / 10).to(dtype), (1 + torch.randn(96) / 4).to(dtype)
    nb = (torch.randn(96) / 4).to(dtype) if bias else None
    want = F.linear(F.layer_norm(x.float(), (96,), g.float(), nb.float() if bias else None, 1e-5).to(dtype).float(),
                    w.float())
    got = linear(x, w, layer_norm=(g, nb, 1e-5))
    assert got.shape == (3, 40) and (got.float() - want).abs().max() <= TOL[dtype] * 4 * want.abs().max()
    with pytest.raises(ShapeError, match="one norm prologue"):
        linear(x, w, norm=(g, 1e-6), layer_norm=(g, nb, 1e-5))


class _WideHeads(torch.nn.Module):
    """Attention over 512-wide heads (Gemma 4's global layers) beside a picked column (Falcon's qkv[..., [-2]])."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True), k[..., [-2], :] * 2


def test_wide_heads_run_on_the_host_and_negative_indices_wrap():
    """Heads wider than the attention templates take run on the host (torch), the reason recorded, instead of failing
    at run time; a negative index of aten.index counts from the end as in torch (index_select refuses negatives)."""
    import fxforge

    q, k, v = (torch.randn(1, 2, 5, 512, generator=torch.Generator().manual_seed(i)) for i in range(3))
    mod = fxforge.compile_aot(_WideHeads(), (q, k, v), executor="interpret", dynamic=False)
    host = mod.graph.partition.host_ops
    assert any("head dim 512" in reason for reason in host.values()), host
    for got, want in zip(mod(q, k, v), _WideHeads()(q, k, v), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


class _PhiBlock(torch.nn.Module):
    """Phi's parallel block: attention and MLP read one norm, summed with the residual as (attn + mlp) + x; the MLP's
    activation HF's NewGELUActivation written out, the norm Gemma 4's pow(v, -0.5) form."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.activations import NewGELUActivation

        self.attn, self.fc1, self.fc2, self.act = (torch.nn.Linear(32, 32), torch.nn.Linear(32, 64),
                                                   torch.nn.Linear(64, 32), NewGELUActivation())

    def forward(self, x):
        h = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + 1e-6, -0.5)
        return self.attn(h) + self.fc2(self.act(self.fc1(h))) + x


def test_parallel_block_new_gelu_and_pow_norm_fuse():
    """(attn + mlp) + x becomes mlp + (attn + x), one add per GEMM epilogue; NewGELU is gelu_tanh in fc1's epilogue;
    pow(v, -0.5) is rsqrt, so the norm is rms_norm, the GEMMs' prologue: three kernels, torch's numbers."""
    import fxforge

    torch.manual_seed(0)
    model, x = _PhiBlock().eval(), torch.randn(1, 3, 32)
    mod = fxforge.compile_aot(model, (x,), executor="interpret", dynamic=False)
    counts = mod.graph.op_counts()  # (the norm is each prologue's own copy)
    assert counts.get("gelu") == 1 and "rms_norm" in counts and not {"pow", "rsqrt", "tanh"} & set(counts), counts
    groups = mod.graph.partition.groups
    assert [g.kind for g in groups] == ["gemm"] * 3 and sum(g.ops[-1].opcode == "add" for g in groups) == 2
    torch.testing.assert_close(mod(x), model(x), atol=1e-5, rtol=1e-5)
