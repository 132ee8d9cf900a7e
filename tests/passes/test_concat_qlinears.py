"""concat_linears on quantized siblings (issue #13 item 3): `qlinear`s that read one input with the same
scheme, act_format, group and encoding (no LoRC) become one `qlinear` whose `#quantized` payload is the
parts stacked along the output dim. Every part (codes, scale, zero, shift) is per output row, so the
stacked weight decodes to exactly the concatenation of the originals, in a decode layout as well."""

from __future__ import annotations

import pytest
import torch

from fxforge.ir import DType, Graph, TensorType, evaluate, sym, verify
from fxforge.ir.lowp_ops import decode_weight, encode_weight
from fxforge.ir.weight_layouts import to_decode_layout
from fxforge.passes import PassContext
from fxforge.passes.concat_linears import ConcatLinears, permute_rows, stack_weights
from fxforge.passes.dce import DeadCodeElimination

S0 = sym("s0")


def _weights(scheme: str, group: int | None, outs=(64, 32, 32), k: int = 96) -> list:
    gen = torch.Generator().manual_seed(0)
    return [encode_weight(torch.randn(n, k, generator=gen) * (1 + i), scheme, group) for i, n in enumerate(outs)]


@pytest.mark.parametrize("scheme,group", [("w4a16-int4", 32), ("w4a16-int4", 64), ("w4a8-fp", 32),
                                          ("w8a8-int8", None), ("w8a8-fp8", None)])
def test_stacked_payload_decodes_bit_for_bit(scheme, group):
    parts = _weights(scheme, group)  # K 96 with group 64: a partial last group
    stacked = stack_weights(parts)
    assert stacked.encoding == parts[0].encoding and tuple(stacked.data.shape) == (128, 96)
    assert torch.equal(decode_weight(stacked), torch.cat([decode_weight(w) for w in parts]))
    if scheme in ("w4a16-int4", "w4a8-fp") and group == 32:  # decode_layout re-encodes the stacked weight
        assert torch.equal(decode_weight(to_decode_layout(stacked)), decode_weight(stacked))


@pytest.mark.parametrize("scheme", ["w4a16-int4", "w4a8-fp"])
def test_permuted_rows_decode_bit_for_bit(scheme):
    """`permute_rows` (decode_layout's gate/up interleave) moves every payload part with its row."""
    stacked = stack_weights(_weights(scheme, 32, outs=(16, 16)))
    perm = torch.stack([torch.arange(16), torch.arange(16, 32)], dim=1).reshape(-1)
    assert torch.equal(decode_weight(permute_rows(stacked, perm)), decode_weight(stacked)[perm])


def test_different_encodings_refuse_to_stack():
    a, = _weights("w4a16-int4", 32, outs=(16,))
    b, = _weights("w4a16-int4", 64, outs=(16,))
    with pytest.raises(ValueError, match="differ"):
        stack_weights([a, b])


def _siblings(specs: list[tuple[str, int | None, int]]) -> Graph:
    """x [s0, 96] read by one qlinear per (scheme, group, lorc_rank); each result an output."""
    g = Graph()
    x = g.add_input("x", TensorType((S0, 96), DType.f32))
    outs = []
    for i, (scheme, group, rank) in enumerate(specs):
        w = encode_weight(torch.randn(32, 96, generator=torch.Generator().manual_seed(i)), scheme, group)
        operands = [x, g.add_op("const", [], {"weight": g.add_weight(f"layer.p{i}.weight", w)}).result]
        if rank:
            operands += [g.add_op("const", [], {"weight": g.add_weight(f"layer.p{i}.{n}", torch.randn(*shape))}).result
                         for n, shape in (("u", (32, rank)), ("v", (96, rank)))]
        act = "i8" if scheme == "w8a8-int8" else None
        outs.append(g.add_op("qlinear", operands, {"scheme": scheme, "act_format": act, "group": w.encoding.group,
                                                   "lorc_rank": rank}).result)
    g.set_outputs(outs)
    return g


def test_pass_stacks_only_matching_qlinears_and_keeps_the_results():
    specs = [("w4a16-int4", 32, 0), ("w8a8-int8", None, 0), ("w4a16-int4", 32, 0), ("w4a16-int4", 64, 0),
             ("w4a16-int4", 32, 4), ("w4a16-int4", 32, 0), ("w8a8-int8", None, 0)]
    g = _siblings(specs)
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(9))
    want = evaluate(g, [x])
    ctx = PassContext()
    ConcatLinears().run(g, ctx)
    DeadCodeElimination().run(g, PassContext())
    verify(g)
    # p0 + p2 + p5 (int4 group 32) and p1 + p6 (int8); group 64 and the LoRC one stay alone
    assert ctx.stats == {"groups": 2, "linears": 5} and g.op_counts()["qlinear"] == 4
    assert {"layer.{p0+p2+p5}.weight", "layer.{p1+p6}.weight", "layer.p3.weight", "layer.p4.weight"} <= set(g.weights)
    for a, b in zip(evaluate(g, [x]), want):  # the weights are exact; only the GEMM's summation may differ
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
