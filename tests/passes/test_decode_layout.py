"""The `decode_layout` pass (issue #13 item 5): w4a16-int4 weights of decode-shaped qlinears are stored in the
decode layout at compile time and their template call is the int4 decode GEMM (`_qlinear_w4_decode`);
prefill-shaped (static rows > 16), f32 and LoRC layers keep the row-major qlinear. Numerics: the layout is
exact, so the interpreter's tokens are the reference executor's."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.codegen.buffers import BufferPlan
from fxforge.testing import counting_launches

counting = counting_launches  # the kernels launched, counted from outside fxforge


def _stats(module, name: str = "decode_layout") -> dict:
    return next(r.stats for r in module.record.trace.records if r.name == name)


def _layouts(module) -> set[str]:
    return {getattr(w.encoding, "layout", None) for w in module.graph.weights.values() if w.encoding is not None}


def test_decoder_w4a16_runs_the_decode_kernel_with_reference_tokens():
    torch.manual_seed(0)
    model = zoo.llama(hidden=64, layers=1, heads=4, kv_heads=2, intermediate=128).half()
    ids = torch.randint(3, 256, (1, 18), generator=torch.Generator().manual_seed(1))  # prefill: 18 rows, 64-row tiles
    opts = dict(max_length=24, quantize="w4a16-int4", quantize_group=32)
    dec = fxforge.compile_decoder(model, executor="interpret", **opts)
    ref = fxforge.compile_decoder(model, executor="reference", **opts)
    stats = _stats(dec)
    # 4 weights: concat_linears stacked q/k/v and gate/up (one qlinear each), then o_proj and down_proj
    assert stats["decode_step"] and stats["weights"] == 4 and set(stats["layers"].values()) == {"decode"}
    assert _layouts(dec) == {"i4w32x"} and _layouts(ref) == {""}  # the reference keeps the row-major codes
    source = dec.program.executor.module.source
    assert source.count("_qlinear_w4_decode(") == 4 and "_qlinear(" not in source
    # the stacked [gate; up] rows interleaved for the SwiGLU epilogue; both RMSNorms fused as prologues
    assert stats["swiglu"] == ["model.model.layers.0.mlp.{gate_proj+up_proj}"], stats["swiglu"]
    assert source.count("swiglu=True") == 1 and source.count("norm=(") == 3  # QKV, gate/up, the dense lm_head
    plan = BufferPlan.build(dec.graph, dec.graph.partition)  # the decode GEMMs write planned buffers (out=)
    assert not [step for step in plan.allocating if "qlinear" in str(step)], plan.allocating
    with counting() as names:
        got = dec.generate(ids, max_new_tokens=2)
    assert names.count("qlinear_w4_decode_kernel") == 2 * 4 and "qlinear_w4a16_int4_kernel" not in names
    assert torch.equal(got, ref.generate(ids, max_new_tokens=2))


def test_static_rows_decide_and_other_layers_keep_the_qlinear():
    torch.manual_seed(0)
    model = zoo.mlp(dim=64, hidden=128).half()
    small, wide = torch.randn(2, 3, 64).half(), torch.randn(4, 8, 64).half()
    for x, layout in ((small, "i4w64x"), (wide, "")):
        mod = fxforge.compile_aot(model, (x,), executor="interpret", dynamic=False, quantize="w4a16-int4",
                                  quantize_group=64)
        ref = fxforge.compile_aot(model, (x,), executor="reference", dynamic=False, quantize="w4a16-int4",
                                  quantize_group=64)
        assert _layouts(mod) == {layout}, _stats(mod)
        template = "_qlinear_w4_decode(" if layout else "_qlinear("
        assert mod.program.executor.module.source.count(template) == 2
        y, y_ref = mod(x).float(), ref(x).float()
        assert (y - y_ref).abs().max() <= 2e-3 * y_ref.abs().max()
    assert set(_stats(mod)["layers"].values()) == {"prefill-shaped (32 rows > 16)"}
    f32 = fxforge.compile_aot(zoo.mlp(dim=64, hidden=128), (small.float(),), executor="interpret", dynamic=False,
                              quantize="w4a16-int4", quantize_group=64, lorc_rank=0)
    assert _layouts(f32) == {""} and "f32 activations" in next(iter(_stats(f32)["layers"].values()))


def test_w4a8_fp_decode_step_runs_as_w4a16_on_the_fp4_layout():
    """W4A8 at M <= 16: FP4 weights in the "f4w128e" layout (the FP8-MMA kernel, sm_90's choice without a GPU),
    activations quantized to E4M3 per token as the reference."""
    torch.manual_seed(0)
    model = zoo.mlp(dim=64, hidden=128).half()
    x = torch.randn(1, 2, 64).half()
    opts = dict(dynamic=False, quantize="w4a8-fp", quantize_group=32)
    mod = fxforge.compile_aot(model, (x,), executor="interpret", **opts)
    ref = fxforge.compile_aot(model, (x,), executor="reference", **opts)
    assert _layouts(mod) == {"f4w128e"} and set(_stats(mod)["layers"].values()) == {"decode"}
    with counting() as names:
        y = mod(x).float()
    assert names.count("qlinear_w4_f8_decode_kernel") == 2 and "qlinear_w4a8_fp_kernel" not in names
    y_ref = ref(x).float()
    assert (y - y_ref).abs().max() <= 2e-3 * y_ref.abs().max()


@pytest.mark.slow  # two JIT compiles of a HF model through dynamo (~20 s on 2 cores)
def test_jit_generate_decode_graphs_run_the_decode_kernel():
    """`fxforge.compile` under HF `generate`: dynamo captures each step with static shapes (T = 1 decode steps
    specialised), so every graph's qlinears are decode-shaped; tokens equal the reference executor's."""
    torch.manual_seed(0)
    model = zoo.llama(hidden=64, layers=1, heads=4, kv_heads=2, intermediate=128).half()
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    tokens = {}
    for executor in ("interpret", "reference"):
        fx = fxforge.compile(model, executor=executor, quantize="w4a16-int4", quantize_group=32)
        with torch.no_grad():
            tokens[executor] = fx.generate(ids, max_new_tokens=3, do_sample=False)
        if executor == "interpret":
            stats = [g.trace.record("decode_layout").stats for g in fx.fxforge_report.graphs]
            assert stats and all(s["weights"] == 4 for s in stats)  # qkv, o, gate+up, down (concat_linears)
    assert torch.equal(tokens["interpret"], tokens["reference"])


def test_gate_up_rows_interleave_and_the_graph_means_the_same():
    """decode_layout interleaves a stacked [gate; up] qlinear read as silu(gate) * up (rows g0, u0, g1, ...; the
    slices become step-2 slices): the reference semantics of the graph are unchanged."""
    from fxforge.ir import DType, Graph, TensorType, evaluate, verify
    from fxforge.ir.lowp_ops import encode_weight
    from fxforge.passes.concat_linears import stack_weights
    from fxforge.passes.decode_layout import apply_decode_layouts

    gen = torch.Generator().manual_seed(0)
    g = Graph()
    x = g.add_input("x", TensorType((1, 64), DType.f16))
    w = stack_weights([encode_weight(torch.randn(32, 64, generator=gen), "w4a16-int4", 32) for _ in range(2)])
    c = g.add_op("const", [], {"weight": g.add_weight("mlp.{gate_proj+up_proj}.weight", w)}).result
    y = g.add_op("qlinear", [x, c], {"scheme": "w4a16-int4", "act_format": None, "group": 32, "lorc_rank": 0}).result
    gate, up = (g.add_op("slice", [y], {"dim": 1, "start": a, "end": b}).result for a, b in ((0, 32), (32, 64)))
    g.set_outputs([g.add_op("mul", [g.add_op("silu", [gate]).result, up]).result])
    xs = [torch.randn(1, 64, generator=gen).half()]
    want = evaluate(g, xs)[0]
    stats = apply_decode_layouts(g, (2, False))
    verify(g)
    assert stats["swiglu"] == ["mlp.{gate_proj+up_proj}"] and stats["weights"] == 1
    assert [(s.attrs["start"], s.attrs["step"]) for s in y.uses] == [(0, 2), (1, 2)]
    torch.testing.assert_close(evaluate(g, xs)[0], want, rtol=1e-3, atol=1e-3)
