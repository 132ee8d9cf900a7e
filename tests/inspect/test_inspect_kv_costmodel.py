"""plot_ksort / plot_kv_cache draw K-sort and the KV-cache formats from the compiled graph and the passes'
records; plot_costmodel draws the cost model's predictions against measured kernels and the budget's plan."""

import pytest
import torch

from fxforge.costmodel import dataset
from fxforge.costmodel.metrics import spearman
from fxforge.costmodel.models import shipped_model
from fxforge.errors import ConfigError
from fxforge.inspect import k_channels, kv_bytes, plot_costmodel, plot_ksort, plot_kv_cache, predictions
from fxforge.ir.kv_ops import kv_bytes_per_element, kv_quant_ref


def test_ksort_reads_k_in_computed_order_and_its_permutation(ksorted):
    c, cal, planted = ksorted
    k, perms = k_channels(c, cal, layer=0)
    assert k.shape == (1, 2 * 16, 64) and sorted(perms[0].tolist()) == list(range(64))
    rms = k[0].pow(2).mean(0).sqrt()
    assert sorted(torch.topk(rms, 4).indices.tolist()) == planted  # the planted channels, where the model has them
    fig = plot_ksort(c, cal, layer=0, head=0)
    before, after, errors = fig.axes
    assert [p.get_height() for p in before.patches] == pytest.approx(rms.tolist())
    assert [p.get_height() for p in after.patches] == pytest.approx(rms[perms[0]].tolist())
    stored_block = {str(before.patches[ch].get_facecolor()) for ch in planted}
    assert len(stored_block) == 1  # K-sort stores the outliers together: one colour, one block
    assert len(before.lines) == len(after.lines) == 3  # block edges at 16, 32, 48
    head = c.record.trace.record("ksort").stats["layers"]["0"]["heads"]["0"]
    assert [p.get_height() for p in errors.patches] == pytest.approx([head["error_off"], head["error_on"]])
    assert head["error_on"] < head["error_off"] and f"{head['error_on']:.3g}" in after.get_title()


def test_ksort_without_the_pass_says_how_to_get_it(dense, ksorted):
    with pytest.raises(ConfigError, match="k_sort='auto'"):
        plot_ksort(dense, ksorted[1])
    with pytest.raises(ConfigError, match="no K permutation"):
        k_channels(ksorted[0], ksorted[1], layer=3)


def test_kv_bytes_per_format_are_measured_and_match_the_pass(ksorted):
    c, cal, _ = ksorted
    sizes = kv_bytes(c)
    assert sizes["bfp4"] == c.record.trace.record("kv_cache").stats["bytes_per_token"]
    for fmt in ("bfp4", "bfp8", "fp8", "int8"):  # one layer, one KV head of 64: K and V
        assert sizes[fmt] == 2 * 64 * kv_bytes_per_element(fmt, 16)
    assert sizes["fp16"] == 2 * 64 * 2
    k, perms = k_channels(c, cal)
    samples = {"K": k[0], "K sorted": k[0][:, perms[0]]}
    fig = plot_kv_cache(c, samples)
    bytes_ax, err_ax = fig.axes
    assert [p.get_height() for p in bytes_ax.patches] == list(sizes.values())
    want = [float((k[0] - kv_quant_ref(k[0], format=f, block=16)).norm() / k[0].norm()) for f in ("bfp4", "bfp8", "fp8", "int8")]
    heights = [p.get_height() for p in err_ax.patches]
    assert heights[:4] == pytest.approx(want) and want[0] > want[1]
    assert heights[4] < heights[0]  # bfp4 stores the K-sorted K better
    with pytest.raises(ConfigError, match="kv_cache='bfp4'"):
        kv_bytes(c.record.trace.__class__([]))


def test_costmodel_scatter_is_the_shipped_models_prediction():
    path = dataset.DATA_DIR / "kernels-v1-2026-11-30-cpu-build-1.json"
    rows = dataset.load(path)["rows"][:24]
    p = predictions(rows)
    model = shipped_model()
    assert p["measured"] == [float(r["registers"]) for r in rows if "registers" in r]
    assert p["predicted"] == pytest.approx([model.predict(r["features"])["registers"] for r in rows if "registers" in r])
    ax = plot_costmodel(rows).axes[0]
    pts = ax.collections[0].get_offsets().tolist() + ax.collections[1].get_offsets().tolist()
    assert len(pts) == len(p["measured"])
    assert f"Spearman {spearman(p['predicted'], p['measured']):.2f}" in ax.get_title()
    both = plot_costmodel(rows, target=("registers", "instructions")).axes
    assert [ax.get_xlabel() for ax in both] == ["measured registers", "measured instructions"]
    with pytest.raises(ConfigError, match="no row has a measured 'time'"):
        predictions(rows, target="time")  # CPU builds measure no time
    with pytest.raises(ConfigError, match="not 'time'"):
        predictions([{**r, "time": 1e-6} for r in rows], target="time")  # nor is the shipped model trained on it
    with pytest.raises(ConfigError, match="rows .* or a plan"):
        plot_costmodel()


def test_plan_bars_are_the_chosen_rewrite_per_site(planned):
    plan = planned.record.plan
    ax = plot_costmodel(plan=plan).axes[0]
    sites = list(plan["plan"])
    dense = ax.containers[0]
    chosen = [p for cont in ax.containers[1:] for p in cont]
    assert [p.get_height() for p in dense] == [next(c["bytes"] for c in plan["candidates"][s] if c["choice"] == "dense")
                                               for s in sites]
    assert sorted(p.get_height() for p in chosen) == sorted(plan["plan"][s]["weight_bytes"] for s in sites)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"dense bytes"} | {v["choice"] for v in plan["plan"].values()}
    assert f"budget {plan['budget']}" in ax.get_title() and "met" in ax.get_title()
