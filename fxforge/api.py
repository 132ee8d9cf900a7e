"""The public entry points: `compile` (JIT, a torch.compile backend), `compile_aot` (torch.export,
one graph, savable) and `load` (an artifact directory, no model source needed).

`compile(model)` returns a shallow copy of the model whose `forward` runs through torch.compile
with fxforge as the backend: it is still an instance of the model's class, shares its parameters,
and keeps its methods, so `generate()` of a Hugging Face model runs through the compiled forward.
Parameters are read into the compiled graphs as weights (by reference, not copied): the compiled
model is for inference, and a change of weights that changes their shapes needs a recompile.
"""

from __future__ import annotations

import copy
import functools
import inspect
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from fxforge.compiler import compile_lowered
from fxforge.config import CompileConfig
from fxforge.errors import NotCompilableError
from fxforge.frontend.dynamo import lower_aten_graph, tensor_names
from fxforge.frontend.export import capture_export
from fxforge.runtime.module import CompiledModule, flatten_inputs
from fxforge.runtime.report import CompileReport


class Backend:
    """The torch.compile backend: ATen graph (via aot_autograd) -> ir.Graph -> passes -> Program."""

    def __init__(self, config: CompileConfig, report: CompileReport, names: dict[int, str]) -> None:
        self.config = config
        self.report = report
        self.names = names

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        # imported here: torch._dynamo costs seconds to import, and AOT/CLI use never needs it
        from torch._dynamo.backends.common import aot_autograd
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        def fw_compiler(aten_gm: torch.fx.GraphModule, _fake_inputs: list[Any]) -> Callable:
            with unset_fake_temporarily():  # aot_autograd calls us under fake mode; weights are real
                return compile_aten(aten_gm)

        def compile_aten(aten_gm: torch.fx.GraphModule) -> Callable:
            start = time.perf_counter()
            name = f"graph{len(self.report.graphs)}"
            lowered = lower_aten_graph(aten_gm, example_inputs, self.names, name)
            aten_ops = sum(1 for n in aten_gm.graph.nodes if n.op == "call_function")
            record = compile_lowered(lowered, self.config, time.perf_counter() - start, aten_ops)
            self.report.graphs.append(record)
            if self.config.debug:
                print(record.summary())
            program = record.program

            def run(*args: Any) -> tuple:
                return tuple(program(*args))

            return run

        return aot_autograd(fw_compiler=fw_compiler)(gm, example_inputs)


def compile(model_or_fn: Any = None, config: CompileConfig | None = None, **options: Any) -> Any:
    """Compile an nn.Module or a function with fxforge (JIT). Works as `compile(model)`,
    `@compile` and `@compile(config=..., verify=True, ...)`. The result has `.fxforge_report`."""
    cfg = CompileConfig.from_options(config, **options)
    if model_or_fn is None:
        return functools.partial(compile, config=cfg)
    if isinstance(model_or_fn, torch.nn.Module):
        return _compile_module(model_or_fn, cfg)
    if callable(model_or_fn) and not isinstance(model_or_fn, type):
        return _compile_function(model_or_fn, cfg)
    raise NotCompilableError(
        f"fxforge.compile takes a torch.nn.Module or a function, got {type(model_or_fn).__name__}; "
        "for a class, instantiate it first: fxforge.compile(MyModel())")


# Every compiled Hugging Face model adds dynamo cache entries to the same code object (their shared
# forward wrapper), so dynamo's default limit of 8 is hit after a few models in one process.
RECOMPILE_LIMIT = 64


def _torch_compile(fn: Callable, cfg: CompileConfig, report: CompileReport, names: dict[int, str]) -> Callable:
    """torch.compile with the fxforge backend, wrapped so that a call that ran no compiled code (dynamo
    gave up and ran the function eagerly) is said out loud, once, instead of passing silently."""
    compiled = torch.compile(fn, backend=Backend(cfg, report, names), dynamic=cfg.dynamic, fullgraph=cfg.fullgraph)
    told = False

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        nonlocal told
        import torch._dynamo

        calls = report.calls
        limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        with torch._dynamo.config.patch(recompile_limit=limit):
            out = compiled(*args, **kwargs)
        if report.calls == calls and not told:
            told = True
            warnings.warn(f"fxforge: a call of {getattr(fn, '__qualname__', fn)} ran no fxforge-compiled code: torch.compile "
                          "fell back to eager (see torch._dynamo's warnings above, e.g. its recompile limit); "
                          "its results are eager PyTorch's", stacklevel=2)
        return out

    return run


