"""Pytree specs read from an artifact: rebuilt from a fixed allow-list, never by importing what the file names.

An artifact's manifest holds the input and output structure of the model (torch's pytree spec as
JSON). Each node names a type; `load_spec` accepts only:
- leaves, `tuple`, `list`, `dict`, `OrderedDict` and `None` (torch's own pytree types), and
- the output classes of Hugging Face `transformers`, by name, looked up in the fixed module
  `transformers.modeling_outputs` (which defines and registers them), and only when transformers is
  installed here.
Anything else is an `ArtifactError` naming the type.

Decisions: the module to look in is fixed by this code, never taken from the file, so loading can
never import or run a module an artifact names (a file `evilmod.py` beside it stays untouched);
`treespec_loads` itself only looks types up in torch's registry.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from torch.utils import _pytree as pytree

from fxforge.errors import ArtifactError

BUILTIN_TYPES = frozenset({"builtins.tuple", "builtins.list", "builtins.dict", "builtins.NoneType",
                           "collections.OrderedDict"})
HF_OUTPUTS = "transformers.modeling_outputs"


def _types(node: dict[str, Any]) -> list[str]:
    if not isinstance(node, dict):
        raise ArtifactError("malformed pytree spec in manifest.json (a node is not an object); compile it again")
    found = [node["type"]] if node.get("type") else []
    return found + [t for child in node.get("children_spec", []) for t in _types(child)]


def _allow_hf_output(type_name: str) -> bool:
    """A transformers ModelOutput class of that name exists in transformers.modeling_outputs (importing that
    fixed module registers its classes with torch's pytree)."""
    module, _, cls = type_name.rpartition(".")
    if module != HF_OUTPUTS or not cls.isidentifier() or importlib.util.find_spec("transformers") is None:
        return False
    import transformers.modeling_outputs as outputs
    from transformers.utils import ModelOutput

    found = getattr(outputs, cls, None)
    return isinstance(found, type) and issubclass(found, ModelOutput)


def load_spec(text: str, field: str = "spec") -> Any:
    """The treespec of an artifact's manifest field, or an ArtifactError if it names a type off the list."""
    try:
        protocol, root = json.loads(text)
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"manifest.json field {field!r} is not a pytree spec ({e}); compile the artifact again") from None
    for type_name in _types(root):
        if type_name in BUILTIN_TYPES or _allow_hf_output(type_name):
            continue
        raise ArtifactError(
            f"manifest.json field {field!r} names the type {type_name!r}, which is not one fxforge rebuilds "
            f"(tuple, list, dict, None, or a class of {HF_OUTPUTS}); loading never imports a module an artifact "
            "names. Compile the artifact again from the model's source.")
    try:
        return pytree.treespec_loads(text)
    except Exception as e:  # torch raises several kinds for a spec it cannot read
        raise ArtifactError(f"manifest.json field {field!r}: {type(e).__name__}: {e}; compile the artifact again") from None
