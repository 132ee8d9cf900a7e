"""JIT capture: what the torch.compile backend hands fxforge.

Dynamo passes the backend real example inputs, parameters among them; aot_autograd then gives an
ATen graph whose placeholders are those same inputs in the same order. Parameters and buffers of
the compiled model (found by identity) become weights of the graph, the rest stay inputs.

Decisions:
- A buffer the forward writes (a counter, a KV cache kept as a buffer, BatchNorm running stats in
  train mode) stays a graph *input*, never a weight: a weight is a constant to the passes (folded,
  quantized), so its new value would be lost. aot_autograd functionalizes the write into an extra
  graph output and its runtime wrapper copies that output back into the buffer after each call
  (`fw_metadata.input_info[i].mutates_data`, torch 2.11 and 2.13). When the metadata is missing,
  every buffer stays an input (safe, only slower).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx

from fxforge.frontend.fx_to_ir import FxToIR, Lowered


def buffer_ids(model: torch.nn.Module | None) -> frozenset[int]:
    return frozenset(id(b) for b in model.buffers()) if model is not None else frozenset()


def tensor_names(model: torch.nn.Module | None) -> dict[int, str]:
    """id(tensor) -> qualified name, for the model's parameters and buffers (tied ones: first name)."""
    if model is None:
        return {}
    names: dict[int, str] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), name)
    return names


def mutated_inputs(n_inputs: int) -> set[int] | None:
    """Positions of the flat inputs the graph being compiled writes (aot_autograd's metadata of the
    graph it is compiling now), or None when it cannot be read."""
    from torch._guards import TracingContext

    ctx = TracingContext.try_get()
    meta = getattr(ctx, "fw_metadata", None) if ctx is not None else None
    info = getattr(meta, "input_info", None)
    if info is None or len(info) != n_inputs:
        return None
    return {i for i, inp in enumerate(info) if inp.mutates_data or inp.mutates_metadata}


def lower_aten_graph(gm: torch.fx.GraphModule, real_inputs: Sequence[object], names: dict[int, str],
                     graph_name: str, mutated: set[int] | None = None, buffers: frozenset[int] = frozenset()) -> Lowered:
    """mutated: positions of inputs the graph writes (None: unknown, so no buffer becomes a weight);
    buffers: ids of the model's buffers (the tensors a forward may write)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    weights: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    if len(placeholders) == len(real_inputs):  # aot_autograd kept dynamo's argument order
        for i, (node, x) in enumerate(zip(placeholders, real_inputs)):
            written = i in mutated if mutated is not None else id(x) in buffers
            if isinstance(x, torch.Tensor) and id(x) in names and not written:
                weights[node.name] = names[id(x)]
                tensors[names[id(x)]] = x.detach()
    return FxToIR(gm, weights, graph_name).run(tensors)
