"""Block-output reconstruction after N:M pruning (`passes/sparsify_refine.py`, option `sparsity_refine`):
blocks found on real HF graphs (llama: the residual add after down_proj; BERT: the residual add before the output LayerNorm), the kept
values refit with the masks fixed, the block loss and the model's error against dense lowered, composed
layers (sparsity + quantize) refined before their kept values are quantized, and it stays off without
calibration and at 0 steps."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.errors import ConfigError
from fxforge.ir.nm import decode_nm
from fxforge.passes.sparsify_refine import blocks


def _tokens(seed: int, seq: int = 32, batch: int = 1) -> torch.Tensor:
    """Token ids from a 16-token vocabulary: inputs with structure (i.i.d. ids over the whole vocabulary
    give a random model nothing to generalise from, and the held-out check rightly refuses the refit)."""
    return torch.randint(3, 19, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _calib(name: str, n: int = 16, seq: int = 32):
    return [(_tokens(100 + s, seq),) for s in range(n)]


def _compile(model, calib, **options):
    return fxforge.compile_aot(model, calib[0], sparsity="2:4", calibration=calib, **options)


def _nm_weights(compiled):
    return {k: w for k, w in compiled.graph.weights.items() if w.encoding is not None and w.encoding.kind == "nm"}


@pytest.mark.slow
def test_refit_keeps_masks_and_brings_the_model_closer_to_dense():
    model = zoo.build("llama")
    calib = _calib("llama")
    plain = _compile(model, calib, sparsity_refine=0)
    refined = _compile(model, calib, sparsity_refine=40)
    st = refined.record.trace.record("sparsify").stats
    assert "refine" not in plain.record.trace.record("sparsify").stats
    assert list(st["refine"]["blocks"]) == ["model.layers.0", "model.layers.1"]
    for b in st["refine"]["blocks"].values():
        assert b["held_out"] and b["refined"] and b["loss_after"] < b["loss_before"]
    a, b = _nm_weights(plain), _nm_weights(refined)
    assert a.keys() == b.keys() and len(a) == 14
    for k in a:  # same masks (index streams), different kept values
        assert torch.equal(a[k].payload["index"], b[k].payload["index"])
    assert any(not torch.equal(a[k].payload["values"], b[k].payload["values"]) for k in a)
    assert all(((decode_nm(b[k]) != 0) <= (decode_nm(a[k]) != 0) | (decode_nm(a[k]) == 0)).all() for k in a)

    def error(c, x):
        want = model(x, use_cache=False).logits
        return ((c(x).logits - want).norm() / want.norm()).item()

    # on the held-out calibration examples and on new inputs of the same distribution
    for x in [calib[-1][0], _tokens(7, 16)]:
        assert error(refined, x) < 0.8 * error(plain, x)  # measured ~0.6x


def test_blocks_of_a_bert_encoder_end_at_the_residual_add():
    model = zoo.build("bert")
    calib = _calib("bert", n=4, seq=16)
    refined = _compile(model, calib, sparsity_refine=5)
    graph = refined.graph
    st = refined.record.trace.record("sparsify").stats["refine"]
    assert list(st["blocks"]) == ["encoder.layer.0", "encoder.layer.1", "pooler.dense"]  # a linear alone: its own block
    from fxforge.passes.sparsify import _pruned_ops

    layers = _pruned_ops(graph, refined.record.trace.record("sparsify").stats["layers"])
    found = blocks(graph, layers)
    assert [len(names) for names, *_ in found] == [6, 6, 1]  # q, k, v, attention out, intermediate, output
    for _, _, cut, targets in found[:2]:
        # the residual add feeding the output LayerNorm (beside values no weight changes: the expanded mask)
        assert graph.ops[cut].opcode == "add" and any(t is graph.ops[cut].result for t in targets)
        assert [u.opcode for u in graph.ops[cut].result.uses] == ["layer_norm"]


def test_default_on_with_calibration_only():
    model = zoo.build("mlp")
    x = zoo.example_input("mlp")
    calib = [(zoo.example_input("mlp", batch=1, seed=s),) for s in range(4)]
    on = fxforge.compile_aot(model, (x,), sparsity="2:4", calibration=calib).record.trace.record("sparsify").stats
    assert on["refine"]["steps"] > 0 and on["method"] == "sparsegpt"
    off = fxforge.compile_aot(model, (x,), sparsity="2:4").record.trace.record("sparsify").stats
    assert "refine" not in off


def test_composed_layers_are_refined_then_quantized_with_the_mask_fixed():
    """sparsity + quantize: prune, refit the 16-bit kept values on block outputs, then GPTQ the survivors
    (`passes/sparsify_quant.py`); the one-shot path (refine 0) prunes and quantizes in one solve."""
    model = zoo.build("bert")
    calib = _calib("bert", n=8, seq=16)
    runs = {r: _compile(model, calib, quantize="w8a8-int8", sparsity_refine=r) for r in (0, 10)}
    st = runs[10].record.trace.record("sparsify").stats
    assert list(st["refine"]["blocks"]) == ["encoder.layer.0", "encoder.layer.1", "pooler.dense"]
    assert any(b["refined"] and b["loss_after"] < b["loss_before"] for b in st["refine"]["blocks"].values())
    assert all(v["quantized_after_refine"] and v["quantized_with"] == "gptq" and v["scheme"] == "w8a8-int8"
               for v in st["layers"].values()) and len(st["layers"]) == 13
    assert "refine" not in runs[0].record.trace.record("sparsify").stats
    for c in runs.values():
        qlinears = [op for op in c.graph.ops if op.opcode == "qlinear"]
        assert len(qlinears) == 13 and all(op.operands[1].type.encoding.scheme == "w8a8-int8" for op in qlinears)

    def error(c, x):
        with torch.no_grad():
            want = model(x).last_hidden_state
            return ((c(x).last_hidden_state - want).norm() / want.norm()).item()

    for x in [calib[-1][0], _tokens(7, 16)]:  # a held-out calibration example and a new input
        assert error(runs[10], x) < 0.85 * error(runs[0], x)  # measured 0.62x, 0.70x


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_bad_refine_option_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="sparsity_refine"):
        fxforge.CompileConfig(sparsity="2:4", sparsity_refine=bad)


def test_cli_flag_sets_the_option(tmp_path):
    from fxforge.cli.app import build_parser
    from fxforge.cli.compile import config_from_args

    args = build_parser().parse_args(["compile", "m.py:f", "-o", str(tmp_path / "o"), "--sparsity", "2:4",
                                      "--sparsity-refine", "12"])
    assert config_from_args(args).sparsity_refine == 12


def test_many_runs_fit_in_cycling_minibatches():
    """Mixed-length calibration makes one run per length: a step fits a bounded slice, and every run is
    visited within ceil(n / MAX_RUNS_PER_STEP) steps."""
    from fxforge.passes.sparsify_refine import MAX_RUNS_PER_STEP, _minibatch

    runs = list(range(3 * MAX_RUNS_PER_STEP + 3))
    assert _minibatch(runs[:MAX_RUNS_PER_STEP], 5) == runs[:MAX_RUNS_PER_STEP]
    slices = [_minibatch(runs, step) for step in range(1, 5)]
    assert all(len(s) == MAX_RUNS_PER_STEP for s in slices)
    assert set().union(*slices) == set(runs)
