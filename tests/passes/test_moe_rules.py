"""canonicalize's MOE_RULES (`passes/moe_rules.py`): the decode step of real transformers MoE models (Mixtral,
GraniteMoE, GPT-OSS; one layer), captured with HF's batched experts (`frontend/experts.py`), becomes one `moe` op per
layer with the architecture's flags and weights, and gives eager's logits; the model's experts implementation is
restored. Hand-built chains the rule must not take (or may take only if the numbers stay) keep their numbers."""

from __future__ import annotations

import pytest
import torch

from fxforge.frontend.experts import BATCHED, batched_experts
from fxforge.frontend.kv_capture import capture_decoder
from fxforge.ir import DType, Graph, OperandRef, TensorType, evaluate, sym, verify
from fxforge.ir.moe_ops import by_role
from fxforge.passes import PassContext
from fxforge.passes.canonicalize import Canonicalize
from fxforge.passes.dce import DeadCodeElimination
from fxforge.testing import gqa_decoder

ROUTED = dict(k=2, renorm=True, norm="rms", router_bias=False, expert_bias=False, act="silu", gate_up="concat",
              transposed=False, residual=True)
# arch -> (the moe op's flags, the MoE block's module, its router's)
EXPECTED = {
    "mixtral": ({**ROUTED, "eps": 1e-5}, "mlp", "gate"),
    "granitemoe": ({**ROUTED, "eps": 1e-6}, "block_sparse_moe", "router"),  # topk of the logits, then softmax
    "gpt_oss": ({**ROUTED, "eps": 1e-5, "router_bias": True, "expert_bias": True, "act": "gpt_oss",
                 "gate_up": "interleaved", "transposed": True, "limit": 7.0, "alpha": 1.702}, "mlp", "router"),
}
PARAMS = dict(norm_w="post_attention_layernorm.weight", router_w="{moe}.{router}.weight",
              router_b="{moe}.{router}.bias",
              w_gate_up="{moe}.experts.gate_up_proj", b_gate_up="{moe}.experts.gate_up_proj_bias",
              w_down="{moe}.experts.down_proj", b_down="{moe}.experts.down_proj_bias")


def canonical(g: Graph) -> Graph:
    """canonicalize, then dce (as the pipeline: the replaced chain and the router's in-place `div_` go)."""
    Canonicalize().run(g, PassContext())
    DeadCodeElimination().run(g, PassContext())
    verify(g)
    return g


def experts_matmuls(g: Graph) -> list:
    """matmuls with an operand gathered from (or being) a weight: the batched experts' bmms."""
    def weighty(v):
        while v.producer is not None and v.producer.opcode in ("reshape", "expand", "index_select", "permute"):
            v = v.producer.operands[0]
        return v.producer is not None and v.producer.opcode == "const"
    return [op for op in g.find("matmul") if any(weighty(v) for v in op.operands)]


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_captured_experts_become_one_moe_op_with_eager_logits(arch):
    model = gqa_decoder(arch, 1)
    before = model.get_experts_implementation()
    assert set(before.values()) != {BATCHED}  # transformers' default: the capture has something to switch
    capture, layout = capture_decoder(model, 1, 16)
    assert model.get_experts_implementation() == before
    g = canonical(capture.lowered.graph)
    counts = g.op_counts()
    assert counts.get("moe") == 1 and not {"topk", "index_select", "extern"} & set(counts), counts
    assert not experts_matmuls(g)
    (op,) = g.find("moe")
    flags, moe, router = EXPECTED[arch]
    assert {k: op.attrs[k] for k in flags} == flags
    operands = {role: v for role, v in by_role(op.operands, op.attrs).items() if v is not None}
    for role, name in PARAMS.items():
        if role in operands:
            const = operands[role].producer
            assert const.opcode == "const", role
            assert const.attrs["weight"] == "model.model.layers.0." + name.format(moe=moe, router=router), role
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(0))
    got = evaluate(g, [ids, torch.arange(5), *layout.allocate()])[0]
    with torch.no_grad():
        want = model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_batched_experts_restores_the_implementation_on_errors():
    model = gqa_decoder("mixtral", 1)
    before = model.get_experts_implementation()
    with pytest.raises(RuntimeError, match="inside"):
        with batched_experts(model) as switched:
            assert switched and set(model.get_experts_implementation().values()) == {BATCHED}
            raise RuntimeError("inside")
    assert model.get_experts_implementation() == before
    with batched_experts(torch.nn.Linear(2, 2)) as switched:  # nothing to switch
        assert not switched


# -- hand-built chains: HF's batched_mm_experts_forward after a Mixtral router, and variants ------------------------

S0 = sym("s0")
H, N_I, E, K = 16, 8, 4, 2


