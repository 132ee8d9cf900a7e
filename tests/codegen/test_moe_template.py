"""The MoE template (`codegen/templates/moe.py`) under Triton's interpreter against the `moe` op's reference
(`ir/moe_ops._moe`), in two launches, for each routing / layout / activation variant; and a real MoE decoder
(Mixtral, GPT-OSS, GLM-4.5, Qwen2-MoE: 1 layer) decoding eager's tokens through `executor="interpret"` with the
op's two kernels."""

from __future__ import annotations

import pytest
import torch

from fxforge.codegen.templates.moe import moe, moe_blocks
from fxforge.codegen.templates.moe_grouped import expert_tiles
from fxforge.ir.graph import Weight
from fxforge.ir.lowp_ops import decode_weight
from fxforge.ir.moe_ops import ROLES, _moe, operand_roles
from fxforge.passes.moe_quant import encode_experts
from fxforge.runtime.interpreter import interpreter_scope
from fxforge.testing import counting_launches

VARIANTS = {  # name: op attributes besides k
    "mixtral": dict(renorm=True, norm="rms", eps=1e-5),
    "olmoe": dict(norm="rms", eps=1e-5, residual=True),
    "unnormed": dict(renorm=True, act="gelu_tanh"),
    "gpt_oss": dict(renorm=True, norm="rms", eps=1e-5, router_bias=True, expert_bias=True, residual=True,
                    act="gpt_oss", gate_up="interleaved", transposed=True, limit=0.6, alpha=1.702),
    # DeepSeek-V3-style routing (GLM-4.5, dots.llm1): sigmoid scores, a choice bias, scaled, one shared expert
    "sigmoid_shared": dict(score="sigmoid", choice_bias=True, renorm=True, renorm_eps=1e-20, scale=2.5, shared=1,
                           norm="rms", eps=1e-5, residual=True),
    "qwen2_moe": dict(shared=2, shared_gate=True, norm="rms", eps=1e-5),  # a gated shared MLP two experts wide
    "ernie": dict(choice_bias=True, renorm=True, renorm_min=0.9, shared=1),  # softmax, choice bias, clamped sum
    "cohere2_layer_norm": dict(renorm=True, norm="layer", eps=1e-5, residual=True),  # LayerNorm, no bias
}
DEFAULTS = dict(renorm=False, norm="none", eps=1e-6, router_bias=False, expert_bias=False, residual=False, act="silu",
                gate_up="concat", transposed=False, limit=7.0, alpha=1.702, score="softmax", choice_bias=False,
                renorm_eps=0.0, renorm_min=0.0, scale=1.0, shared=0, shared_gate=False, groups=1, top_groups=1,
                group_fill=float("-inf"))


