"""Device checks of call inputs: a meta tensor, or a tensor on a device the compiled code does not run
on, is an `InputError` that names the input (position and name), its device and the device expected,
instead of a foreign error from deep inside torch or dynamo.

Decisions:
- The expected device is the executor's (`interpret`: cpu; `triton`: cuda, and cpu inputs are moved
  there) or, for `reference` and the JIT path, the device of the weights (cpu when there are none).
- Only the device type is compared (cuda:0 vs cuda:1 is torch's to report).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

from fxforge.errors import InputError
from fxforge.ir.graph import Graph


def weight_devices(graph: Graph) -> tuple[str, ...]:
    """Where a graph that runs on its weights' device takes its inputs (cpu when it has no weights)."""
    for w in graph.weights.values():
        tensor = next(iter(w.payload.values())) if w.payload else w.data
        return (tensor.device.type,)
    return ("cpu",)


def module_devices(model: torch.nn.Module) -> tuple[str, ...]:
    """The device type of a model's parameters and buffers (cpu when it has none)."""
    for t in (*model.parameters(), *model.buffers()):
        return (t.device.type,)
    return ("cpu",)


def _refuse(where: str, label: str, x: torch.Tensor, expected: tuple[str, ...]) -> None:
    what = "a meta tensor (shape only, no data)" if x.device.type == "meta" else f"on device {x.device}"
    raise InputError(f"{where}input {label} is {what}, but the compiled code runs on {' or '.join(expected)}; "
                     f"pass real tensors on {expected[0]}, e.g. x.to('{expected[0]}')")


def check_devices(graph: Graph, tensors: Sequence[Any], expected: tuple[str, ...]) -> None:
    """Flat graph inputs: each a tensor on an expected device."""
    names = [v.name for v in graph.inputs]
    for i, x in enumerate(tensors):
        label = f"{i} (%{names[i]})" if i < len(names) else str(i)
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{graph.name}: input {label} must be a tensor, got {type(x).__name__}")
        if x.device.type not in expected:
            _refuse(f"{graph.name}: ", label, x, expected)


def check_arguments(args: tuple, kwargs: dict, expected: tuple[str, ...] | None, arg_names: Sequence[str] = ()) -> None:
    """A call's (args, kwargs) as the user gave them: every tensor in them on an expected device (None:
    any device); a meta tensor is always refused."""
    named = [(arg_names[i] if i < len(arg_names) else f"#{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    for name, value in named:
        for x in pytree.tree_leaves(value):
            if isinstance(x, torch.Tensor) and (x.device.type == "meta" or (expected and x.device.type not in expected)):
                _refuse("", repr(name), x, expected or ("cpu", "cuda"))
