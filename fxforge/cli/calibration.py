"""`fxforge compile --calibration FILE`: a file of example inputs -> the examples `CompileConfig.calibration` takes.

Two layouts:
- `.pt` (or `.pth`): `torch.save([example, ...], path)`, a list of examples, each a tensor (the one
  positional input), a tuple or list of positional inputs, or a dict of keyword inputs. Read with
  `torch.load(weights_only=True)`, so the file cannot run code.
- `.safetensors`: one tensor per input of each example, keyed `"<example>.<input>"`: `<example>` counts
  from 0, `<input>` is a positional index (`0.0`, `0.1`, ...) or a keyword name (`0.input_ids`); a
  key `"<example>"` alone is that example's one positional input. safetensors holds only tensors, so
  keyword literals (`use_cache=False`) are not expressible there; use a `.pt` file for those.

Decisions:
- Positional examples become tuples (`compile_aot` reads a tuple as the positional inputs and any
  other non-dict value as the single input, so a list left as a list would be read wrongly).
- A file that is missing, unreadable or laid out otherwise is a `UsageError` naming the layout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fxforge.cli.inputs import UsageError

PT_LAYOUT = ("torch.save([example, ...], 'calib.pt'), each example a tensor, a tuple of positional inputs "
             "or a dict of keyword inputs")
SAFETENSORS_LAYOUT = ("a .safetensors file with one tensor per input keyed '<example>.<input>' "
                      "(e.g. '0.input_ids', '1.input_ids', or '0.0', '0.1' for positional inputs)")
_KEY = re.compile(r"^(\d+)(?:\.(.+))?$")


def load_calibration(path_text: str) -> list[Any]:
    """The examples in a calibration file (see the module docstring for the layouts)."""
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"calibration file {path} does not exist; write one with {PT_LAYOUT}, or {SAFETENSORS_LAYOUT}")
    if path.suffix == ".safetensors":
        return _from_safetensors(path)
    if path.suffix in (".pt", ".pth"):
        return _from_pt(path)
    raise UsageError(f"calibration file {path}: unknown kind {path.suffix or '(no suffix)'!r}; "
                     f"give a .pt file ({PT_LAYOUT}) or {SAFETENSORS_LAYOUT}")


def _from_pt(path: Path) -> list[Any]:
    import torch

    try:
        data = torch.load(path, weights_only=True)
    except Exception as e:
        raise UsageError(f"calibration file {path}: cannot read it ({type(e).__name__}); write it with {PT_LAYOUT}") from None
    if not isinstance(data, (list, tuple)):
        raise UsageError(f"calibration file {path} holds a {type(data).__name__}, not a list of examples; write it with {PT_LAYOUT}")
    if not data:
        raise UsageError(f"calibration file {path} holds an empty list; write it with {PT_LAYOUT}")
    return [_example(path, i, item) for i, item in enumerate(data)]


def _example(path: Path, i: int, item: Any) -> Any:
    import torch

    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (tuple, list)) and item:
        return tuple(item)
    if isinstance(item, dict) and item and all(isinstance(k, str) for k in item):
        return dict(item)
    raise UsageError(f"calibration file {path}: example {i} is a {type(item).__name__}"
                     f"{' (empty)' if isinstance(item, (tuple, list, dict)) else ''}; write it with {PT_LAYOUT}")


def _from_safetensors(path: Path) -> list[Any]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise UsageError(f"calibration file {path}: cannot read it ({type(e).__name__}); write {SAFETENSORS_LAYOUT}") from None
    examples: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise UsageError(f"calibration file {path}: key {key!r} is not '<example>.<input>'; write {SAFETENSORS_LAYOUT}")
        examples.setdefault(int(m.group(1)), {})[m.group(2) or "0"] = tensor
    if not examples or sorted(examples) != list(range(len(examples))):
        raise UsageError(f"calibration file {path}: examples {sorted(examples)} are not numbered 0, 1, ...; "
                         f"write {SAFETENSORS_LAYOUT}")
    return [_safetensors_example(path, i, examples[i]) for i in range(len(examples))]


def _safetensors_example(path: Path, i: int, inputs: dict[str, Any]) -> Any:
    positional = [k for k in inputs if k.isdigit()]
    if not positional:
        return inputs
    if len(positional) != len(inputs) or sorted(map(int, positional)) != list(range(len(positional))):
        raise UsageError(f"calibration file {path}: example {i} has inputs {sorted(inputs)}; give either positional "
                         f"inputs numbered 0, 1, ... or keyword names, not both; write {SAFETENSORS_LAYOUT}")
    return tuple(inputs[str(j)] for j in range(len(positional)))
