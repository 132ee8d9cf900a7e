"""Executors: how a compiled graph runs. One table, name -> factory(graph) -> run(inputs, bindings).

- `reference`: the graph op by op with torch (`ir.evaluate`), the semantic ground truth and the
  fast path on a CPU.
- `interpret` / `triton`: fxforge's generated Triton module, in Triton's CPU interpreter or on a GPU
  (`triton_executor.py`, imported when first asked for, so plain use never imports triton).

Decisions: the table `EXECUTORS` names every executor explicitly (no registration by import side
effect); `triton_executor` imports nothing from here, so the two modules form no import cycle.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Protocol

import sympy
import torch

from fxforge.errors import ConfigError
from fxforge.ir.evaluate import evaluate
from fxforge.ir.graph import Graph


class Executor(Protocol):
    name: str

    def __call__(self, inputs: Sequence[torch.Tensor], bindings: dict[sympy.Symbol, int]) -> list[torch.Tensor]: ...


class ReferenceExecutor:
    name = "reference"

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def __call__(self, inputs: Sequence[torch.Tensor], bindings: dict[sympy.Symbol, int]) -> list[torch.Tensor]:
        return evaluate(self.graph, inputs, bindings=bindings)


def _interpret(graph: Graph) -> Executor:
    from fxforge.runtime.triton_executor import InterpretExecutor  # imports triton: only when asked for

    return InterpretExecutor(graph)


def _triton(graph: Graph) -> Executor:
    from fxforge.runtime.triton_executor import TritonExecutor

    return TritonExecutor(graph)


EXECUTORS: dict[str, Callable[[Graph], Executor]] = {"reference": ReferenceExecutor, "interpret": _interpret,
                                                     "triton": _triton}


def make_executor(name: str, graph: Graph) -> Executor:
    try:
        factory = EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"unknown executor {name!r}; known: {sorted(EXECUTORS)}") from None
    return factory(graph)


_TOLD_NO_GPU = False


def resolve_executor(choice: str) -> str:
    """'auto' -> `triton` where CUDA is available, else `reference` (said once per process)."""
    global _TOLD_NO_GPU
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "triton"
    if not _TOLD_NO_GPU:
        _TOLD_NO_GPU = True
        warnings.warn("fxforge: no GPU here, so compiled graphs run on the reference executor (torch, op by op); "
                      "pass executor='interpret' to run fxforge's Triton kernels in Triton's CPU interpreter", stacklevel=3)
    return "reference"
