"""Export of compiled models to other runtimes' checkpoint formats, and the import of those checkpoints.

    layers.py      a compiled graph's linears read back as exportable layers; what a format cannot express
    ct_format.py   compressed-tensors (vLLM's format): scheme <-> QuantizationArgs, codes <-> tensors
    ct_export.py   writing a compressed-tensors checkpoint directory
    ct_import.py   reading a transformers model loaded from a compressed-tensors checkpoint into fxforge's
                   encoded weights (adopted by the `adopt` pass instead of rounding again)

`export(graph, hf, directory, format)` is what `CompiledModule.export` and `fxforge export` call; `hf` is
the Hugging Face config record `compile_aot` keeps (`{"config": ..., "generation_config": ...}`).

Decisions:
- This layer imports only `ir` and `errors` (and, lazily, transformers and compressed-tensors): the
  runtime's `CompiledModule.export` calls it, so it must not know the runtime.
- One table of formats (`FORMATS`): a new format is one row and one module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fxforge.errors import ExportError
from fxforge.export.ct_export import export_compressed_tensors
from fxforge.ir.graph import Graph

FORMATS: dict[str, Callable[[Graph, dict[str, Any] | None, str | Path], Path]] = {
    "compressed-tensors": export_compressed_tensors,
}


def export(graph: Graph, hf: dict[str, Any] | None, directory: str | Path, format: str = "compressed-tensors") -> Path:
    """Write the compiled graph as a checkpoint of `format` into `directory`; returns the directory."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; known: {', '.join(FORMATS)}")
    return FORMATS[format](graph, hf, directory)


__all__ = ["FORMATS", "export"]
