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
from fxforge.ir.calling import DECODE_STEP_ARGS
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

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 16, eos_token_id: int | None = None,
                 cuda_graph: bool | None = None) -> torch.Tensor:
        """Greedy generation with fxforge's static KV cache (a module made by `fxforge.compile_decoder`):
        the prompt with up to `max_new_tokens` tokens appended, eager HF `generate()`'s greedy tokens.
        `cuda_graph` (default: when the caches are on a GPU): the decode steps replay a CUDA graph."""
        from fxforge.runtime.generate import StaticKVCache, greedy_generate

        if tuple(self.arg_names) != DECODE_STEP_ARGS:
            raise InputError("generate() needs a compiled decode step: compile with fxforge.compile_decoder(model, "
                             "max_length=...) (compile_aot captures the forward without a KV cache)")
        cache = self.__dict__.get("_kv_cache")
        if cache is None:  # preallocated once per module (= per batch bucket and max length)
            cache = self.__dict__["_kv_cache"] = StaticKVCache.for_step(self.graph, _step_device(self))
        use_graph = cache.tensors[0].is_cuda if cuda_graph is None else cuda_graph
        with self.program.static_outputs():  # each step's logits are read before the next: no allocation
            return greedy_generate(self, cache, input_ids, max_new_tokens, eos_token_id,
                                   self._graphed(cache) if use_graph else None)

    def _graphed(self, cache: Any) -> Any:
        """The captured decode step of this module's cache (made once; before a prefill, see cuda_graph)."""
        import warnings

        from fxforge.runtime.cuda_graph import GraphedStep

        graphed = self.__dict__.get("_graphed_step")
        if graphed is None:
            if not cache.tensors[0].is_cuda:
                raise InputError("generate(cuda_graph=True) needs a GPU decode step (executor='triton')")
            try:
                graphed = GraphedStep(self, cache.tensors, cache.batch)
            except RuntimeError as e:  # a launcher that synchronises: said, then run uncaptured
                warnings.warn(f"fxforge: the decode step could not be captured as a CUDA graph ({e}); "
                              "it runs uncaptured", stacklevel=3)
                graphed = False
            self.__dict__["_graphed_step"] = graphed
        return graphed or None

    def export(self, directory: str, format: str = "compressed-tensors") -> str:
        """Write the compiled model as a checkpoint another runtime loads (`fxforge.export`): for
        "compressed-tensors", an HF checkpoint vLLM and transformers read, holding fxforge's own codes."""
        from fxforge.export import export

        return str(export(self.graph, self.hf_config, directory, format))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        flat = flatten_inputs(self.record.program.inputs, self.in_spec, self.arg_names, args, kwargs)
        outs = self.record.program(*flat)
        return pytree.tree_unflatten(outs, self.out_spec)


def _step_device(module: CompiledModule) -> str:
    return "cuda" if module.program.executor_name == "triton" else "cpu"


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
