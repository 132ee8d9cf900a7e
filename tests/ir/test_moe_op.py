"""The `moe` op (`fxforge.ir.moe_ops`): its reference `_moe` against a per-token loop written here (softmax or
sigmoid router, a choice bias, top-k, each chosen expert's gated MLP, the shared experts with or without their
gate, the weighted sum) for every weight layout, bias, activation, norm and residual flag, fp32 and bf16; ties
choose the lowest expert index; properties (k = E is the softmax-weighted mixture of all experts, renumbering the
experts changes nothing); shape errors; the text form round trip."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxforge.ir import DType, Graph, ShapeError, TensorType, evaluate, print_graph, sym
from fxforge.ir.moe_ops import _moe
from fxforge.ir.parser import parse_graph

H, N_I = 16, 12  # hidden, expert intermediate
DEFAULTS = dict(k=2, renorm=False, norm="none", eps=1e-6, router_bias=False, expert_bias=False, residual=False,
                act="silu", gate_up="concat", transposed=False, limit=7.0, alpha=1.702, score="softmax",
                choice_bias=False, renorm_eps=0.0, renorm_min=0.0, scale=1.0, shared=0, shared_gate=False, groups=1,
                top_groups=1, group_fill=float("-inf"))


def attrs_of(**flags) -> dict:
    return {**DEFAULTS, **flags}


def make(attrs: dict, dtype=torch.float32, T: int = 4, E: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """{role: tensor} for the flags, weights scaled so the gate/up values are O(1) (GPT-OSS's clamp at 0.8 bites)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    es = E + attrs["shared"]  # routed experts, then the shared ones
    gu, d = ((es, H, 2 * N_I), (es, N_I, H)) if attrs["transposed"] else ((es, 2 * N_I, H), (es, H, N_I))
    ops = dict(x=r(T, H), norm_w=1 + r(H, scale=0.2), router_w=r(E, H, scale=0.5), router_b=r(E),
               router_cb=r(E, scale=0.3), shared_gate_w=r(1, H, scale=0.5),
               w_gate_up=r(*gu, scale=0.3), b_gate_up=r(es, 2 * N_I, scale=0.5), w_down=r(*d, scale=0.3),
               b_down=r(es, H, scale=0.5), residual=r(T, H))
    return ops


def roles(attrs: dict) -> list[str]:
    """The op's operand roles in the documented order, those the flags leave out absent."""
    present = [("x", True), ("norm_w", attrs["norm"] != "none"), ("router_w", True), ("router_b", attrs["router_bias"]),
               ("router_cb", attrs["choice_bias"]), ("shared_gate_w", attrs["shared_gate"]), ("w_gate_up", True),
               ("b_gate_up", attrs["expert_bias"]), ("w_down", True), ("b_down", attrs["expert_bias"]),
               ("residual", attrs["residual"])]
    return [name for name, on in present if on]


def operands(ops: dict, attrs: dict) -> list:
    return [ops[name] for name in roles(attrs)]


def _gated(g: float, u: float, attrs: dict) -> float:
    act, limit, alpha = attrs["act"], attrs["limit"], attrs["alpha"]
    if act == "silu":
        return g / (1 + math.exp(-g)) * u
    if act == "gelu_tanh":
        return 0.5 * g * (1 + math.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3))) * u
    g, u = min(g, limit), max(-limit, min(u, limit))
    return g / (1 + math.exp(-alpha * g)) * (u + 1)


