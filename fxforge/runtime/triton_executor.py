"""Executors `interpret` and `triton`: run a graph through its generated Triton module.

Both need a partitioned graph (the pipeline appends the `fuse` pass for them, and `fxforge.load`
runs it on a loaded graph; without it construction fails with a `PartitionError` saying so), generate
and import the module once per graph (`fxforge.codegen.generate_module`) and call its `run` on every call; dynamic sizes are kernel
arguments, so new lengths reuse the same module.
- `interpret`: Triton's CPU interpreter on CPU tensors. It needs `TRITON_INTERPRET=1` in the
  environment before triton is first imported in the process; if triton is already imported
  without it, a clear error says so (when triton is not imported yet, the variable is set here).
- `triton`: a CUDA GPU; weights move to the GPU once, inputs move there per call, outputs stay there.
Registered with `fxforge.runtime.executors.register_executor` when this module is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import sympy
import torch

from fxforge.errors import ConfigError
from fxforge.ir.graph import Graph
from fxforge.ir.partition import check_partition
from fxforge.runtime.executors import register_executor


def ensure_interpreter() -> None:
    """Make sure Triton kernels will run under the CPU interpreter, or explain how to."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    if "triton" in sys.modules:
        raise ConfigError(
            "executor='interpret' needs Triton's CPU interpreter, but triton was already imported in this "
            "process without TRITON_INTERPRET=1, and the interpreter is chosen when triton is imported. "
            "Set the variable at process start (`TRITON_INTERPRET=1 python ...`, or "
            "`os.environ['TRITON_INTERPRET'] = '1'` before anything imports triton or fxforge.codegen.templates).")
    os.environ["TRITON_INTERPRET"] = "1"


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

    def __init__(self, graph: Graph) -> None:
        ensure_interpreter()
        super().__init__(graph, "cpu")


class TritonExecutor(_GeneratedExecutor):
    name = "triton"

    def __init__(self, graph: Graph) -> None:
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise ConfigError("executor='triton' runs on a GPU, but TRITON_INTERPRET=1 is set; use executor='interpret' "
                              "or unset the variable")
        if not torch.cuda.is_available():
            raise ConfigError("executor='triton' needs a CUDA GPU, and torch sees none; use executor='interpret' "
                              "(Triton's CPU interpreter) or 'reference' on this machine")
        super().__init__(graph, "cuda")


register_executor("interpret", InterpretExecutor)
register_executor("triton", TritonExecutor)
