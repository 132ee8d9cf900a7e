"""Executors `interpret` and `triton`: run a graph through its generated Triton module.

Both need a partitioned graph (the pipeline runs the `fuse` pass last for them, and `fxforge.load`
runs it on a loaded graph; without it construction fails with a `PartitionError` saying so),
generate and import the module once per graph (`fxforge.codegen.generate_module`) and call its
`run` on every call; dynamic sizes are kernel arguments, so new lengths reuse the same module.
- `interpret`: Triton's CPU interpreter on CPU tensors, in any process (`runtime/interpreter.py`
  arranges the interpreter; no environment variable is needed), one call at a time.
- `triton`: a CUDA GPU; weights move to the GPU once, inputs move there per call, outputs stay there.
Named in the executor table of `fxforge.runtime.executors` (this module imports nothing from there).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import sympy
import torch

from fxforge.errors import ConfigError
from fxforge.ir.graph import Graph
from fxforge.ir.partition import check_partition
from fxforge.runtime.interpreter import exclusive, interpreter_scope


class _GeneratedExecutor:
    name = "interpret"

    def __init__(self, graph: Graph, device: str) -> None:
        from fxforge.codegen import generate_module

        check_partition(graph)  # the pipeline's `fuse` step partitions; a clear error when it did not run
        self.graph = graph
        self.device = device
        self.module = generate_module(graph, device=device if device != "cpu" else None)
        self.kernels = self.module.kernels

    def __call__(self, inputs: Sequence[torch.Tensor], bindings: dict[sympy.Symbol, int]) -> list[torch.Tensor]:
        inputs = [x.to(self.device) for x in inputs]
        return self.module.run(inputs, bindings)


class InterpretExecutor(_GeneratedExecutor):
    name = "interpret"
    devices = ("cpu",)

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph, "cpu")  # kernels decorated as the process is; interpreted per call

    def __call__(self, inputs: Sequence[torch.Tensor], bindings: dict[sympy.Symbol, int]) -> list[torch.Tensor]:
        with interpreter_scope():
            return super().__call__(inputs, bindings)


class TritonExecutor(_GeneratedExecutor):
    name = "triton"
    devices = ("cuda", "cpu")  # cpu inputs are moved to the GPU

    def __init__(self, graph: Graph) -> None:
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise ConfigError("executor='triton' runs on a GPU, but TRITON_INTERPRET=1 is set; use executor='interpret' "
                              "or unset the variable")
        if not torch.cuda.is_available():
            raise ConfigError("executor='triton' needs a CUDA GPU, and torch sees none; use executor='interpret' "
                              "(Triton's CPU interpreter) or 'reference' on this machine")
        super().__init__(graph, "cuda")

    def __call__(self, inputs: Sequence[torch.Tensor], bindings: dict[sympy.Symbol, int]) -> list[torch.Tensor]:
        with exclusive():  # not while an interpret call has kernels swapped (only if interpret ran here)
            return super().__call__(inputs, bindings)

