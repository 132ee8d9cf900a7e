"""plot_quant / plot_histograms / plot_nm_mask / plot_ffn_skip draw the passes' recorded figures."""

import pytest
import torch

from fxforge import testing as zoo
from fxforge.errors import ConfigError
from fxforge.inspect import layer_errors, nm_mask, plot_ffn_skip, plot_histograms, plot_nm_mask, plot_quant, skip_by_token, skip_shares

Q = "model.layers.1.self_attn.q_proj.weight.nm"


def test_quant_points_are_each_linears_error_and_bytes(compressed):
    layers = layer_errors(compressed, "quantize")
    assert len(layers) == 2 * 7
    fig = plot_quant({"w4a16": compressed, "2:4": compressed.record.trace}, pass_name="quantize")
    scatter, lines = fig.axes
    pts = scatter.collections[0].get_offsets()
    assert list(pts[:, 0]) == [v["bytes_after"] for v in layers.values()]
    assert list(pts[:, 1]) == pytest.approx([v["rel_error"] for v in layers.values()])
    assert len(lines.lines) == 2 and scatter.get_title() == "quantize: error vs bytes per linear"


def test_sparsity_errors_come_from_the_sparsify_record(sparse):
    ax = plot_quant(sparse, pass_name="sparsify").axes[0]
    assert ax.get_legend().get_texts()[0].get_text() == "sparsify: magnitude"
    assert len(ax.collections[0].get_offsets()) == 2 * 7
    with pytest.raises(KeyError, match="it ran"):
        plot_quant(sparse, pass_name="quantize")


def test_histograms_one_curve_per_stage_and_the_outlier_ratio():
    w = torch.randn(64, 64)
    w[0, 0] = 40.0
    fig = plot_histograms({"original": w, "rotated": w / 10}, {"original": torch.randn(8, 64)}, name="q_proj")
    wax, aax = fig.axes
    assert len(wax.patches) == 2 and len(aax.patches) == 1
    ratio = float(w.abs().max() / w.pow(2).mean().sqrt())
    assert f"original {ratio:.1f}" in wax.get_title() and wax.get_title().startswith("q_proj weights")


def test_nm_mask_is_read_from_the_encoding(sparse):
    weight = sparse.graph.weights[Q]
    mask = nm_mask(weight)
    assert mask.shape == weight.data.shape
    assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
    fig = plot_nm_mask(sparse.graph, Q, tile=(8, 16))
    ax = fig.axes[0]
    assert (ax.images[0].get_array() == mask[:8, :16].float().numpy()).all()
    assert len(ax.lines) == 3  # block boundaries at 4, 8, 12
    assert "2:4 mask" in ax.get_title() and "50% kept" in ax.get_title()
    with pytest.raises(ConfigError, match="N:M weights"):
        plot_nm_mask(sparse.graph, "model.norm.weight.nope")
    with pytest.raises(ConfigError, match="sparsity='2:4'"):
        plot_nm_mask(sparse.graph, "model.norm.weight")


def test_ffn_skip_heat_map_is_the_counted_share(skipping):
    inputs = {f"text {s}": zoo.example_input("llama", batch=1, seq=16, seed=s) for s in (7, 8, 9)}
    shares = skip_shares(skipping, inputs)
    assert set(shares) == set(inputs) and all(len(v) == 4 for v in shares.values())
    assert any(v > 0 for s in shares.values() for v in s.values())
    fig = plot_ffn_skip(skipping, shares)
    heat, curve = fig.axes[:2]
    grid = heat.images[0].get_array()
    assert grid.shape == (4, 3)
    assert grid[1, 0] == pytest.approx(shares["text 7"]["model.layers.1.mlp"])
    gated = [s for s, v in skipping.record.trace.record("ffn_skip").stats["layers"].items() if v["gated"]]
    assert len(curve.lines) == 2 * len(gated) > 0
    calib = plot_ffn_skip(skipping.record.trace).axes[0]
    assert [t.get_text() for t in calib.get_xticklabels()] == ["calibration"]


def test_ffn_skip_per_token_adds_up_to_the_whole_sequence(skipping):
    ids = torch.tensor([list(b"The quick brown fox jumps.")])
    tokens = skip_by_token(skipping, ids, labels=[chr(c) for c in ids[0]])
    assert len(tokens) == ids.shape[1] and all(v in (0.0, 1.0) for t in tokens.values() for v in t.values())
    whole = skip_shares(skipping, {"all": ids})["all"]
    for site, share in whole.items():  # causal: the per-token skips are the whole sequence's
        assert sum(t[site] for t in tokens.values()) == round(share * ids.shape[1])
    assert any(v for t in tokens.values() for v in t.values())
    heat = plot_ffn_skip(skipping, tokens, columns="token").axes[0]
    assert heat.get_title() == "share of FFN rows skipped (layer x token)"
    assert heat.images[0].get_array().shape == (4, ids.shape[1]) and heat.get_xticklabels()[0].get_text() == "0:T"