def loop_ref(ops: dict, attrs: dict) -> torch.Tensor:
    """One token at a time in float64 (the experts' inputs and activations rounded to x's dtype, as the op says)."""
    x, dt, k = ops["x"], ops["x"].dtype, attrs["k"]
    E = ops["router_w"].shape[0]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        xt = x[t].double()
        if attrs["norm"] == "rms":
            xt = (ops["norm_w"].double() * xt / math.sqrt(float((xt * xt).mean()) + attrs["eps"])).to(dt).double()
        elif attrs["norm"] == "layer":  # (no bias: Cohere's)
            d = xt - xt.mean()
            xt = (ops["norm_w"].double() * d / math.sqrt(float((d * d).mean()) + attrs["eps"])).to(dt).double()
        logits = [float(ops["router_w"][e].double() @ xt) + (float(ops["router_b"][e]) if attrs["router_bias"] else 0)
                  for e in range(E)]
        z = [math.exp(v - max(logits)) for v in logits]
        p = [v / sum(z) for v in z] if attrs["score"] == "softmax" else [1 / (1 + math.exp(-v)) for v in logits]
        c = [p[e] + (float(ops["router_cb"][e]) if attrs["choice_bias"] else 0) for e in range(E)]
        if attrs["groups"] > 1:  # keep the top_groups groups of the best top-2 sums (lowest group first on ties)
            size = E // attrs["groups"]
            best = [sum(sorted(c[g * size:(g + 1) * size])[-2:]) for g in range(attrs["groups"])]
            kept = sorted(range(attrs["groups"]), key=lambda g: (-best[g], g))[:attrs["top_groups"]]
            c = [v if e // size in kept else attrs["group_fill"] for e, v in enumerate(c)]
        chosen = sorted(range(E), key=lambda e: (-c[e], e))[:k]
        total = max(sum(p[e] for e in chosen) + attrs["renorm_eps"], attrs["renorm_min"]) if attrs["renorm"] else 1.0
        weight = {e: p[e] / total * attrs["scale"] for e in chosen}
        gate = 1 / (1 + math.exp(-float(ops["shared_gate_w"][0].double() @ xt))) if attrs["shared_gate"] else 1.0
        weight.update({E + s: gate for s in range(attrs["shared"])})
        for e, w in weight.items():
            wgu, wd = ops["w_gate_up"][e].double(), ops["w_down"][e].double()
            if attrs["transposed"]:
                wgu, wd = wgu.T, wd.T
            h = wgu @ xt + (ops["b_gate_up"][e].double() if attrs["expert_bias"] else 0)
            g, u = (h[0::2], h[1::2]) if attrs["gate_up"] == "interleaved" else (h[:N_I], h[N_I:])
            a = torch.tensor([_gated(float(gi), float(ui), attrs) for gi, ui in zip(g, u)], dtype=torch.float64)
            a = a.to(dt).double()
            y = wd @ a + (ops["b_down"][e].double() if attrs["expert_bias"] else 0)
            out[t] += w * y
        if attrs["residual"]:
            out[t] += ops["residual"][t].double()
    return out.to(dt)


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = 1e-5 if got.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol * want.float().abs().max().item(), rtol=tol)


CASES = {
    "mixtral": dict(renorm=True, norm="rms", eps=1e-5, residual=True),
    "no_renorm": dict(renorm=False),
    "gelu_interleaved_router_bias": dict(act="gelu_tanh", gate_up="interleaved", router_bias=True, renorm=True),
    "gpt_oss": dict(act="gpt_oss", gate_up="interleaved", transposed=True, router_bias=True, expert_bias=True,
                    renorm=True, norm="rms", eps=1e-5, residual=True, limit=0.8, alpha=1.5),
    "transposed_concat_biases": dict(transposed=True, expert_bias=True),
    "gelu_transposed_k1": dict(k=1, act="gelu_tanh", transposed=True, norm="rms"),
    "gpt_oss_concat_all_experts": dict(k=5, act="gpt_oss", limit=0.8, residual=True),
    # DeepSeek-V3 / GLM-4.5 / dots.llm1: sigmoid scores, a choice bias, renormalised (+ 1e-20), scaled, a shared expert
    "sigmoid_choice_bias_shared": dict(score="sigmoid", choice_bias=True, renorm=True, renorm_eps=1e-20, scale=2.5,
                                       shared=1, norm="rms", residual=True),
    "qwen2_moe_gated_shared": dict(shared=2, shared_gate=True, norm="rms"),  # a shared MLP of 2 experts' width
    "ernie_softmax_choice_bias_clamp": dict(choice_bias=True, renorm=True, renorm_min=0.9, shared=1),  # clamp bites
    "cohere2_layer_norm": dict(renorm=True, norm="layer", eps=1e-5, residual=True),  # a LayerNorm before the router
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CASES)
def test_reference_matches_a_per_token_loop(case, dtype):
    attrs = attrs_of(**CASES[case])
    ops = make(attrs, dtype)
    close(_moe(*operands(ops, attrs), **attrs), loop_ref(ops, attrs))


def test_gpt_oss_clamp_and_alpha_matter():
    """The cases above reach the clamp: the same op with a larger limit or another alpha gives other numbers."""
    attrs = attrs_of(**CASES["gpt_oss"])
    xs = operands(make(attrs), attrs)
    y = _moe(*xs, **attrs)
    assert not torch.allclose(y, _moe(*xs, **{**attrs, "limit": 100.0}), atol=1e-3)
    assert not torch.allclose(y, _moe(*xs, **{**attrs, "alpha": 1.0}), atol=1e-3)


