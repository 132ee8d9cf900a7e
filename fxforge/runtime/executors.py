"""Executors: how a compiled graph runs. One table, name -> factory(graph) -> run(inputs, bindings).

- `reference`: the graph op by op with torch (`ir.evaluate`), the semantic ground truth and the
  fast path on a CPU.
Further executors (the Triton ones) register themselves here with `register_executor`.
"""

from __future__ import annotations

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


EXECUTORS: dict[str, Callable[[Graph], Executor]] = {"reference": ReferenceExecutor}


def register_executor(name: str, factory: Callable[[Graph], Executor]) -> None:
    EXECUTORS[name] = factory


def make_executor(name: str, graph: Graph) -> Executor:
    try:
        factory = EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"unknown executor {name!r}; known: {sorted(EXECUTORS)}") from None
    return factory(graph)


def resolve_executor(choice: str) -> str:
    """'auto' -> the best executor this machine runs."""
    return "reference" if choice == "auto" else choice
