"""Weight-only int4 experts of the `moe` op (`passes/moe_quant.py`, run by the quantize pass): the experts' weights
become 3-D `#quantized` consts the MoE templates dequantize, the figures are in the pass statistics, a scheme the
kernels do not read (or an override to None) keeps them 16-bit and says so, and the compiled step survives save and
load."""

from __future__ import annotations

import pytest
import torch

import fxforge
from fxforge.ir.lowp_ops import decode_weight
from fxforge.ir.moe_ops import by_role
from fxforge.ir.types import Quantized
from fxforge.passes.moe_quant import encode_experts
from fxforge.testing import gqa_decoder

IDS = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(0))


def _quantize_stats(dec) -> dict:
    return next(r for g in dec.fxforge_report.graphs for r in g.trace.records if r.name == "quantize").stats


@pytest.fixture(scope="module")
def mixtral():
    return gqa_decoder("mixtral", 1).to(torch.float16)


def test_encode_experts_round_trips_each_expert():
    w = torch.randn(3, 8, 64)
    enc = encode_experts(w, "w4a16-int4", 32)
    assert enc.encoding.format == "i4" and enc.encoding.group == 32 and list(enc.data.shape) == [3, 8, 64]
    assert enc.payload["codes"].shape == (24, 32) and enc.payload["scale"].shape == (24, 2)
    back = decode_weight(enc)
    assert back.shape == w.shape
    assert ((back - w).norm() / w.norm()) < 0.1  # 4-bit, group 32: ~4-6 % of a Gaussian's norm


def test_int4_experts_in_the_step_graph(mixtral):
    dec = fxforge.compile_decoder(mixtral, max_length=16, executor="reference", quantize="w4a16-int4",
                                  quantize_group=32)
    (op,) = dec.graph.find("moe")
    roles = by_role(op.operands, op.attrs)
    for role in ("w_gate_up", "w_down"):
        enc = roles[role].type.encoding
        assert isinstance(enc, Quantized) and enc.format == "i4" and enc.group == 32 and roles[role].type.rank == 3
    stats = _quantize_stats(dec)
    (site,) = stats["moe_experts"]
    figures = stats["moe_experts"][site]
    assert site.endswith("mlp.experts") and figures["scheme"] == "w4a16-int4"
    assert figures["bytes_after"] < 0.35 * figures["bytes_fp16"] and 0 < figures["rel_error"] < 0.1
    assert not any(name.endswith("experts.gate_up_proj") for name in dec.graph.weights)  # the 16-bit copy left


@pytest.mark.parametrize("options,reason", [
    (dict(quantize="w8a8-int8"), "not w8a8-int8"),
    (dict(quantize="w4a16-int4", quantize_overrides={"*.experts": None}), "quantize_overrides"),
])
def test_experts_kept_high_precision_say_why(mixtral, options, reason):
    dec = fxforge.compile_decoder(mixtral, max_length=16, executor="reference", **options)
    (op,) = dec.graph.find("moe")
    assert by_role(op.operands, op.attrs)["w_gate_up"].type.encoding is None
    stats = _quantize_stats(dec)
    (why,) = [v for k, v in stats["skipped"].items() if k.endswith("mlp.experts")]
    assert reason in why and not stats["moe_experts"]


def test_saved_int4_moe_decoder_generates_the_same_after_load(mixtral, tmp_path):
    dec = fxforge.compile_decoder(mixtral, max_length=16, executor="reference", quantize="w4a16-int4",
                                  quantize_group=32)
    want = dec.generate(IDS, max_new_tokens=4)
    dec.save(str(tmp_path / "moe"))
    assert torch.equal(fxforge.load(str(tmp_path / "moe")).generate(IDS, max_new_tokens=4), want)


def test_export_refuses_int4_experts_and_names_the_fix(mixtral, tmp_path):
    from fxforge.errors import ExportError

    compiled = fxforge.compile_aot(mixtral, (IDS,), executor="reference", quantize="w4a16-int4", quantize_group=32)
    with pytest.raises(ExportError, match=r"experts are int4.*quantize_overrides"):
        compiled.export(str(tmp_path / "ct"))


def test_odd_expert_dims_stay_16_bit_and_say_why():
    model = gqa_decoder("mixtral", 1, intermediate_size=63).to(torch.float16)
    dec = fxforge.compile_decoder(model, max_length=16, executor="reference", quantize="w4a16-int4")
    (why,) = [v for k, v in _quantize_stats(dec)["skipped"].items() if k.endswith("mlp.experts")]
    assert "must be even" in why
