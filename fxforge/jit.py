"""The JIT path: fxforge as a torch.compile backend, and the wrapper `fxforge.compile` puts around it.

`Backend` receives dynamo's graphs, lets aot_autograd turn each into a functional ATen graph, lowers it
to an `ir.Graph` at once, and compiles it (the pass pipeline, then a `Program`). `jit_wrapper` is the
function the user calls: it checks input devices, raises dynamo's recompile limit, says so when a call
ran no compiled code, and runs the calibration examples first when the config has some.

Decisions:
- Calibration (`calibration=[...]`) has to reach every graph dynamo captures, and graphs exist only once
  dynamo has seen a call. So on the first call the wrapper runs each calibration example through the
  compiled function in *recording* mode: each captured graph runs its ATen graph eagerly and records its
  inputs; then every graph is compiled with the inputs it saw (the same `calibration` pass option the
  AOT path gives). A graph first captured later (new input structure or shapes the examples did not
  have) is compiled without calibration data, and its record and a warning say so.
- Buffers the forward writes stay graph inputs (`frontend/dynamo.py`); aot_autograd's runtime wrapper
  copies the functionalized new values back into the module's buffers.
- Compiles run under one lock per backend, so calls from several threads compile each graph once.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fxforge.config import CompileConfig
from fxforge.frontend.dynamo import lower_aten_graph, mutated_inputs
from fxforge.frontend.experts import BatchedExperts
from fxforge.frontend.fx_to_ir import Lowered
from fxforge.pipeline import compile_lowered
from fxforge.runtime.devices import check_arguments
from fxforge.runtime.report import CompileReport, GraphRecord

# Every compiled Hugging Face model adds dynamo cache entries to the same code object (their shared
# forward wrapper), so dynamo's default limit of 8 is hit after a few models in one process.
RECOMPILE_LIMIT = 64


class _Graph:
    """One captured ATen graph: compiled at once, or (calibration pending) recorded, then compiled."""

    def __init__(self, backend: Backend, aten_gm: torch.fx.GraphModule, lowered: Lowered, capture_s: float) -> None:
        self.backend, self.aten_gm, self.lowered, self.capture_s = backend, aten_gm, lowered, capture_s
        self.aten_ops = sum(1 for n in aten_gm.graph.nodes if n.op == "call_function")
        self.examples: list[list[torch.Tensor]] = []
        self.record: GraphRecord | None = None

    def compile(self) -> GraphRecord:
        with self.backend.lock:
            if self.record is None:
                calibration = self.examples or None
                if self.backend.config.calibration is not None and calibration is None:
                    self.lowered.notes.append("no calibration example reached this graph (captured after the "
                                              "calibration run): compiled without calibration data")
                    warnings.warn(f"fxforge: graph {self.lowered.graph.name} was captured after the calibration "
                                  "examples ran (a new input structure or shape), so it is compiled without "
                                  "calibration data; give examples shaped like the calls you make", stacklevel=4)
                record = compile_lowered(self.lowered, self.backend.config, self.capture_s, self.aten_ops, calibration,
                                         self.backend.shared)
                self.backend.report.graphs.append(record)
                if self.backend.config.debug:
                    print(record.summary())
                self.record, self.examples = record, []
        return self.record

    def __call__(self, *args: Any) -> tuple:
        if self.record is None and self.backend.recording:
            slots = self.lowered.inputs
            self.examples.append([x.detach().clone() for slot, x in zip(slots, args) if slot.kind == "tensor"])
            with torch.no_grad():
                return tuple(self.aten_gm(*args))
        return tuple(self.compile().program(*args))


class Backend:
    """The torch.compile backend: ATen graph (via aot_autograd) -> ir.Graph -> passes -> Program."""

    def __init__(self, config: CompileConfig, report: CompileReport, names: dict[int, str],
                 buffers: frozenset[int] = frozenset()) -> None:
        self.config = config
        self.report = report
        self.names = names
        self.buffers = buffers
        self.recording = False  # set by the wrapper while calibration examples run
        self.graphs: list[_Graph] = []
        self.shared: dict[str, Any] = {}  # the passes' state across this model's graphs (PassContext.shared)
        self.lock = threading.RLock()

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        # imported here: torch._dynamo costs seconds to import, and AOT/CLI use never needs it
        from torch._dynamo.backends.common import aot_autograd
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        def fw_compiler(aten_gm: torch.fx.GraphModule, fake_inputs: list[Any]) -> Callable:
            mutated = mutated_inputs(len(fake_inputs))  # buffers the forward writes stay inputs
            with unset_fake_temporarily():  # aot_autograd calls us under fake mode; weights are real
                start = time.perf_counter()
                with self.lock:
                    name = f"graph{len(self.graphs)}"
                    lowered = lower_aten_graph(aten_gm, example_inputs, self.names, name, mutated, self.buffers)
                    graph = _Graph(self, aten_gm, lowered, time.perf_counter() - start)
                    self.graphs.append(graph)
                if not self.recording:
                    graph.compile()
                return graph

        return aot_autograd(fw_compiler=fw_compiler)(gm, example_inputs)

    def compile_pending(self) -> None:
        for graph in list(self.graphs):
            graph.compile()


def _examples(calibration: Sequence[Any]) -> list[tuple[tuple, dict]]:
    """Each calibration example (a tuple of args, a dict of kwargs, or one tensor) -> (args, kwargs)."""
    return [(tuple(e), {}) if isinstance(e, tuple) else ((), dict(e)) if isinstance(e, dict) else ((e,), {})
            for e in calibration]


def jit_wrapper(fn: Callable, cfg: CompileConfig, report: CompileReport, names: dict[int, str],
                buffers: frozenset[int] = frozenset(), devices: tuple[str, ...] | None = None,
                arg_names: Sequence[str] = (), shared: dict[str, Any] | None = None) -> Callable:
    """torch.compile with the fxforge backend, wrapped so that input devices are checked, calibration
    examples run first, and a call that ran no compiled code (dynamo gave up and ran the function
    eagerly) is said out loud, once, instead of passing silently."""
    backend = Backend(cfg, report, names, buffers)
    backend.shared.update(shared or {})  # e.g. weights a loaded checkpoint quantized (the adopt pass)
    compiled = torch.compile(fn, backend=backend, dynamic=cfg.dynamic, fullgraph=cfg.fullgraph)
    state = {"told": False, "calibrated": cfg.calibration is None}

    owner = getattr(fn, "__self__", None)  # a model's forward: its MoE experts traced in `moe_rules`' form
    experts = BatchedExperts(owner) if isinstance(owner, torch.nn.Module) else contextlib.nullcontext()

    def call(args: tuple, kwargs: dict) -> Any:
        import torch._dynamo

        limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        with torch._dynamo.config.patch(recompile_limit=limit), experts:
            return compiled(*args, **kwargs)

    def calibrate() -> None:
        with backend.lock:
            if state["calibrated"]:
                return
            backend.recording = True
            try:
                for args, kwargs in _examples(cfg.calibration):
                    check_arguments(args, kwargs, devices, arg_names)
                    call(args, kwargs)
            finally:
                backend.recording = False
            backend.compile_pending()
            state["calibrated"] = True

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        check_arguments(args, kwargs, devices, arg_names)
        if not state["calibrated"]:
            calibrate()
        calls = report.calls
        out = call(args, kwargs)
        if report.calls == calls and not state["told"]:
            state["told"] = True
            warnings.warn(f"fxforge: a call of {getattr(fn, '__qualname__', fn)} ran no fxforge-compiled code: torch.compile "
                          "fell back to eager (see torch._dynamo's warnings above, e.g. its recompile limit); "
                          "its results are eager PyTorch's", stacklevel=2)
        return out

    return run
