"""The default pipeline on a real captured graph: a small Hugging Face Llama through aot_autograd
(what `fxforge.compile` captures: matmul of transposed weights, reshape sandwiches, RMSNorm written
out) and through torch.export with dynamic dims. With verification on after every pass, the
result has `linear` and `rms_norm` ops and computes eager's logits (fp32, max abs diff <= 1e-5)."""

import pytest
import torch

from fxforge.ir import evaluate
from fxforge.passes import PassContext, PassManager
from fxforge.pipeline import build_passes, default_pipeline

dynamo = pytest.importorskip("fxforge.frontend.dynamo")
export = pytest.importorskip("fxforge.frontend.export")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    return transformers.LlamaForCausalLM(config).eval()


def eager(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def capture_aot(model, ids):
    """The JIT path's graph: dynamo + aot_autograd, lowered the way `fxforge.compile`'s backend does."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    names, out = dynamo.tensor_names(model), {}

    def backend(gm, example_inputs):
        def fw(aten_gm, _fake):
            with unset_fake_temporarily():
                out["lowered"] = dynamo.lower_aten_graph(aten_gm, example_inputs, names, "forward")
                out["inputs"] = [x for x, s in zip(example_inputs, out["lowered"].inputs, strict=True) if s.kind == "tensor"]
            return aten_gm

        return aot_autograd(fw_compiler=fw)(gm, example_inputs)

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend, dynamic=False)(ids, use_cache=False)
    return out["lowered"].graph, out["inputs"]


def run_default_pipeline(graph):
    pm = PassManager(build_passes(default_pipeline()), verify=True)
    return pm.run(graph, PassContext(verify=True)), pm.trace


def test_aot_autograd_graph(llama):
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    graph, inputs = capture_aot(llama, ids)
    before = graph.op_counts()
    assert "linear" not in before and "rms_norm" not in before and before["matmul"] >= 15
    graph, trace = run_default_pipeline(graph)
    counts = graph.op_counts()
    assert counts["linear"] == 15 and counts["rms_norm"] == 5  # 2 x 7 projections + lm_head; 2 x 2 + final
    assert "matmul" not in counts and "pow" not in counts and "rsqrt" not in counts
    assert sum(counts.values()) < sum(before.values())
    rewrites = trace.record("canonicalize").stats["rewrites"]
    assert rewrites["matmul_to_linear"] == 15 and rewrites["rms_norm_weight"] == 5
    logits = evaluate(graph, inputs)[0]
    assert (logits - eager(llama, ids)).abs().max().item() <= 1e-5


def test_export_graph_with_dynamic_dims(llama):
    capture = export.capture_export(llama, (torch.randint(0, 256, (2, 8)),))
    graph, _ = run_default_pipeline(capture.lowered.graph)
    counts = graph.op_counts()
    assert counts["linear"] == 15 and counts["rms_norm"] == 5 and "pow" not in counts
    assert any(not v.type.is_static for v in graph.inputs)
    for batch, seq in ((3, 5), (1, 11)):
        ids = torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seq))
        logits = evaluate(graph, [ids])[0]
        assert (logits - eager(llama, ids)).abs().max().item() <= 1e-5
