"""AOT capture with torch.export: the whole model as one graph, dynamic dims as symbols.

Every dim of every tensor input is exported as `Dim.AUTO`: torch keeps it symbolic unless the
model forces a size (an example dim of size 1 is specialised to 1 by torch, so give examples with
batch and sequence >= 2 to keep them dynamic; the capture notes which dims stayed static).
A forward that writes a buffer or an input in place (`buffers_to_mutate` in the graph signature) is
refused with a `CaptureError` naming them: the AOT graph and its artifact hold constant weights only.
Hugging Face models are exported with `use_cache=False` unless the caller says otherwise: the
`DynamicCache` they return is not a pytree torch.export can output (the JIT path keeps the cache). A forward
that takes it only through `**kwargs` (GraniteMoE) is exported with `config.use_cache` off instead: torch.export
fails on a bool inside `**kwargs`' dynamic shapes ("Must provide a tree_name ...").
A stack of >= 3 layers of one structure (or of a few kinds that repeat, e.g. local/global attention)
is exported with its first layers (two when uniform) and the others cloned from them (`layer_reuse.py`;
export's time grows with depth, the clone's barely), noted in the capture's notes either way.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import Dim
from torch.utils import _pytree as pytree

from fxforge.errors import CaptureError, InputError
from fxforge.frontend import layer_reuse
from fxforge.frontend.experts import batched_experts
from fxforge.frontend.fx_to_ir import FxToIR, InputSlot, Lowered


@dataclass
class Capture:
    lowered: Lowered
    in_spec: Any  # pytree spec of (args, kwargs)
    out_spec: Any  # pytree spec of the outputs
    seconds: float
    notes: list[str]


def _check_inputs(args: tuple, kwargs: dict) -> None:
    for leaf in pytree.tree_leaves((args, kwargs)):
        if not isinstance(leaf, (torch.Tensor, int, float, bool, str, type(None))):
            raise InputError(f"example input of type {type(leaf).__name__} cannot be captured; pass tensors "
                             "(or nested tuples/lists/dicts of tensors)")


def _dynamic_shapes(model: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """Dim.AUTO for every dim of every tensor, keyed by forward()'s parameter names as export wants."""

    def spec(x):
        return {i: Dim.AUTO for i in range(x.dim())} if isinstance(x, torch.Tensor) else None

    bound = inspect.signature(model.forward).bind_partial(*args, **kwargs)
    return {name: pytree.tree_map(spec, value) for name, value in bound.arguments.items()}


def hf_export_kwargs(model: torch.nn.Module, kwargs: dict) -> tuple[dict, list[str]]:
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", False) and "use_cache" not in kwargs:
        named = "use_cache" in inspect.signature(model.forward).parameters  # else `_config_cache_off` turns it off
        return {**kwargs, "use_cache": False} if named else kwargs, [
            "Hugging Face model exported with use_cache=False (torch.export cannot return a DynamicCache); use "
            "fxforge.compile for generation"]
    return kwargs, []


@contextlib.contextmanager
def _config_cache_off(model: torch.nn.Module, kwargs: dict):
    """config.use_cache off while exporting a Hugging Face model whose forward takes use_cache through **kwargs only
    and was not given one (`hf_export_kwargs`)."""
    config = getattr(model, "config", None)
    if not getattr(config, "use_cache", False) or "use_cache" in kwargs:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = True


def capture_export(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, dynamic: bool = True,
                   reuse_layers: bool = True) -> Capture:
    """torch.export the model on example inputs and lower it to an ir.Graph. `reuse_layers`: a stack
    of >= 3 same-structure layers is exported with two and the rest cloned (`layer_reuse.py`)."""
    kwargs, notes = hf_export_kwargs(model, dict(kwargs or {}))
    _check_inputs(args, kwargs)
    start = time.perf_counter()
    with batched_experts(model), _config_cache_off(model, kwargs):  # (the experts' form `moe_rules` makes one op of)
        captured = _capture_reusing_layers(model, args, kwargs, dynamic, notes) if reuse_layers else None
        if captured is None:
            ep = _export(model, args, kwargs, dynamic)
            _refuse_mutations(ep, model)
            captured = lower_exported(ep, model), ep
    lowered, ep = captured
    _note_static_dims(lowered, args, kwargs, notes)
    return Capture(lowered, ep.call_spec.in_spec, ep.call_spec.out_spec, time.perf_counter() - start, notes + lowered.notes)


def _export(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic: bool) -> torch.export.ExportedProgram:
    try:
        with torch.no_grad():
            return torch.export.export(model, args, kwargs, dynamic_shapes=_dynamic_shapes(model, args, kwargs) if dynamic else None,
                                       strict=False)
    except Exception as e:  # torch raises many kinds; all mean "not capturable as one graph"
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__} as one graph: {type(e).__name__}: {_first_lines(e)}\n"
            "Fix: use fxforge.compile(model) (the JIT path: graph breaks run in Python), or change the "
            "model's data-dependent control flow."
        ) from e