def test_ties_choose_the_lowest_expert_index():
    """p = [.1, .3, .3, .3] (a zero router, a bias of log [1, 3, 3, 3]): k=2 takes experts 1 and 2, as the kernel."""
    attrs = attrs_of(router_bias=True, k=2)
    ops = make(attrs, E=4)
    ops["router_w"] = torch.zeros(4, H)
    ops["router_b"] = torch.tensor([1.0, 3.0, 3.0, 3.0]).log()
    got = _moe(*operands(ops, attrs), **attrs)
    close(got, loop_ref(ops, attrs))
    one = {**attrs, "k": 1}  # a router bias that picks expert e alone, with weight 1
    only = {e: _moe(*operands({**ops, "router_b": torch.eye(4)[e] * 50}, one), **one) for e in range(4)}
    torch.testing.assert_close(got, 0.3 * (only[1] + only[2]), atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None, database=None)
@given(seed=st.integers(0, 2**16), E=st.integers(1, 6), T=st.integers(1, 3), renorm=st.booleans(),
       act=st.sampled_from(["silu", "gelu_tanh", "gpt_oss"]), layout=st.sampled_from(["concat", "interleaved"]),
       transposed=st.booleans(), bias=st.booleans())
def test_all_experts_is_the_softmax_mixture(seed, E, T, renorm, act, layout, transposed, bias):
    """k = E, renormalised or not: sum over every expert e of softmax(router)[e] * expert_e(x), computed densely."""
    attrs = attrs_of(k=E, renorm=renorm, act=act, gate_up=layout, transposed=transposed, expert_bias=bias,
                     router_bias=bias, limit=0.8)
    ops = make(attrs, T=T, E=E, seed=seed)
    x = ops["x"]
    p = torch.softmax(x @ ops["router_w"].T + (ops["router_b"] if bias else 0), -1)  # [T, E]
    wgu, wd = ops["w_gate_up"], ops["w_down"]
    if not transposed:
        wgu, wd = wgu.transpose(1, 2), wd.transpose(1, 2)
    h = torch.einsum("th,ehn->ten", x, wgu) + (ops["b_gate_up"] if bias else 0)  # [T, E, 2I]
    g, u = (h[..., 0::2], h[..., 1::2]) if layout == "interleaved" else h.split(N_I, -1)
    a = torch.tensor([[[_gated(float(gi), float(ui), attrs) for gi, ui in zip(ge, ue)] for ge, ue in zip(gt, ut)]
                      for gt, ut in zip(g, u)])
    y = torch.einsum("tei,eih->teh", a, wd) + (ops["b_down"] if bias else 0)
    want = (p[..., None] * y).sum(1)
    torch.testing.assert_close(_moe(*operands(ops, attrs), **attrs), want, atol=1e-5, rtol=1e-4)


@settings(max_examples=15, deadline=None, database=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 5), norm=st.sampled_from(["none", "rms"]), renorm=st.booleans())
def test_renumbering_the_experts_changes_nothing(seed, k, norm, renorm):
    attrs = attrs_of(k=k, norm=norm, renorm=renorm, router_bias=True, expert_bias=True, act="gpt_oss", limit=0.8)
    ops = make(attrs, E=5, seed=seed)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
    experts = ("router_w", "router_b", "w_gate_up", "b_gate_up", "w_down", "b_down")
    shuffled = {**ops, **{r: ops[r][perm] for r in experts}}
    torch.testing.assert_close(_moe(*operands(shuffled, attrs), **attrs), _moe(*operands(ops, attrs), **attrs),
                               atol=1e-5, rtol=1e-5)


# -- the op in a graph: types, shape errors, text form ------------------------------------------------------------

S = sym("s0")


def graph_of(attrs: dict, dtype: DType = DType.f32, shapes: dict | None = None) -> tuple[Graph, dict]:
    """(x [, residual] -> moe(x, consts...), the operands' tensors); `shapes`: operands made zeros of other shapes."""
    g = Graph()
    ops = {**make(attrs, dtype.torch), **{r: torch.zeros(s, dtype=dtype.torch) for r, s in (shapes or {}).items()}}
    vals = {}
    for role in roles(attrs):
        if role in ("x", "residual"):
            vals[role] = g.add_input(role, TensorType((S, H), dtype))
        else:
            g.add_weight(role, ops[role])
            vals[role] = g.add_op("const", [], {"weight": role}).result
    g.set_outputs([g.add_op("moe", operands(vals, attrs), attrs).result])
    return g, ops


