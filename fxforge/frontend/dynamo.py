"""JIT capture: what the torch.compile backend hands fxforge.

Dynamo passes the backend real example inputs, parameters among them; aot_autograd then gives an
ATen graph whose placeholders are those same inputs in the same order. Parameters and buffers of
the compiled model (found by identity) become weights of the graph, the rest stay inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx

from fxforge.frontend.fx_to_ir import FxToIR, Lowered


def tensor_names(model: torch.nn.Module | None) -> dict[int, str]:
    """id(tensor) -> qualified name, for the model's parameters and buffers (tied ones: first name)."""
    if model is None:
        return {}
    names: dict[int, str] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), name)
    return names


def lower_aten_graph(gm: torch.fx.GraphModule, real_inputs: Sequence[object], names: dict[int, str],
                     graph_name: str) -> Lowered:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    weights: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    if len(placeholders) == len(real_inputs):  # aot_autograd kept dynamo's argument order
        for node, x in zip(placeholders, real_inputs):
            if isinstance(x, torch.Tensor) and id(x) in names:
                weights[node.name] = names[id(x)]
                tensors[names[id(x)]] = x.detach()
    return FxToIR(gm, weights, graph_name).run(tensors)
