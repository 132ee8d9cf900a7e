"""A `Program`: one compiled graph with its calling convention, ready to run.

It maps flat runtime arguments to the graph's inputs (tensors in, parameters skipped because the
graph holds them as weights, symbolic ints bound to their symbols, captured constants checked),
runs the executor, and rebuilds the flat outputs (tensors, sizes computed from symbols, constants).
It counts its calls, so reports can show that compiled code really ran.

Every tensor input's device is checked before anything runs (`runtime/devices.py`).

A generated executor's `run()` writes into planned buffers kept per size key (`codegen/pool.py`):
after a key's first call it allocates nothing but fresh storage for the outputs the caller keeps;
inside `static_outputs()` (a decode loop, a CUDA-graph capture) not even that, and a result is valid
until the next call with the same sizes. `buffer_pool()` is this thread's pool (a captured CUDA graph
holds its buffers).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from fxforge.errors import InputError
from fxforge.ir.calling import InputSlot
from fxforge.ir.errors import ShapeError
from fxforge.ir.evaluate import bind_symbols
from fxforge.ir.graph import Graph
from fxforge.ir.types import substitute
from fxforge.runtime.counters import SkipCounters
from fxforge.runtime.devices import check_devices, weight_devices
from fxforge.runtime.executors import Executor, make_executor


@dataclass
class Program:
    graph: Graph
    inputs: list[InputSlot]
    outputs: list[Any]  # ("value", i) | ("symbol", expr) | ("const", value)
    executor_name: str = "reference"
    calls: int = 0
    executor: Executor = field(init=False)
    counters: SkipCounters = field(init=False)

    def __post_init__(self) -> None:
        self.executor = make_executor(self.executor_name, self.graph)
        self.counters = SkipCounters(self.graph)  # extra outputs the caller never sees (ffn_skip's counts)
        self.expected_devices = getattr(self.executor, "devices", None) or weight_devices(self.graph)

    def __call__(self, *flat: Any) -> list[Any]:
        if len(flat) != len(self.inputs):
            raise InputError(f"{self.graph.name} takes {len(self.inputs)} flat inputs, got {len(flat)}")
        tensors, bindings = [], {}
        for slot, arg in zip(self.inputs, flat):
            if slot.kind == "tensor":
                tensors.append(arg)
            elif slot.kind == "symbol" and slot.symbol is not None:
                bindings[slot.symbol] = int(arg)
            elif slot.kind == "const" and not _same_const(arg, slot.value):
                raise InputError(f"this graph was compiled for an argument equal to {slot.value!r}, got {arg!r}; "
                                 "compile again with that value (constants are baked into the graph)")
        check_devices(self.graph, tensors, self.expected_devices)
        try:
            graph_inputs = self.graph.inputs
            bindings.update(bind_symbols([v.type for v in graph_inputs], tensors, [v.name for v in graph_inputs]))
        except ShapeError as e:
            raise InputError(f"inputs do not fit the compiled graph: {e}") from None
        with torch.no_grad():
            results = self.executor(tensors, bindings)
        with _COUNT_LOCK:  # calls may come from several threads
            self.calls += 1
            self.counters.add(results)
        return [self._output(o, results, bindings) for o in self.outputs]

    @contextlib.contextmanager
    def static_outputs(self) -> Iterator[None]:
        """Within: outputs reuse their planned buffers too (valid until the next call of the same sizes)."""
        module = getattr(self.executor, "module", None)
        before = getattr(module, "static_outputs", False)
        if module is not None:
            module.static_outputs = True
        try:
            yield
        finally:
            if module is not None:
                module.static_outputs = before

    def buffer_pool(self) -> Any:
        """This thread's `codegen.pool.BufferPool` of a generated executor (None for `reference`)."""
        module = getattr(self.executor, "module", None)
        return module.pool() if module is not None else None

    def _output(self, out: Any, results: list[torch.Tensor], bindings: dict[sympy.Symbol, int]) -> Any:
        kind, item = out
        if kind == "value":
            return results[item]
        if kind == "symbol":
            return substitute(item, bindings)
        return item


_COUNT_LOCK = threading.Lock()


def _same_const(a: Any, b: Any) -> bool:
    """A captured constant argument (bool, int, str, None) and the one given now."""
    return type(a) is type(b) and a == b
