"""Shared experts and DeepSeek-V3-style routers become the `moe` op (`passes/moe_shared.py`, `moe_rules._router`):
the decode step of real transformers MoE models (one layer) is one `moe` op with the architecture's routing flags and
its shared MLP stacked after the routed experts, and gives eager's logits; forms the op does not compute (a shared
width that is not a multiple of the experts', a top-k past the experts of the kept groups) stay as they were, with
eager's logits."""

from __future__ import annotations

import pytest
import torch

from fxforge.frontend.kv_capture import capture_decoder
from fxforge.ir import evaluate
from fxforge.ir.moe_ops import by_role
from fxforge.passes import PassContext
from fxforge.passes.cse import CommonSubexpressionElimination
from fxforge.testing import gqa_decoder
from tests.passes.test_moe_rules import canonical

ROUTER = dict(score="softmax", choice_bias=False, renorm=False, renorm_eps=0.0, renorm_min=0.0, scale=1.0, groups=1,
              top_groups=1)
# arch -> (config overrides, the moe op's routing and shared flags)
EXPECTED = {
    "qwen2_moe": ({}, {**ROUTER, "shared": 2, "shared_gate": True}),  # a gated shared MLP two experts wide
    "glm4_moe": ({}, {**ROUTER, "score": "sigmoid", "choice_bias": True, "renorm": True, "renorm_eps": 1e-20,
                      "shared": 1, "shared_gate": False}),
    "dots1": ({"routed_scaling_factor": 2.5, "norm_topk_prob": False},
              {**ROUTER, "score": "sigmoid", "choice_bias": True, "scale": 2.5, "shared": 1}),
    "ernie4_5_moe": ({}, {**ROUTER, "choice_bias": True, "renorm": True, "renorm_min": 1e-12, "shared": 1}),
    "minimax_m2": ({}, {**ROUTER, "score": "sigmoid", "choice_bias": True, "renorm": True, "shared": 0}),
    "granitemoe_swa": ({}, {**ROUTER, "renorm": True, "shared": 2}),  # one input_linear [gate; up] chunked in two
    "aria_text": ({}, {**ROUTER, "renorm": True, "shared": 1}),  # transposed experts: the blocks stacked transposed
    "cohere2_moe": ({}, {**ROUTER, "renorm": True, "norm": "layer", "shared": 0}),  # its LayerNorm in the op
    "glm4_moe@groups": ({"n_routed_experts": 8, "n_group": 4, "topk_group": 2},  # DeepSeek-V3's group-limited top-k
                        {**ROUTER, "score": "sigmoid", "choice_bias": True, "renorm": True, "renorm_eps": 1e-20,
                         "shared": 1, "groups": 4, "top_groups": 2}),
}


def _logits(model, g) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(0))
    layout = capture_decoder(model, 1, 16)[1]
    got = evaluate(g, [ids, torch.arange(5), *layout.allocate()])[0]
    with torch.no_grad():
        return got, model(ids).logits


def _canonical(model):
    """canonicalize, cse, canonicalize (as the pipeline: Cohere's LayerNorm written out becomes one after cse)."""
    capture, _ = capture_decoder(model, 1, 16)
    g = canonical(capture.lowered.graph)
    CommonSubexpressionElimination().run(g, PassContext())
    return canonical(g)


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_routers_and_shared_experts_become_one_moe_op(arch):
    overrides, flags = EXPECTED[arch]
    model = gqa_decoder(arch.split("@")[0], 1, **overrides)
    g = _canonical(model)
    counts = g.op_counts()
    assert counts.get("moe") == 1 and not {"topk", "index_select", "extern", "sigmoid"} & set(counts), counts
    assert counts.get("linear", 0) == 5, counts  # q, k, v, o and the lm head: no router, no shared expert GEMM
    (op,) = g.find("moe")
    assert {k: op.attrs[k] for k in flags} == flags
    o = by_role(op.operands, op.attrs)
    routed = o["router_w"].type.shape[0]
    assert o["w_gate_up"].type.shape[0] == o["w_down"].type.shape[0] == routed + flags["shared"]
    got, want = _logits(model, g)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_router_choice_bias_moves_the_choice():
    """GLM-4.5's correction bias decides which experts run but not their weights: a large bias on expert 3 makes
    the op choose it for every token, as eager does."""
    model = gqa_decoder("glm4_moe", 1)
    with torch.no_grad():
        model.model.layers[0].mlp.gate.e_score_correction_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))
    g = _canonical(model)
    assert len(g.find("moe")) == 1
    got, want = _logits(model, g)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,overrides,left", [
    ("qwen2_moe", {"shared_expert_intermediate_size": 48}, "linear"),  # 48 is not a multiple of the experts' 32
    ("glm4_moe", {"n_routed_experts": 8, "n_group": 4, "topk_group": 1, "num_experts_per_tok": 3}, "topk"),  # k > kept
])
def test_forms_the_op_does_not_compute_stay(arch, overrides, left):
    model = gqa_decoder(arch, 1, **overrides)
    g = _canonical(model)
    counts = g.op_counts()
    assert counts.get(left, 0) > (5 if left == "linear" else 0), counts
    got, want = _logits(model, g)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_router_that_always_ties_stays_as_torch_runs_it():
    """A zero router (an untrained AFMoE's) ties every expert on every token: torch.topk's order among ties is its
    own, so the chain stays (eager's experts and logits); with distinct rows the op takes it."""
    model = gqa_decoder("glm4_moe", 1)
    gate = model.model.layers[0].mlp.gate.weight
    with torch.no_grad():
        gate.zero_()
    g = _canonical(model)
    assert not g.find("moe") and g.find("topk")
    got, want = _logits(model, g)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        gate[:, 0] = torch.arange(4.0)
    assert len(_canonical(model).find("moe")) == 1


def test_the_report_lists_the_externs_the_compiled_graph_runs():
    """GLM-4.5's capture lowers its group mask's scatter to an extern; the moe op takes the router, so the compile
    report (and `inspect`, the artifact) does not list it: what runs through torch, not what the capture saw."""
    from collections import Counter

    import fxforge

    compiled = fxforge.compile_aot(gqa_decoder("glm4_moe", 1), (torch.randint(3, 256, (1, 6)),), executor="reference")
    ran = Counter(op.attrs["target"] for op in compiled.graph.find("extern"))
    assert compiled.record.externs == dict(ran) and not any("scatter" in t for t in ran)
