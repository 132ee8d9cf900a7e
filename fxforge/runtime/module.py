"""`CompiledModule`: an AOT-compiled model, called like the original one.

It takes the same (args, kwargs) as the model's forward and returns the same output pytree
(Hugging Face `ModelOutput`s included): inputs are flattened with the captured input spec,
arguments captured as constants (e.g. `use_cache=False`) may be left out or must equal what was
captured, and the flat results are rebuilt with the captured output spec.
`hf_config` keeps a Hugging Face model's config (and generation config) so `export` can write a checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

from fxforge.errors import InputError
from fxforge.runtime.artifact import save_artifact
from fxforge.runtime.report import CompileReport, GraphRecord


class CompiledModule(torch.nn.Module):
    def __init__(self, record: GraphRecord, in_spec: Any, out_spec: Any, arg_names: list[str],
                 config: Any, source: str = "", hf_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.record = record
        self.in_spec = in_spec
        self.out_spec = out_spec
        self.arg_names = list(arg_names)
        self.config = config
        self.source = source
        self.hf_config = hf_config  # {"config": HF config dict, "generation_config": ...} of a transformers model
        self.fxforge_report = CompileReport([record])

    @property
    def graph(self):
        return self.record.program.graph

    @property
    def program(self):
        return self.record.program

    def save(self, path: str) -> str:
        """Write an artifact directory (manifest, IR text, pass trace, weights); `fxforge.load` reads it."""
        return str(save_artifact(self, path))

    def export(self, directory: str, format: str = "compressed-tensors") -> str:
        """Write the compiled model as a checkpoint another runtime loads (`fxforge.export`): for
        "compressed-tensors", an HF checkpoint vLLM and transformers read, holding fxforge's own codes."""
        from fxforge.export import export

        return str(export(self.graph, self.hf_config, directory, format))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        flat = flatten_inputs(self.record.program.inputs, self.in_spec, self.arg_names, args, kwargs)
        outs = self.record.program(*flat)
        return pytree.tree_unflatten(outs, self.out_spec)


def flatten_inputs(slots: list, in_spec: Any, arg_names: list[str], args: tuple, kwargs: dict) -> list[Any]:
    """(args, kwargs) as the model takes them -> the flat inputs of the captured graph."""
    args, kwargs = _normalize(slots, in_spec, arg_names, args, kwargs)
    flat, spec = pytree.tree_flatten((args, kwargs))
    if spec != in_spec:
        raise InputError(f"inputs have structure {spec}, the model was compiled for {in_spec}; "
                         "pass the same arguments (positional/keyword, nesting) as the example inputs")
    return flat


def _normalize(slots: list, in_spec: Any, arg_names: list[str], args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Move keyword arguments given for captured positional ones; fill left-out keyword
    arguments that were captured as constants (e.g. use_cache=False)."""
    leaves = [_TENSOR if slot.kind == "tensor" else slot.value for slot in slots]
    captured_args, captured_kwargs = pytree.tree_unflatten(leaves, in_spec)
    n = len(captured_args)
    if len(args) > n:
        raise InputError(f"the model was compiled with {n} positional input(s), got {len(args)}")
    args = list(args)
    for name in arg_names[len(args):n]:
        if name not in kwargs:
            raise InputError(f"missing input {name!r} (the model was compiled with it)")
        args.append(kwargs.pop(name))
    unknown = sorted(set(kwargs) - set(captured_kwargs))
    if unknown:
        raise InputError(f"unexpected input(s) {unknown}: the model was compiled with keyword inputs {sorted(captured_kwargs)}")
    ordered = {}
    for key, captured in captured_kwargs.items():
        if key in kwargs:
            ordered[key] = kwargs[key]
        elif _TENSOR in pytree.tree_leaves(captured):
            raise InputError(f"missing keyword input {key!r} (the model was compiled with it)")
        else:
            ordered[key] = captured
    return tuple(args), ordered


class _TensorSlot:
    """Marks where a tensor input goes in the captured input structure."""

    def __repr__(self) -> str:
        return "<tensor>"


_TENSOR = _TensorSlot()
