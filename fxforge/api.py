"""The public entry points: `compile` (JIT, a torch.compile backend), `compile_aot` (torch.export,
one graph, savable) and `load` (an artifact directory, no model source needed).

`compile(model)` returns a shallow copy of the model whose `forward` runs through torch.compile
with fxforge as the backend: it is still an instance of the model's class, shares its parameters,
and keeps its methods, so `generate()` of a Hugging Face model runs through the compiled forward.
Parameters are read into the compiled graphs as weights (by reference, not copied): the compiled
model is for inference, and a change of weights that changes their shapes needs a recompile.
The JIT machinery (the backend, the wrapper with device checks and the calibration run) is `jit.py`.

Decisions:
- `compile_aot` captures in eval mode (fxforge compiles for inference) and warns when the model was
  in train mode; every submodule's `training` flag is put back as it was, whatever happens.
- `load` builds the `CompiledModule` from the parts `runtime.artifact` reads, so the artifact module
  never imports the module class (no import cycle).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import json
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from fxforge.config import CompileConfig
from fxforge.errors import ConfigError, NotCompilableError
from fxforge.export import ct_import
from fxforge.frontend.dynamo import buffer_ids, tensor_names
from fxforge.frontend.export import capture_export
from fxforge.jit import Backend, jit_wrapper
from fxforge.passes.adopt import SHARED_KEY as ADOPT_KEY
from fxforge.pipeline import compile_lowered, frozen_heap, prepare_graph
from fxforge.runtime.devices import module_devices
from fxforge.runtime.module import CompiledModule, flatten_inputs
from fxforge.runtime.report import CompileReport


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


def _devices(cfg: CompileConfig, model: torch.nn.Module | None) -> tuple[str, ...] | None:
    """Where the JIT-compiled code takes its inputs: the executor's device, else the model's."""
    fixed = {"interpret": ("cpu",), "triton": ("cuda", "cpu")}.get(cfg.executor)
    return fixed or (module_devices(model) if model is not None else None)


def _compile_module(model: torch.nn.Module, cfg: CompileConfig) -> torch.nn.Module:
    report = CompileReport()
    cfg, shared = _imported_quantization(model, cfg)
    compiled = copy.copy(model)
    for attr in ("_parameters", "_buffers", "_modules"):
        compiled.__dict__[attr] = dict(model.__dict__[attr])
    arg_names = list(inspect.signature(model.forward).parameters)
    compiled.__dict__["forward"] = jit_wrapper(model.forward, cfg, report, tensor_names(model), buffer_ids(model),
                                               _devices(cfg, model), arg_names, shared)
    compiled.__dict__["fxforge_report"] = report
    compiled.__dict__["fxforge_config"] = cfg
    return compiled


def _compile_function(fn: Callable, cfg: CompileConfig) -> Callable:
    report = CompileReport()
    try:
        arg_names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins and some callables have no signature
        arg_names = []
    wrapper = jit_wrapper(fn, cfg, report, {}, devices=_devices(cfg, None), arg_names=arg_names)
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
    cfg, shared = _imported_quantization(model, cfg)
    with frozen_heap():  # capture included: torch.export's allocations trigger collections too
        with _eval_mode(model):
            capture = capture_export(model, args, example_kwargs, dynamic=cfg.dynamic is not False)
        aten_ops = sum(1 for op in capture.lowered.graph.ops)
        capture.lowered.notes[:0] = [n for n in capture.notes if n not in capture.lowered.notes]
        arg_names = list(inspect.signature(model.forward).parameters)
        calibration = _calibration_inputs(cfg, capture, arg_names)
        record = compile_lowered(capture.lowered, cfg, capture.seconds, aten_ops, calibration, shared)
    module = CompiledModule(record, capture.in_spec, capture.out_spec, arg_names, cfg, type(model).__name__,
                            hf_config_record(model))
    if cfg.debug:
        print(record.summary())
    return module


def compile_decoder(model: torch.nn.Module, max_length: int = 512, batch: int = 1, config: CompileConfig | None = None,
                    **options: Any) -> CompiledModule:
    """Compile the decode step of a Hugging Face decoder LM (Llama, Qwen2, Mistral, ...) with fxforge's
    own static KV cache for one (batch bucket, max length): the result's `generate(input_ids,
    max_new_tokens)` decodes greedily; it can be saved and loaded like any `CompiledModule`.
    `calibration`: token ids [batch, length] per example (run as prefill calls on fresh caches).
    `kv_cache="bfp4" | "bfp8" | "fp8" | "int8"` (`kv_block=16 | 32 | 64`) stores the caches in that format
    (packed uint8 rows, encoded and decoded by the kernels; `passes/kv_cache.py`)."""
    from fxforge.frontend.kv_capture import STEP_ARGS, capture_decoder, step_calibration

    cfg = CompileConfig.from_options(config, **options)
    with frozen_heap(), _eval_mode(model):
        capture, layout = capture_decoder(model, batch, max_length)
    calibration = step_calibration(list(cfg.calibration), layout) if cfg.calibration is not None else None
    record = compile_lowered(capture.lowered, cfg, capture.seconds, len(capture.lowered.graph.ops), calibration)
    return CompiledModule(record, capture.in_spec, capture.out_spec, STEP_ARGS, cfg, type(model).__name__)


def _imported_quantization(model: torch.nn.Module, cfg: CompileConfig) -> tuple[CompileConfig, dict[str, Any] | None]:
    """A model loaded from a compressed-tensors checkpoint keeps its quantization: its weights are read
    (`fxforge.export.ct_import`) and the `adopt` pass puts them in place of the captured linears."""
    if not ct_import.quantized_modules(model):
        return cfg, None
    if cfg.passes is not None and "adopt" not in cfg.passes:
        raise ConfigError(f"the model holds a compressed-tensors checkpoint's quantization, which the 'adopt' pass "
                          f"takes over; add 'adopt' to passes={list(cfg.passes)} (before quantize)")
    imported = ct_import.take_quantization(model)
    options = {**cfg.pass_options, "adopt.source": "compressed-tensors"}
    return dataclasses.replace(cfg, pass_options=options), {ADOPT_KEY: imported}


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Capture in eval mode (fxforge compiles for inference: dropout off, BatchNorm running stats)
    and give the caller's module back with every submodule's `training` flag as it was."""
    flags = [(m, m.training) for m in model.modules()]
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        warnings.warn(f"fxforge.compile_aot compiles for inference with eval-mode semantics (dropout off, BatchNorm "
                      f"uses running statistics), but {training[:3]}{' ...' if len(training) > 3 else ''} "
                      "are in train mode; the compiled module behaves as model.eval() would. Your module's "
                      "mode is left as it was.", stacklevel=3)
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


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
    from fxforge.runtime.artifact import load_artifact

    loaded = load_artifact(path, prepare=prepare_graph)
    return CompiledModule(loaded.record, loaded.in_spec, loaded.out_spec, loaded.arg_names, loaded.config, loaded.source,
                          loaded.hf_config)


def hf_config_record(model: torch.nn.Module) -> dict[str, Any] | None:
    """A transformers model's config (with its class as `architectures`) and generation config, as
    plain JSON data for the artifact and `export`; None for any other module."""
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(config, "to_json_string", None)) or not hasattr(config, "model_type"):
        return None
    data = json.loads(config.to_json_string(use_diff=False))
    data.pop("quantization_config", None)  # what the compiled weights are is decided by fxforge, and export says it
    data["architectures"] = [type(model).__name__]
    gen = getattr(model, "generation_config", None)
    gen_data = json.loads(gen.to_json_string(use_diff=False)) if gen is not None and hasattr(gen, "to_json_string") else None
    return {"config": data, "generation_config": gen_data}


BACKEND_REPORT = CompileReport()


def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
    """fxforge as a named torch.compile backend: `torch.compile(model, backend="fxforge")` (registered
    through the `torch_dynamo_backends` entry point). Default options; graphs go to `BACKEND_REPORT`.
    Parameters stay graph inputs here (no model is known to name them); use `fxforge.compile(model)`
    to have them read in as weights, which the compression passes need."""
    return Backend(CompileConfig(), BACKEND_REPORT, {})(gm, example_inputs)