@pytest.mark.parametrize("case", ["mixtral", "gpt_oss", "no_renorm"])
def test_text_form_round_trip_and_evaluation(case):
    attrs = attrs_of(**CASES[case])
    g, ops = graph_of(attrs, DType.bf16)
    text = print_graph(g)
    assert "moe(%x, %0, %1, %2" in text and f"k={attrs['k']}" in text  # attrs at their defaults are left out
    g2 = parse_graph(text)
    assert print_graph(g2) == text
    (op,) = g2.find("moe")
    assert op.attrs == attrs and op.result.type == TensorType((S, H), DType.bf16)
    g3 = parse_graph(text, {n: w.data for n, w in g.weights.items()})
    got = evaluate(g3, [ops["x"], ops["residual"]] if attrs["residual"] else [ops["x"]])[0]
    assert torch.equal(got, _moe(*operands(ops, attrs), **attrs))


@pytest.mark.parametrize("k", [0, 6, 1.5])
def test_bad_k_is_a_shape_error(k):
    with pytest.raises(ShapeError, match=r"moe: k=.* must be an int in 1\.\.5"):
        graph_of(attrs_of(k=k))


def test_operand_count_must_match_the_flags():
    g = Graph()
    x = g.add_input("x", TensorType((S, H), DType.f32))
    shapes = (("wr", (5, H)), ("wgu", (5, 2 * N_I, H)), ("wd", (5, H, N_I)))
    w = [g.add_input(n, TensorType(s, DType.f32)) for n, s in shapes]
    with pytest.raises(ShapeError, match=r"moe: 4 operands, the flags ask for 6 \(x, router_w, w_gate_up, b_gate_up, "
                                         r"w_down, b_down\)"):
        g.add_op("moe", [x, *w], attrs_of(expert_bias=True))
    with pytest.raises(ShapeError, match=r"moe: 4 operands, the flags ask for 5 \(x, norm_w,"):
        g.add_op("moe", [x, *w], attrs_of(norm="rms"))
    assert g.add_op("moe", [x, *w], attrs_of()).result.type == TensorType((S, H), DType.f32)


@pytest.mark.parametrize("role,shape", [("x", (2, 3, H)), ("router_w", (5,)), ("w_gate_up", (5, 2 * N_I)),
                                        ("w_down", (5, H, N_I, 1))])
def test_wrong_ranks_are_shape_errors(role, shape):
    g = Graph()
    xs = [g.add_input(r, TensorType(shape if r == role else s, DType.f32))
          for r, s in (("x", (S, H)), ("router_w", (5, H)), ("w_gate_up", (5, 2 * N_I, H)), ("w_down", (5, H, N_I)))]
    with pytest.raises(ShapeError, match=r"moe: x \[T, H\], router \[E, H\], gate/up \[E, 2I, H\], down \[E, H, I\]; "):
        g.add_op("moe", xs, attrs_of())


def test_unknown_act_or_layout_is_a_shape_error():
    for bad in (dict(act="relu"), dict(gate_up="split")):
        with pytest.raises(ShapeError, match="not among"):
            graph_of(attrs_of(**bad))


@pytest.mark.parametrize("role,shape", [("router_w", (5, H + 1)), ("w_gate_up", (4, 2 * N_I, H)),
                                        ("w_gate_up", (5, 2 * N_I + 1, H)), ("w_down", (5, H, N_I + 1)),
                                        ("b_down", (5, H + 1)), ("norm_w", (H + 1,))])
def test_sizes_that_disagree_are_shape_errors(role, shape):
    with pytest.raises(ShapeError, match="moe:"):
        graph_of(attrs_of(expert_bias=True, norm="rms"), shapes={role: shape})


@pytest.mark.parametrize("fill", [float("-inf"), 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_group_limited_routing_matches_the_loop(dtype, fill):
    """DeepSeek-V3's routing: 8 experts in 4 groups, the experts of the best 2 groups (by their top-2 sums) only;
    the groups matter (without them other experts are chosen)."""
    attrs = attrs_of(score="sigmoid", choice_bias=True, renorm=True, scale=2.5, k=3, groups=4, top_groups=2,
                     group_fill=fill, shared=1, norm="rms")
    ops = make(attrs, dtype, T=6, E=8)
    got = _moe(*operands(ops, attrs), **attrs)
    close(got, loop_ref(ops, attrs))
    assert not torch.allclose(got.float(), _moe(*operands(ops, attrs), **{**attrs, "groups": 1}).float())


def test_a_top_k_past_the_kept_groups_is_a_shape_error():
    g = Graph()
    x = g.add_input("x", TensorType((4, H), DType.f32))
    shapes = (("r", (8, H)), ("gu", (8, 2 * N_I, H)), ("d", (8, H, N_I)))
    ws = [g.add_input(n, TensorType(s, DType.f32)) for n, s in shapes]
    with pytest.raises(ShapeError, match="more than the 4 experts"):
        g.add_op("moe", [x, *ws], dict(attrs_of(k=5, groups=4, top_groups=2)))