def operands(attrs: dict, T: int, E: int, H: int, inter: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    es = E + attrs["shared"]  # the routed experts, then the shared ones
    gu, d = ((es, H, 2 * inter), (es, inter, H)) if attrs["transposed"] else ((es, 2 * inter, H), (es, H, inter))
    make = {"x": lambda: r(T, H), "norm_w": lambda: 1 + r(H, scale=0.1), "router_w": lambda: r(E, H),
            "router_b": lambda: r(E), "router_cb": lambda: r(E, scale=0.3), "shared_gate_w": lambda: r(1, H, scale=0.3),
            "w_gate_up": lambda: r(*gu, scale=H ** -0.5), "b_gate_up": lambda: r(es, 2 * inter),
            "w_down": lambda: r(*d, scale=inter ** -0.5), "b_down": lambda: r(es, H), "residual": lambda: r(T, H)}
    return [make[role]() for role in operand_roles(attrs)]


def run_template(ops: list[torch.Tensor], attrs: dict, k: int, grouped: bool = False) -> torch.Tensor:
    named = dict(zip(operand_roles(attrs), ops, strict=True))
    args = [named.get(r) for r in ROLES]
    kw = {key: attrs[key] for key in ("renorm", "norm", "eps", "act", "gate_up", "transposed", "limit", "alpha",
                                      "score", "renorm_eps", "renorm_min", "scale", "shared", "groups", "top_groups",
                                      "group_fill")}
    with interpreter_scope():
        return moe(*args, k=k, grouped=grouped, **kw)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("T,E,k", [(1, 4, 2), (3, 8, 3), (2, 4, 4)])
def test_template_matches_the_reference(name: str, T: int, E: int, k: int) -> None:
    attrs = {**DEFAULTS, **VARIANTS[name]}
    ops = operands(attrs, T, E, 48, 40, torch.float32, seed=T * 10 + k)
    want = _moe(*ops, k=k, **attrs)
    with counting_launches() as names:
        got = run_template(ops, attrs, k)
    assert names == ["moe_up_kernel", "moe_down_kernel"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


GROUPED_LAUNCHES = ["moe_route_kernel", "moe_grouped_up_kernel", "moe_grouped_down_kernel"]


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("T,E,k", [(5, 4, 2), (37, 8, 3)])
def test_grouped_prefill_matches_the_reference(name: str, T: int, E: int, k: int) -> None:
    """The prefill path: slots sorted by expert into 16/64-row tiles (experts with no token, with one, with more
    than a tile)."""
    attrs = {**DEFAULTS, **VARIANTS[name]}
    ops = operands(attrs, T, E, 48, 40, torch.float32, seed=T + k)
    with counting_launches() as names:
        got = run_template(ops, attrs, k, grouped=True)
    assert names == GROUPED_LAUNCHES
    torch.testing.assert_close(got, _moe(*ops, k=k, **attrs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fill", [float("-inf"), 0.0])
@pytest.mark.parametrize("grouped", [False, True])
def test_group_limited_routing_matches_the_reference(grouped: bool, fill: float) -> None:
    """DeepSeek-V3's routing in registers: 8 experts in 4 groups, the best 2 groups' experts only (top-2 sums),
    sigmoid scores with a choice bias and a shared expert; decode kernels and the grouped prefill."""
    attrs = {**DEFAULTS, **VARIANTS["sigmoid_shared"], "groups": 4, "top_groups": 2, "group_fill": fill}
    T = 20 if grouped else 3
    ops = operands(attrs, T, 8, 48, 40, torch.float32, seed=5)
    want = _moe(*ops, k=3, **attrs)
    assert not torch.allclose(want, _moe(*ops, k=3, **{**attrs, "groups": 1}))  # the limit changes the choice
    torch.testing.assert_close(run_template(ops, attrs, 3, grouped), want, rtol=1e-5, atol=1e-5)


def test_expert_tiles_cover_every_slot_once() -> None:
    experts = torch.tensor([2, 0, 2, 2, 1, 2, 0], dtype=torch.int32)
    rows, tile_expert = expert_tiles(experts, 4, 2)
    assert tile_expert.tolist() == [0, 1, 2, 2]  # expert 3: no tile; expert 2's four slots: two tiles
    assert rows.view(-1, 2).tolist() == [[1, 6], [4, -1], [0, 2], [3, 5]]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("name", ["mixtral", "gpt_oss", "sigmoid_shared"])
def test_int4_experts_match_the_reference(name: str, grouped: bool) -> None:
    """w4a16-int4 experts (`moe_quant.encode_experts`: codes two per byte, scale and zero per group of 32) dequantized
    in the kernels' registers: the reference on the decoded weights (GPT-OSS's transposed experts re-laid out)."""
    attrs = {**DEFAULTS, **VARIANTS[name]}
    ops = operands(attrs, 20 if grouped else 3, 4, 64, 48, torch.float16, seed=7)
    named = dict(zip(operand_roles(attrs), ops, strict=True))
    for role in ("w_gate_up", "w_down"):
        w = named[role].float()
        named[role] = encode_experts((w.transpose(1, 2) if attrs["transposed"] else w).contiguous(), "w4a16-int4", 32)
    attrs["transposed"] = False
    quant = [named[r] for r in operand_roles(attrs)]
    dense = [decode_weight(v) if isinstance(v, Weight) else v for v in quant]
    with counting_launches() as names:
        got = run_template(quant, attrs, 2, grouped)
    assert len(names) == (3 if grouped else 2)
    torch.testing.assert_close(got, _moe(*dense, k=2, **attrs), rtol=2e-3, atol=2e-3)


def test_half_precision_rounds_as_the_reference() -> None:
    attrs = {**DEFAULTS, **VARIANTS["mixtral"], "residual": True}
    ops = operands(attrs, 20, 8, 64, 32, torch.float16, seed=3)
    for grouped in (False, True):
        got = run_template(ops, attrs, 2, grouped)
        assert got.dtype == torch.float16
        torch.testing.assert_close(got, _moe(*ops, k=2, **attrs), rtol=2e-3, atol=2e-3)


def test_decode_tiles_cover_the_gpu() -> None:
    """At decode the up and down grids put >= 2 programs on each of an H100's 132 SMs (Mixtral-shaped, T=1)."""
    up, down = moe_blocks(2, 14336, 4096, torch.float16, 90, tiles=2), moe_blocks(1, 4096, 14336, torch.float16, 90)
    assert 2 * -(-14336 // up["BLOCK_N"]) >= 264 and -(-4096 // down["BLOCK_N"]) >= 256 // 16


@pytest.mark.parametrize("arch,prompt", [("mixtral", 18), ("gpt_oss", 4), ("glm4_moe", 18), ("qwen2_moe", 4)])
# 18 tokens: the prefill runs grouped
def test_moe_decoder_decodes_eager_tokens(arch: str, prompt: int) -> None:
    import fxforge
    from fxforge.testing import gqa_decoder

    model = gqa_decoder(arch, 1)
    before = model.get_experts_implementation()
    dec = fxforge.compile_decoder(model, max_length=24, executor="interpret")
    assert model.get_experts_implementation() == before
    assert len(dec.graph.find("moe")) == 1 and not dec.graph.find("topk")
    ids = torch.randint(3, 256, (1, prompt), generator=torch.Generator().manual_seed(0))
    with counting_launches() as names:
        got = dec.generate(ids, 4)
    assert torch.equal(got, model.generate(ids, max_new_tokens=4, do_sample=False))
    grouped = prompt > 16  # the prefill's path; the 3 decode steps run the decode kernels
    assert ("moe_grouped_up_kernel" in names) == grouped and names.count("moe_up_kernel") == 3 + (not grouped)
