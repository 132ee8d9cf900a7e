"""The frontend keeps every result of multi-result ATen ops (issue #7.1): lowered to IR ops where
it can (layer norm's statistics, topk, sort, var_mean, max/min, chunk, unbind, inference batch
norm), else one extern with one result per tensor torch returns; and what it cannot run at all is
a CaptureError, never a foreign exception."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx

from fxforge.errors import CaptureError
from fxforge.frontend.export import capture_export
from fxforge.frontend.fx_to_ir import FxToIR
from fxforge.ir.evaluate import evaluate
from fxforge.ir.verify import verify

aten = torch.ops.aten


class Stats(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(8))
        self.bn = torch.nn.BatchNorm1d(4).eval()
        self.bn.running_mean.normal_()
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y, mean, rstd = aten.native_layer_norm(x, [8], self.w, self.b, 1e-5)
        a, b, c = x.chunk(3, dim=1)
        u0, u1 = x[:, :2].unbind(1)
        return y, mean, rstd, a + b, c, u0 * u1, self.bn(x[:, :, :4].transpose(1, 2))


def test_all_results_lowered_without_externs():
    torch.manual_seed(0)
    model = Stats().eval()
    x = torch.randn(2, 6, 8)
    lowered = capture_export(model, (x,)).lowered
    graph = lowered.graph
    verify(graph)
    assert lowered.externs == {}, lowered.notes
    assert "layer_norm" in graph.op_counts()
    got = evaluate(graph, [x])
    with torch.no_grad():
        expected = model(x)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_unlowered_result_runs_the_op_as_one_multi_result_extern():
    """attention's logsumexp (result 1) has no IR op: the node becomes one extern with both results."""
    gm = torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())
    g = gm.graph
    q = g.placeholder("q")
    q.meta["val"] = torch.empty(1, 2, 4, 8)
    node = g.call_function(aten._scaled_dot_product_flash_attention_for_cpu.default, (q, q, q))
    node.meta["val"] = aten._scaled_dot_product_flash_attention_for_cpu.default(q.meta["val"], q.meta["val"], q.meta["val"])
    outs = []
    for i in range(2):
        outs.append(g.call_function(operator.getitem, (node, i)))
        outs[-1].meta["val"] = node.meta["val"][i]
    g.output(tuple(outs))
    lowered = FxToIR(gm, {}).run({})
    (op,) = [op for op in lowered.graph.ops if op.opcode == "extern"]
    assert len(op.results) == 2 and [r.type.dtype.ir_name for r in op.results] == ["f32", "f32"]
    assert lowered.graph.outputs == op.results
    verify(lowered.graph)
    x = torch.randn(1, 2, 4, 8)
    got = evaluate(lowered.graph, [x])
    expected = aten._scaled_dot_product_flash_attention_for_cpu.default(x, x, x)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected[:2], strict=True))


def test_a_node_that_cannot_run_is_a_capture_error():
    gm = torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())
    g = gm.graph
    x = g.placeholder("x")
    x.meta["val"] = torch.empty(2, 3)
    node = g.call_function(torch.nn.functional.softsign, (x,))  # not an ATen op: no extern possible
    node.meta["val"] = torch.empty(2, 3)
    g.output(node)
    with pytest.raises(CaptureError, match="softsign"):
        FxToIR(gm, {}).run({})
