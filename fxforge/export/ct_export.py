"""Write a compiled Hugging Face model as a compressed-tensors checkpoint: `config.json` (the model's own HF
config + the `quantization_config` compressed-tensors' `ModelCompressor` writes from its own
`QuantizationConfig`), `model.safetensors`, and `generation_config.json` when the model had one.

Decisions:
- The parameter list is the HF model's own: the architecture named in the stored config is built on the
  meta device (no memory, no weights), and every one of its parameters must come from the compiled graph;
  a parameter the graph lacks is an `ExportError` naming it (tied copies are left out, as `save_pretrained`
  does). Graph weights that are no HF parameter (non-persistent buffers such as `rotary_emb.inv_freq`) are
  not written.
- One safetensors file (no sharding): the checkpoints this writes are what one fxforge compile holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fxforge.errors import ExportError
from fxforge.export import stacked
from fxforge.export.ct_format import SCHEMES, layer_tensors, quantization_config, require
from fxforge.export.layers import linear_layers
from fxforge.ir.graph import Graph

WEIGHTS_FILE = "model.safetensors"


def hf_skeleton(hf: dict[str, Any]) -> tuple[Any, torch.nn.Module]:
    """(transformers config, the model built on the meta device) from a stored HF config record."""
    import transformers

    data = dict(hf["config"])
    arch = (data.get("architectures") or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise ExportError(f"the stored Hugging Face config names architecture {arch!r}, which transformers "
                          f"{transformers.__version__} does not have; export needs the model class")
    config = transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    with torch.device("meta"):
        model = cls(config)
    return config, model


def _tied(model: torch.nn.Module, config: Any) -> set[str]:
    if not getattr(config, "tie_word_embeddings", False):
        return set()
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys)


def checkpoint_state(graph: Graph, model: torch.nn.Module, config: Any) -> tuple[dict[str, Tensor], list, list[str]]:
    """(state dict to save, the quantized layers, the HF linears left high precision)."""
    keys = list(model.state_dict())
    tied = _tied(model, config)
    layers, linear_names = linear_layers(graph, keys, tuple(SCHEMES))
    _check_weights_are_parameters(graph, model, keys, linear_names)
    unstacked = stacked.plain_parts(graph)  # biases of stacked linears, back under their HF names
    state: dict[str, Tensor] = {}
    for layer in layers:
        if layer.scheme is None:
            state[f"{layer.name}.weight"] = layer.dense.contiguous()
        else:
            state.update({f"{layer.name}.{k}": v for k, v in layer_tensors(layer).items()})
    quantized = [layer for layer in layers if layer.scheme]
    qnames = {layer.name for layer in quantized}
    missing = []
    for key in keys:
        if key in state or key.removesuffix(".weight") in qnames or key in tied:
            continue
        w = graph.weights.get(key)
        if w is None and key in unstacked:
            state[key] = unstacked[key]
        elif w is None:
            missing.append(key)
        elif w.encoding is not None:
            raise ExportError(f"{key}: a {type(w.encoding).__name__} weight outside a linear has no counterpart in the format")
        else:
            state[key] = w.data.contiguous()
    if missing:
        raise ExportError(f"the compiled graph has no weight for HF parameter(s) {missing[:5]}"
                          f"{' ...' if len(missing) > 5 else ''} (a pass renamed or folded them); export needs every one")
    for key in tied:
        state.pop(key, None)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return state, quantized, sorted(linears - qnames)


def _check_weights_are_parameters(graph: Graph, model: torch.nn.Module, keys: list[str], linear_names: dict[str, str]) -> None:
    """Every weight the graph reads must be an HF parameter (or a non-persistent buffer the model rebuilds,
    e.g. rotary inv_freq): a weight a pass added under a new name (an untied, rotated embedding) means the
    compiled model is no longer the HF architecture with other weights, and writing it would be wrong."""
    used = {part for op in graph.ops if op.opcode == "const" for part in stacked.parts_of(op.attrs["weight"])}
    known = set(keys) | set(linear_names) | {n for n, _ in model.named_buffers()}
    stray = sorted(used - known)
    twice = sorted(k for k in set(linear_names.values()) if list(linear_names.values()).count(k) > 1 or
                   (k in used and k not in linear_names))
    if stray or twice:
        what = [f"{', '.join(stray[:4])} (no parameter of {type(model).__name__})"] if stray else []
        what += [f"{', '.join(twice[:4])} (read both as given and as rewritten)"] if twice else []
        raise ExportError(f"the compiled graph reads weight(s) {'; '.join(what)}: a pass (e.g. a residual rotation "
                          "that unties embeddings) changed the model beyond its HF architecture; compile without it to export")


def export_compressed_tensors(graph: Graph, hf: dict[str, Any] | None, directory: str | Path) -> Path:
    require()
    from compressed_tensors.compressors import ModelCompressor
    from safetensors.torch import save_file

    if not hf or not hf.get("config"):
        raise ExportError("export to compressed-tensors needs a Hugging Face model (a transformers PreTrainedModel "
                          "with a .config); this compiled model keeps no HF config: it was not made from one (or is "
                          "an artifact saved before fxforge kept it: compile it again)")
    config, model = hf_skeleton(hf)
    state, quantized, plain = checkpoint_state(graph, model, config)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    if hf.get("generation_config"):
        import transformers

        transformers.GenerationConfig.from_dict(hf["generation_config"]).save_pretrained(out)
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    qconfig = quantization_config(quantized, plain)
    if qconfig is not None:
        ModelCompressor(quantization_config=qconfig).update_config(str(out))
    _check_config(out)
    return out


def _check_config(out: Path) -> None:
    data = json.loads((out / "config.json").read_text())
    if "architectures" not in data:
        raise ExportError(f"{out / 'config.json'} has no architectures entry; transformers could not load it")