def _compile_module(model: torch.nn.Module, cfg: CompileConfig) -> torch.nn.Module:
    report = CompileReport()
    compiled = copy.copy(model)
    for attr in ("_parameters", "_buffers", "_modules"):
        compiled.__dict__[attr] = dict(model.__dict__[attr])
    compiled.__dict__["forward"] = _torch_compile(model.forward, cfg, report, tensor_names(model))
    compiled.__dict__["fxforge_report"] = report
    compiled.__dict__["fxforge_config"] = cfg
    return compiled


def _compile_function(fn: Callable, cfg: CompileConfig) -> Callable:
    report = CompileReport()
    wrapper = _torch_compile(fn, cfg, report, {})
    wrapper.fxforge_report = report  # type: ignore[attr-defined]
    wrapper.fxforge_config = cfg  # type: ignore[attr-defined]
    return wrapper


def compile_aot(model: torch.nn.Module, example_args: tuple | Any, example_kwargs: dict | None = None,
                config: CompileConfig | None = None, **options: Any) -> CompiledModule:
    """Capture the whole model with torch.export and compile it into a `CompiledModule`, which
    runs at any size of its dynamic dims without recompiling and can be saved with `.save(dir)`."""
    cfg = CompileConfig.from_options(config, **options)
    if not isinstance(model, torch.nn.Module):
        raise NotCompilableError(f"compile_aot takes a torch.nn.Module, got {type(model).__name__}; "
                                 "wrap a function in a Module, or use fxforge.compile(fn)")
    args = example_args if isinstance(example_args, tuple) else (example_args,)
    capture = capture_export(model.eval(), args, example_kwargs, dynamic=cfg.dynamic is not False)
    aten_ops = sum(1 for op in capture.lowered.graph.ops)
    capture.lowered.notes[:0] = [n for n in capture.notes if n not in capture.lowered.notes]
    arg_names = list(inspect.signature(model.forward).parameters)
    calibration = _calibration_inputs(cfg, capture, arg_names)
    record = compile_lowered(capture.lowered, cfg, capture.seconds, aten_ops, calibration)
    module = CompiledModule(record, capture.in_spec, capture.out_spec, arg_names, cfg, type(model).__name__)
    if cfg.debug:
        print(record.summary())
    return module


def _calibration_inputs(cfg: CompileConfig, capture: Any, arg_names: list[str]) -> list[list[torch.Tensor]] | None:
    """Each calibration example (a tuple of args or a dict of kwargs) -> the graph's tensor inputs."""
    if cfg.calibration is None:
        return None
    slots = capture.lowered.inputs
    out = []
    for example in cfg.calibration:
        args, kwargs = (example, {}) if isinstance(example, tuple) else ((), example) if isinstance(example, dict) else ((example,), {})
        flat = flatten_inputs(slots, capture.in_spec, arg_names, args, dict(kwargs))
        out.append([x for slot, x in zip(slots, flat) if slot.kind == "tensor"])
    return out


def load(path: str) -> CompiledModule:
    """Load an artifact directory written by `CompiledModule.save` or `fxforge compile`."""
    from fxforge.compiler import prepare_graph
    from fxforge.runtime.artifact import load_artifact

    return load_artifact(path, prepare=prepare_graph)


BACKEND_REPORT = CompileReport()


def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
    """fxforge as a named torch.compile backend: `torch.compile(model, backend="fxforge")` (registered
    through the `torch_dynamo_backends` entry point). Default options; graphs go to `BACKEND_REPORT`.
    Parameters stay graph inputs here (no model is known to name them); use `fxforge.compile(model)`
    to have them read in as weights, which the compression passes need."""
    return Backend(CompileConfig(), BACKEND_REPORT, {})(gm, example_inputs)