def _capture_reusing_layers(model, args, kwargs, dynamic, notes: list[str]) -> tuple[Lowered, Any] | None:
    """Export with the layer stack cut to its plan's prefix and clone the rest (None: no such stack, or a check failed)."""
    plan = layer_reuse.stack_of(model)
    if plan is None:
        return None
    path, size = plan.path, len(plan.kinds)
    try:
        with layer_reuse.cut_to(model, path, plan.prefix):
            ep = _export(model, args, kwargs, dynamic)
        _refuse_mutations(ep, model)
        weights, tensors = _weight_table(ep, model)
        state = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
        layer_reuse.replicate(ep.graph_module, weights, plan, state)
        tensors.update({name: state[name] for name in weights.values() if name not in tensors})
        layer_reuse.check_numerics(ep.graph_module, weights, tensors, model, args, kwargs)
    except (layer_reuse.NoReuse, CaptureError) as e:
        notes.append(f"{path}: each layer exported (no layer reuse: {e})")
        return None
    used = sorted(set(plan.templates.values()))
    which = f"layer {used[0]}'s graph" if len(used) == 1 else f"layers {', '.join(map(str, used))}' graphs"
    notes.append(f"{path}: {plan.prefix} of {size} layers exported, {which} reused for the other {size - plan.prefix} "
                 "(checked against eager on the examples)")
    lowered = FxToIR(ep.graph_module, weights).run(tensors)
    lowered.inputs = [s for s in lowered.inputs if s.kind != "weight"]
    return lowered, ep


def _written_placeholders(ep: torch.export.ExportedProgram) -> set[str]:
    """Placeholders an in-place op writes, directly or through views (export's training IR keeps
    `add_`/`copy_`/`index_copy_` unfunctionalized, so `buffers_to_mutate` is empty there)."""
    written = set()
    for node in ep.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None or not schema.is_mutable:
            continue
        for arg, value in zip(schema.arguments, node.args):
            if arg.alias_info is not None and arg.alias_info.is_write and isinstance(value, torch.fx.Node):
                base = _view_base(value)
                if base.op == "placeholder":
                    written.add(base.name)
    return written


def _view_base(node: torch.fx.Node) -> torch.fx.Node:
    """Follow view ops (their result aliases their first argument) back to the viewed tensor."""
    while node.op == "call_function" and node.args and isinstance(node.args[0], torch.fx.Node):
        schema = getattr(node.target, "_schema", None)
        if schema is None or not schema.returns or schema.returns[0].alias_info is None:
            break
        node = node.args[0]
    return node


def _refuse_mutations(ep: torch.export.ExportedProgram, model: torch.nn.Module) -> None:
    """An AOT graph is a pure function of its inputs and constant weights: a forward that writes a
    buffer or an input in place cannot be honoured there, so it is refused by name."""
    sig = ep.graph_signature
    written = _written_placeholders(ep)
    names = {spec.arg.name: spec.target or spec.arg.name for spec in sig.input_specs if hasattr(spec.arg, "name")}
    targets = set(sig.buffers_to_mutate.values()) | set(getattr(sig, "user_inputs_to_mutate", {}).values())
    targets |= {names.get(p, p) for p in written}
    if targets:
        raise CaptureError(
            f"{type(model).__name__}.forward writes {sorted(targets)} in place; compile_aot builds a pure graph "
            "of constant weights, so the writes would be lost. Fix: use fxforge.compile(model) (the JIT path "
            "writes mutated buffers back after each call), or keep that state outside the module.")


def _weight_table(ep: torch.export.ExportedProgram, model: torch.nn.Module | None) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Placeholder name -> weight name, and weight name -> tensor (the model's own, else the export's)."""
    state = {}
    if model is not None:
        state.update(model.named_parameters(remove_duplicate=False))
        state.update(model.named_buffers(remove_duplicate=False))
    weights: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            tensor = state.get(spec.target)
            if tensor is None:
                tensor = ep.state_dict.get(spec.target, ep.constants.get(spec.target))
            weights[spec.arg.name] = spec.target
            tensors[spec.target] = tensor
    return weights, tensors


def lower_exported(ep: torch.export.ExportedProgram, model: torch.nn.Module | None = None) -> Lowered:
    weights, tensors = _weight_table(ep, model)
    lowered = FxToIR(ep.graph_module, weights).run(tensors)
    lowered.inputs = [s for s in lowered.inputs if s.kind != "weight"]
    return lowered


def _note_static_dims(lowered: Lowered, args, kwargs, notes: list[str]) -> None:
    static = [f"%{v.name}{list(v.type.shape)}" for v in lowered.graph.inputs if v.type.rank and v.type.is_static]
    if static:
        notes.append("inputs with only static dims (an example dim of size 1 is specialised by torch.export): " + ", ".join(static))


def _first_lines(e: Exception, n: int = 6) -> str:
    return "\n".join(str(e).strip().splitlines()[:n])


__all__ = ["Capture", "capture_export", "lower_exported", "InputSlot"]
