"""The ffn_skip pass on small Hugging Face models (random weights): it finds the FFN blocks of Llama,
Qwen2 and GPT-2 graphs, hits the target share on the calibration data, computes eager's outputs when
its gates never fire, counts rows exactly (checked against the gates' own results), refuses bad
options, and runs `generate()` through the JIT with the counters showing skipping in decode."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.errors import ConfigError
from fxforge.ir import evaluate
from fxforge.ir.lowp_ops import SCHEMES
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_graph
from fxforge.passes.ffn_skip_find import find_ffn_blocks
from fxforge.passes.ffn_skip_gate import NEVER

transformers = pytest.importorskip("transformers")
LAYERS = 4


def calib(name: str = "llama", n: int = 3, seq: int = 16) -> list[dict]:
    return [{"input_ids": zoo.example_input(name, batch=2, seq=seq, seed=s), "use_cache": False} for s in range(10, 10 + n)]


def qwen2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    return transformers.Qwen2ForCausalLM(cfg).eval()


def build(name: str) -> torch.nn.Module:
    return qwen2() if name == "qwen2" else zoo.build(name, layers=LAYERS)


@pytest.fixture(scope="module")
def llama():
    model = zoo.build("llama", layers=LAYERS)
    x = zoo.example_input("llama")
    compiled = fxforge.compile_aot(model, (x,), {"use_cache": False}, ffn_skip=0.2, calibration=calib(),
                                   executor="reference")
    return model, x, compiled


def stats(compiled) -> dict:
    return compiled.record.trace.record("ffn_skip").stats


@pytest.mark.parametrize("name,site", [("llama", "model.layers.{}.mlp"), ("qwen2", "model.layers.{}.mlp"),
                                       ("gpt2", "transformer.h.{}.mlp")])
def test_finds_the_ffn_of_every_layer(name, site):
    model = build(name)
    x = zoo.example_input("llama")
    graph = fxforge.compile_aot(model, (x,), {"use_cache": False}, executor="reference").graph
    blocks = find_ffn_blocks(graph)
    assert [b.site for b in blocks] == [site.format(i) for i in range(LAYERS)]
    for b in blocks:
        assert b.u.producer.opcode in ("rms_norm", "layer_norm")
        assert sum(op.opcode in ("linear", "matmul") for op in b.body) >= 2
        assert all(op.opcode != "attention" for op in b.body)


@pytest.mark.parametrize("name", ["qwen2", "gpt2"])
def test_skips_on_other_architectures(name):
    model = build(name)
    x = zoo.example_input("llama")
    c = fxforge.compile_aot(model, (x,), {"use_cache": False}, ffn_skip=0.2, calibration=calib(), executor="reference")
    assert abs(stats(c)["calibration"]["share_skipped"] - 0.2) <= 0.02
    c(x, use_cache=False)
    assert c.fxforge_report.ffn_skip["skipped"] > 0


def test_share_on_calibration_hits_the_target(llama):
    _, _, c = llama
    st = stats(c)
    assert abs(st["calibration"]["share_skipped"] - 0.2) <= 0.02
    gated = [k for k, v in st["layers"].items() if v["gated"]]
    assert gated == ["model.layers.1.mlp", "model.layers.2.mlp"]  # first and last protected
    for site in gated:
        q = st["layers"][site]["quality"]
        assert len(q["share"]) == len(q["gate_error"]) == len(q["oracle_error"])
        assert all(o <= g + 1e-9 for o, g in zip(q["oracle_error"], q["gate_error"]))  # the oracle is the floor
    total = sum(v["calib_skipped"] for v in st["layers"].values()) / sum(v["calib_rows"] for v in st["layers"].values())
    assert total == pytest.approx(st["calibration"]["share_skipped"], abs=1e-4)


def test_ffn_runs_on_compacted_rows(llama):
    _, x, c = llama
    g = c.graph
    down = [op for op in g.find("linear") if "down_proj" in op.operands[1].producer.attrs["weight"]]
    kept = [op for op in down if str(op.result.type.shape[0]).startswith("ffn_kept")]
    assert len(kept) == 2 and len(down) == LAYERS  # gated blocks run on [kept rows, D]
    seen = {}
    evaluate(g, [x], observe=lambda op, outs: seen.__setitem__(id(op), outs[0].shape))
    assert all(seen[id(op)][0] < x.numel() for op in kept)


def test_outputs_equal_eager_when_no_gate_fires():
    model = zoo.build("llama", layers=LAYERS)
    x = zoo.example_input("llama")
    c = fxforge.compile_aot(model, (x,), {"use_cache": False}, ffn_skip=0.3, calibration=calib(), executor="reference")
    for gate in c.graph.find("skip_gate"):
        gate.attrs = {**gate.attrs, "threshold": NEVER}
    with torch.no_grad():
        got, ref = c(x, use_cache=False).logits, model(x, use_cache=False).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    counts = c.fxforge_report.ffn_skip
    assert counts["skipped"] == 0 and counts["rows"] == LAYERS * x.numel()


def test_counters_are_exact(llama):
    _, _, c = llama
    before = c.fxforge_report.ffn_skip
    inputs = [zoo.example_input("llama", batch=2, seq=16, seed=21), zoo.example_input("llama", batch=3, seq=9, seed=22)]
    expect = {"rows": 0, "skipped": 0}
    for x in inputs:
        kept = []
        evaluate(c.graph, [x], observe=lambda op, outs: kept.append(len(outs[0])) if op.opcode == "skip_gate" else None)
        expect["rows"] += LAYERS * x.numel()
        expect["skipped"] += sum(x.numel() - k for k in kept)
        c(x, use_cache=False)
    after = c.fxforge_report.ffn_skip
    assert after["rows"] - before["rows"] == expect["rows"]
    assert after["skipped"] - before["skipped"] == expect["skipped"] > 0
    assert after["per_layer"]["model.layers.0.mlp"]["skipped"] == 0


def test_interpret_executor_counts_the_same():
    model = zoo.build("llama", layers=3)
    x = zoo.example_input("llama", batch=2, seq=8)
    opts = dict(ffn_skip=0.2, ffn_skip_protect=[0], calibration=calib(seq=8))
    ref = fxforge.compile_aot(model, (x,), {"use_cache": False}, executor="reference", **opts)
    itp = fxforge.compile_aot(model, (x,), {"use_cache": False}, executor="interpret", **opts)
    a, b = ref(x, use_cache=False).logits, itp(x, use_cache=False).logits
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert ref.fxforge_report.ffn_skip == itp.fxforge_report.ffn_skip
    assert itp.fxforge_report.ffn_skip["skipped"] > 0


def test_ir_text_round_trips(llama):
    _, x, c = llama
    text = print_graph(c.graph)
    again = parse_graph(text, dict(c.graph.weights))
    assert print_graph(again) == text
    torch.testing.assert_close(evaluate(again, [x])[0], evaluate(c.graph, [x])[0])


@pytest.mark.parametrize("gate", ["quadratic", "carry", "oracle"])
def test_other_gates(gate):
    model = zoo.build("llama", layers=LAYERS)
    x = zoo.example_input("llama")
    c = fxforge.compile_aot(model, (x,), {"use_cache": False}, ffn_skip=0.2, ffn_skip_gate=gate, calibration=calib(),
                            executor="reference")
    assert {op.attrs["kind"] for op in c.graph.find("skip_gate")} == {gate}
    assert abs(stats(c)["calibration"]["share_skipped"] - 0.2) <= 0.05
    if gate == "quadratic":  # w over [u, u*u]
        assert {c.graph.weights[n].data.shape[0] for n in c.graph.weights if n.endswith("skip_gate")} == {2 * 64}


def test_no_ffn_block_is_a_note_not_an_error():
    model = zoo.build("mlp")  # norm(x + mlp(x)): the MLP does not read a norm, so it is no FFN block
    x = zoo.example_input("mlp")
    c = fxforge.compile_aot(model, (x,), ffn_skip=0.2, calibration=[(x,)], executor="reference")
    assert "no FFN block" in stats(c)["note"]
    torch.testing.assert_close(c(x), model(x))
    assert c.fxforge_report.ffn_skip == {"rows": 0, "skipped": 0, "share": 0.0, "per_layer": {}}


@pytest.mark.parametrize("options,match", [
    ({"ffn_skip": 0.0}, "ffn_skip"), ({"ffn_skip": 0.95}, "ffn_skip"), ({"ffn_skip": -0.1}, "ffn_skip"),
    ({"ffn_skip": True}, "ffn_skip"), ({"ffn_skip": 0.2, "ffn_skip_gate": "cosine"}, "ffn_skip_gate"),
    ({"ffn_skip": 0.2, "ffn_skip_warmup": -1}, "ffn_skip_warmup"),
    ({"ffn_skip": 0.2, "ffn_skip_overrides": {"*": 2.0}}, "ffn_skip_overrides"),
])
def test_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        fxforge.CompileConfig(**options)


def test_no_calibration_is_refused():
    model = zoo.build("llama", layers=2)
    with pytest.raises(ConfigError, match="calibration"):
        fxforge.compile_aot(model, (zoo.example_input("llama"),), {"use_cache": False}, ffn_skip=0.2, executor="reference")


def test_generate_through_the_jit_counts_decode():
    # two layers, only the first protected (one gated layer): dynamo traces four graphs of this model (calibration's
    # recording, prefill, first decode step, decode at a dynamic cache length), and its time grows with the layers
    layers = 2
    model = zoo.build("llama", layers=layers)
    examples = [{"input_ids": zoo.example_input("llama", batch=2, seq=16, seed=s)} for s in range(3)]
    c = fxforge.compile(model, ffn_skip=0.4, ffn_skip_warmup=2, ffn_skip_protect=[0], calibration=examples,
                        executor="reference")
    prompt = zoo.example_input("llama", batch=1, seq=8, seed=7)
    new = 10
    with torch.no_grad():
        out = c.generate(prompt, max_new_tokens=new, do_sample=False)
    assert out.shape == (1, 8 + new)
    report = c.fxforge_report
    decode = [g for g in report.graphs if g.calls and g.program.graph.inputs[0].type.shape[-1] == 1]
    assert decode, [g.name for g in report.graphs]
    decode_rows = sum(v["rows"] for g in decode for v in g.program.counters.per_layer().values())
    decode_skipped = sum(v["skipped"] for g in decode for v in g.program.counters.per_layer().values())
    assert decode_rows == layers * (new - 1)  # one row per generated position and layer (the last token needs none)
    assert decode_skipped > 0
    assert report.ffn_skip["rows"] == layers * (8 + new - 1)  # calibration examples ran eagerly: not counted


def test_artifact_keeps_gates_and_counters(llama, tmp_path, capsys):
    from fxforge.cli import main

    _, x, c = llama
    path = c.save(str(tmp_path / "art"))
    loaded = fxforge.load(path)
    torch.testing.assert_close(loaded(x, use_cache=False).logits, c(x, use_cache=False).logits)
    counts = loaded.fxforge_report.ffn_skip
    assert counts["rows"] == LAYERS * x.numel() and counts["skipped"] > 0
    assert main(["inspect", path, "--ffn-skip"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp" in out and "calibration:" in out and "quality" in out


def _quantized_skip(model, **kw):
    x = zoo.example_input("llama", batch=2, seq=16, seed=10)
    c = fxforge.compile_aot(model, (x,), {"use_cache": False}, ffn_skip=0.2, calibration=calib(n=2), executor="reference",
                            **kw)
    st = stats(c)
    assert st["blocks"] == LAYERS and "note" not in st
    assert abs(st["calibration"]["share_skipped"] - 0.2) <= 0.03
    c(x, use_cache=False)
    assert c.fxforge_report.ffn_skip["skipped"] > 0
    return c


def test_composes_with_quantization():
    """W8A8 rotates the SwiGLU output online (a `hadamard` before down_proj) and quantizes every GEMM:
    the FFN is still found, and the hadamard and qlinears run on the kept rows."""
    c = _quantized_skip(zoo.build("llama", layers=LAYERS), quantize="w8a8-int8", quantize_method="rtn", rotate=True,
                        rotate_mode="online")
    kept = [op for op in c.graph.ops if op.opcode in ("hadamard", "qlinear")
            and str(op.result.type.shape[0]).startswith("ffn_kept")]
    assert {op.opcode for op in kept} == {"hadamard", "qlinear"}


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"quantize": s} for s in SCHEMES] + [
    {"sparsity": "2:4"}, {"sparsity": "2:4", "quantize": "w8a8-int8"}, {"quantize": "w4a8-fp", "rotate_mode": "online"}])
def test_composes_with_every_scheme(options):
    _quantized_skip(zoo.build("llama", layers=LAYERS), **options)