def chain(tiled: bool = False, idx_output: bool = False, inputs: tuple[str, ...] = (), interleaved: bool = False,
          residual: str = "x") -> Graph:
    """x [s0, H] -> router, topk, renorm (in-place div_), the experts' bmms -> y [+ residual]. `tiled`: the experts'
    rows are x.repeat(k, 1) (slot-major) instead of repeat_interleave; `inputs`: weights that are graph inputs;
    `interleaved`: gate/up rows in pairs; `residual`: "x", "none", "row" (an input [1, H]) or "bias" (a weight [H])."""
    g = Graph()
    gen = torch.Generator().manual_seed(0)
    x = g.add_input("x", TensorType((S0, H), DType.f32))

    def op(opcode, *xs, **attrs):
        return g.add_op(opcode, list(xs), attrs).result

    def weight(name, *shape):
        if name in inputs:
            return g.add_input(name, TensorType(shape, DType.f32))
        g.add_weight(name, torch.randn(*shape, generator=gen) / 3)
        return op("const", weight=name)

    wr, wgu, wd = weight("wr", E, H), weight("wgu", E, 2 * N_I, H), weight("wd", E, H, N_I)
    vals, idx = g.add_op("topk", [op("softmax", op("linear", x, wr), dim=1)], {"k": K}).results
    div = g.add_op("extern", [vals, op("sum", vals, dims=[-1], keepdim=True)],
                   {"target": "aten.div_.Tensor", "args": (OperandRef(0), OperandRef(1))}, [vals.type]).result
    s = K * S0
    rows, copies = ([1, S0, H], [K, S0, H]) if tiled else ([S0, 1, H], [S0, K, H])
    xs = op("reshape", op("expand", op("reshape", x, shape=rows), shape=copies), shape=[s, H])
    e = op("reshape", idx, shape=[s])

    def bmm(w, v, n):
        column = op("reshape", v, shape=[s, v.type.shape[1], 1])
        return op("reshape", op("matmul", op("index_select", w, e, dim=0), column), shape=[s, n])

    up = bmm(wgu, xs, 2 * N_I)
    halves = ([op("slice", up, dim=1, start=i, end=2 * N_I, step=2) for i in (0, 1)] if interleaved
              else [op("slice", up, dim=1, start=i, end=i + N_I) for i in (0, N_I)])
    a = op("mul", op("silu", halves[0]), halves[1])
    y = op("sum", op("reshape", op("mul", bmm(wd, a, H), op("reshape", div, shape=[s, 1])), shape=[S0, K, H]), dims=[1])
    if residual == "row":
        y = op("add", y, g.add_input("r", TensorType((1, H), DType.f32)))
    elif residual == "bias":
        g.add_weight("b", torch.randn(H, generator=gen))
        y = op("add", op("const", weight="b"), y)
    elif residual == "x":
        y = op("add", x, y)
    g.set_outputs([y, idx] if idx_output else [y])
    verify(g)
    return g


def inputs(g: Graph, tokens: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(*[tokens if d is S0 else d for d in v.type.shape], generator=gen) for v in g.inputs]


def rewritten(g: Graph, tokens: int = 3) -> dict[str, int]:
    """canonical(g)'s op counts, after checking it computes what g did (exactly: same reference ops)."""
    xs = inputs(g, tokens)
    want = evaluate(g, xs)
    got = evaluate(canonical(g), xs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    return g.op_counts()


@pytest.mark.parametrize("interleaved", [False, True])
def test_hand_built_chain_becomes_one_op(interleaved):
    g = chain(interleaved=interleaved)
    assert rewritten(g) == {"const": 3, "moe": 1}
    assert g.find("moe")[0].attrs["gate_up"] == ("interleaved" if interleaved else "concat")
    assert rewritten(chain(interleaved=interleaved, residual="none")) == {"const": 3, "moe": 1}


def test_topk_indices_read_elsewhere_stay_for_that_reader():
    counts = rewritten(chain(idx_output=True))
    assert counts.get("moe") == 1 and counts.get("topk") == 1 and "index_select" not in counts, counts


@pytest.mark.parametrize("weights", [("wr",), ("wgu",), ("wd",)])
def test_weights_that_are_inputs_stay_batched(weights):
    counts = rewritten(chain(inputs=weights))
    assert "moe" not in counts and counts.get("matmul") == 2, counts


@pytest.mark.parametrize("residual", ["row", "bias"])
def test_a_broadcast_add_is_not_the_residual(residual):
    g = chain(residual=residual)
    counts = rewritten(g)
    assert counts.get("moe") == 1 and counts.get("add") == 1, counts
    assert not g.find("moe")[0].attrs["residual"]


def test_slot_major_rows_are_not_the_tokens_routing():
    rewritten(chain(tiled=True))


def test_gpt_oss_fp16_norm_in_fp32_is_the_ops_norm():
    """GPT-OSS in fp16 normalises in fp32 between casts, its fp16 weight promoted in the product: canonicalize gives
    rms_norm(x_f32, cast(w, f32)), the moe op takes it as its norm (one rounding, as the op computes), and the
    attention's norm is the fp32-weight form the GEMM prologues take (`norm_prologues.cast_norm_prologue`)."""
    model = gqa_decoder("gpt_oss", 1).to(torch.float16)
    capture, layout = capture_decoder(model, 1, 16)
    g = canonical(capture.lowered.graph)
    (op,) = g.find("moe")
    roles = by_role(op.operands, op.attrs)
    assert op.attrs["norm"] == "rms" and roles["x"].type.dtype == DType.f16
    norms = g.find("rms_norm")
    assert norms and all(n.operands[1].type.dtype == DType.f32 for n in norms if len(n.operands) == 2)
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(0))
    got = evaluate(g, [ids, torch.arange(5), *layout.allocate()])[0].float()
    with torch.no_grad():
        want = model(ids).logits.float()
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
