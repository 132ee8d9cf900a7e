"""N:M-pruned zoo models through the generated Triton module (CPU interpreter): every pruned linear runs
the sparse template (`_nm_linear` for 16-bit kept values, `_nm_qlinear` for quantized ones) with its GEMM
group's epilogue fused, the encoded weight is never decoded whole, the report names the path per layer,
and the logits match the reference executor (and, for plain sparsity, eager on the pruned weights).

Tolerances as max |error| / max |reference|: 1e-5 per layer call (same values, accumulation order only)
and 1e-4 on the logits without activation quantization; 5e-3 with it (a per-token int8/fp8 activation
code on a rounding boundary may flip in one executor: see test_qlinear_models.py).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fxforge  # noqa: E402
import fxforge.runtime.triton_executor  # noqa: E402, F401  (registers the interpret/triton executors)
from fxforge import testing as zoo  # noqa: E402
from fxforge.ir.evaluate import WEIGHT_DECODERS  # noqa: E402
from fxforge.ir.graph import Weight  # noqa: E402
from fxforge.ir.lowp_ops import get_scheme, qlinear_ref  # noqa: E402
from fxforge.ir.nm import decode_nm  # noqa: E402

EPILOGUE = {"none": lambda t: t, "silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


def _checked(template, quantized: bool, diffs: list[float], calls: list[str]):
    """The sparse template, each call compared with torch on the decoded weight and the same inputs."""

    def call(x, weight, *args, **kw):
        assert isinstance(weight, Weight) and weight.encoding.kind == "nm", "the template must get the #nm weight"
        y = template(x, weight, *args, **kw)
        w = decode_nm(weight).float()
        if quantized:
            scheme, bias = args[0], (args[1] if len(args) > 1 else None)
            want = qlinear_ref(x, w, *([bias] if bias is not None else []), scheme=scheme,
                               act_format=get_scheme(scheme).act_format, group=weight.encoding.group, lorc_rank=0).float()
        else:
            bias = args[0] if args else None
            want = F.linear(x.float(), w, None if bias is None else bias.float()) * kw.get("scale", 1.0)
        act = kw.get("activation", "none")
        want = EPILOGUE[act](want)
        if kw.get("mul") is not None:
            want = want * kw["mul"].float()
        if kw.get("residual") is not None:
            want = want + kw["residual"].float()
        diffs.append(((y.float() - want).abs().max() / want.abs().max()).item())
        calls.append(act + ("+mul" if kw.get("mul") is not None else "") + ("+residual" if kw.get("residual") is not None else ""))
        return y

    return call


def _compile_pair(model, example, monkeypatch, **options):
    decoded: list[str] = []
    real = WEIGHT_DECODERS["nm"]
    monkeypatch.setitem(WEIGHT_DECODERS, "nm", lambda w: decoded.append(str(w.encoding)) or real(w))
    compiled = fxforge.compile_aot(model, example, executor="interpret", **options)
    assert decoded == [], "the interpret executor decoded whole #nm weights"
    monkeypatch.undo()
    reference = fxforge.compile_aot(model, example, executor="reference", **options)
    return compiled, reference


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_pruned_llama_runs_the_sparse_template(pattern, monkeypatch):
    model = zoo.build("llama")
    example = (zoo.example_input("llama", batch=2, seq=8),)
    compiled, reference = _compile_pair(model, example, monkeypatch, sparsity=pattern)
    module = compiled.program.executor.module
    assert module.source.count("= _nm_linear(") == 14  # 2 layers x 7 linears; lm_head stays dense
    assert "_decode_weight" not in module.source and "OPS['linear']" not in module.source
    paths = compiled.fxforge_report.sparse_paths
    assert len(paths) == 14 and set(paths.values()) == {"nm_linear template"}
    assert set(reference.fxforge_report.sparse_paths.values()) == {"reference executor: ir.evaluate on the decoded weight"}

    diffs: list[float] = []
    calls: list[str] = []
    monkeypatch.setattr(module.module, "_nm_linear", _checked(module.module._nm_linear, False, diffs, calls))
    x = zoo.example_input("llama", batch=2, seq=5, seed=5)
    got, want = compiled(x).logits, reference(x).logits
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4
    assert len(diffs) == 14 and max(diffs) <= 1e-5, max(diffs)
    # the dense epilogue stays fused: gate_proj takes silu, up_proj SwiGLU's mul, o/down_proj the residual
    assert calls.count("silu") == 2 and calls.count("none+mul") == 2 and calls.count("none+residual") == 4

    # eager on the pruned (decoded) weights: the same function
    pruned = zoo.build("llama")
    with torch.no_grad():
        for name, w in compiled.graph.weights.items():
            if w.encoding is not None and w.encoding.kind == "nm":
                pruned.get_submodule(name.removesuffix(".weight.nm")).weight.copy_(decode_nm(w))
    eager = pruned(x, use_cache=False).logits
    assert ((got - eager).abs().max() / eager.abs().max()).item() <= 1e-4
    assert not torch.allclose(eager, model(x, use_cache=False).logits, atol=1e-3)  # pruning did change it


@pytest.mark.parametrize("scheme", ["w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp"])
def test_pruned_and_quantized_llama_runs_the_sparse_qlinear_template(scheme, monkeypatch):
    model = zoo.build("llama")
    example = (zoo.example_input("llama", batch=2, seq=8),)
    options = {"sparsity": "2:4", "quantize": scheme, "quantize_group": 16 if scheme == "w4a16-int4" else None}
    compiled, reference = _compile_pair(model, example, monkeypatch, **options)
    module = compiled.program.executor.module
    assert module.source.count("= _nm_qlinear(") == 14
    assert set(compiled.fxforge_report.sparse_paths.values()) == {f"nm_qlinear template ({scheme})"}
    diffs: list[float] = []
    calls: list[str] = []
    monkeypatch.setattr(module.module, "_nm_qlinear", _checked(module.module._nm_qlinear, True, diffs, calls))
    x = zoo.example_input("llama", batch=2, seq=5, seed=5)
    got, want = compiled(x).logits, reference(x).logits
    tol = 1e-4 if get_scheme(scheme).act_format is None else 5e-3
    assert ((got - want).abs().max() / want.abs().max()).item() <= tol
    assert len(diffs) == 14 and max(diffs) <= 1e-5, max(diffs)
    assert calls.count("silu") == 2 and calls.count("none+residual") == 4


def test_bert_gelu_epilogue_and_bias_on_the_sparse_template(monkeypatch):
    """A BERT encoder (biases, GELU): its pruned linears take bias + gelu / residual in the sparse kernel."""
    model = zoo.build("bert")
    example = (zoo.example_input("bert", batch=2, seq=8),)
    compiled, reference = _compile_pair(model, example, monkeypatch, sparsity="2:4")
    paths = compiled.fxforge_report.sparse_paths
    assert paths and set(paths.values()) == {"nm_linear template"}
    got, want = compiled(*example), reference(*example)
    got, want = got.last_hidden_state, want.last_hidden_state
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4
    assert "activation='gelu'" in compiled.program.executor.module.source


def test_a_pattern_the_template_cannot_tile_runs_on_the_host_and_says_so():
    """M = 3 does not divide the template's 32-column K tile: the layer runs as host torch on the decoded
    weight, the report says so, and the result still equals the reference executor's."""
    model, x = zoo.build("mlp"), zoo.example_input("mlp")
    interp = fxforge.compile_aot(model, (x,), sparsity="1:3", executor="interpret")
    ref = fxforge.compile_aot(model, (x,), sparsity="1:3", executor="reference")
    paths = interp.fxforge_report.sparse_paths
    assert set(paths) == {"up", "down"} and all(p.startswith("host torch (decoded weight)") for p in paths.values())
    assert "_nm_linear" not in interp.program.executor.module.source
    assert torch.allclose(interp(x), ref(x), atol=1e-5, rtol=1e-5)
