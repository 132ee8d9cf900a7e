"""Helpers of the command line (`fxforge.cli`, every command): model loading, input specs, input files, output views.

Decisions:
- A bad command line input raises `UsageError` (not an `FxforgeError`: the library never raises it);
  `fxforge.cli.main` prints both kinds as one `fxforge: error: ...` line and exits with status 2.
- An input spec is `dtype[d0,d1,...]` (`dtype[]` is a scalar). The dtype is a torch name (int64,
  float32, long, half, ...) or an fxforge IR name (i64, f32, ...). Random inputs come from one
  seeded `torch.Generator`: integers uniform in [0, high) (high: the model's `config.vocab_size`, the
  artifact's smallest embedding table, else 100), floats `randn`, bools coin flips.
- A `--kwarg name=VALUE` value is a tensor spec, or a literal (true/false/none, an int or a float)
  for arguments that torch.export captures as constants (e.g. `use_cache=false`).
- Input files are read with `torch.load(weights_only=True)`: a tensor (one positional input), a tuple
  or list (positional inputs) or a dict (keyword inputs).
- Outputs are saved as plain containers (a Hugging Face `ModelOutput` becomes a dict) so that the
  file loads with `torch.load(weights_only=True)` and without the model's library.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fxforge.ir.dtypes import DType

SPEC_HELP = "write dtype[d0,d1,...], e.g. int64[2,128] or float32[2,16,64]"
DEFAULT_INT_HIGH = 100
_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\[(.*)\]\s*$")


class UsageError(Exception):
    """A command line input that cannot work (bad spec, missing file, no such factory, ...)."""


# -- input specs ------------------------------------------------------------------------------------

def parse_dtype(name: str, spec: str) -> torch.dtype:
    candidate = getattr(torch, name, None)
    if isinstance(candidate, torch.dtype):
        return candidate
    try:
        dtype = DType.parse(name)
    except ValueError:
        known = ", ".join(d.ir_name for d in DType if not d.is_packed)
        raise UsageError(f"bad input spec {spec!r}: unknown dtype {name!r}; use a torch name (int64, int32, float32, "
                         f"float16, bfloat16, bool, ...) or an fxforge one ({known})") from None
    if dtype.is_packed:
        raise UsageError(f"bad input spec {spec!r}: {name} is a packed weight format, not an input dtype; use e.g. int8 or uint8")
    return dtype.torch


def parse_spec(spec: str) -> tuple[torch.dtype, tuple[int, ...]]:
    """`int64[2,128]` -> (torch.int64, (2, 128))."""
    m = _SPEC.match(spec)
    if not m:
        raise UsageError(f"bad input spec {spec!r}: {SPEC_HELP}")
    dtype = parse_dtype(m.group(1), spec)
    dims: list[int] = []
    for text in (d.strip() for d in m.group(2).split(",")) if m.group(2).strip() else ():
        if not text.isdigit():
            raise UsageError(f"bad input spec {spec!r}: dim {text!r} is not a non-negative integer; {SPEC_HELP}")
        dims.append(int(text))
    return dtype, tuple(dims)


def random_tensor(spec: str, gen: torch.Generator, int_high: int) -> torch.Tensor:
    dtype, shape = parse_spec(spec)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    return torch.randint(0, int_high, shape, generator=gen, dtype=dtype)


def parse_literal(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise UsageError(f"bad value {text!r}: a keyword input is a tensor spec ({SPEC_HELP}) or true/false/none/a number")


def parse_kwarg(item: str, flag: str = "--kwarg") -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip().replace(".", "_").isidentifier():
        raise UsageError(f"bad {flag} {item!r}: write name=VALUE, e.g. attention_mask=int64[2,128] or use_cache=false")
    return name.strip(), value


def check_inputs(specs: list[str], kwarg_items: list[str]) -> None:
    """Fail on a bad spec or --kwarg before anything slow (importing the model, loading an artifact)."""
    for spec in specs:
        parse_spec(spec)
    for item in kwarg_items:
        _, value = parse_kwarg(item)
        parse_spec(value) if "[" in value else parse_literal(value)


def make_inputs(specs: list[str], kwarg_items: list[str], seed: int, int_high: int) -> tuple[tuple, dict]:
    """Random positional inputs from `specs` and keyword inputs from `name=SPEC|literal` items."""
    check_inputs(specs, kwarg_items)
    gen = torch.Generator().manual_seed(seed)
    args = tuple(random_tensor(s, gen, int_high) for s in specs)
    kwargs: dict[str, Any] = {}
    for item in kwarg_items:
        name, value = parse_kwarg(item)
        kwargs[name] = random_tensor(value, gen, int_high) if "[" in value else parse_literal(value)
    return args, kwargs


def named_inputs(names: list[str], args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    """(name, value) of each input: positional ones named after the forward's parameters (or arg{i})."""
    return [(names[i] if i < len(names) else f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())


def size_one_dims(args: tuple, kwargs: dict, names: list[str]) -> list[str]:
    """`name[dim]` for each example dim of size 1 (torch.export specialises those)."""
    found = []
    for name, value in named_inputs(names, args, kwargs):
        if isinstance(value, torch.Tensor):
            found += [f"{name}[dim {i}]" for i, d in enumerate(value.shape) if d == 1]
    return found


def int_high_of_model(model: torch.nn.Module) -> int:
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return vocab if isinstance(vocab, int) and vocab > 0 else DEFAULT_INT_HIGH


def int_high_of_graph(graph: Any) -> int:
    """The smallest embedding table of a compiled graph (token ids must index it), else the default."""
    rows = [op.operands[0].type.shape[0] for op in graph.find("embedding")]
    rows = [r for r in rows if isinstance(r, int) and r > 0]
    return min(rows) if rows else DEFAULT_INT_HIGH


# -- the model --------------------------------------------------------------------------------------

def load_model(target: str) -> torch.nn.Module:
    """`path/to/file.py:factory` -> the nn.Module the factory makes (a function, a Module class with a
    no-argument constructor, or a Module object; `factory` may be dotted: `file.py:models.tiny`)."""
    path_text, sep, attr = target.rpartition(":")
    if not sep or not path_text or not attr:
        raise UsageError(f"model {target!r} must be path/to/file.py:factory (a function returning an nn.Module)")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist; give the path of a .py file, e.g. models/tiny.py:make_model")
    module = _import_file(path)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = sorted(k for k, v in vars(module).items() if not k.startswith("_") and callable(v)
                           and getattr(v, "__module__", None) == module.__name__)
            raise UsageError(f"{path} has no {attr!r}; define it (a function returning an nn.Module) or use one of: "
                             f"{', '.join(found) or '(nothing callable defined there)'}")
        obj = getattr(obj, part)
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise UsageError(f"{path}:{attr} is not a function or an nn.Module (it is a {type(obj).__name__}); "
                             "name the function that makes the model")
        try:
            obj = obj()
        except Exception as e:
            raise UsageError(f"calling {path}:{attr}() raised {type(e).__name__}: {e} (--traceback shows where)") from e
    if not isinstance(obj, torch.nn.Module):
        raise UsageError(f"{path}:{attr}() returned a {type(obj).__name__}, not a torch.nn.Module; return the model")
    return obj


def _import_file(path: Path) -> Any:
    name = "fxforge_user_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise UsageError(f"importing {path} raised {type(e).__name__}: {e} (--traceback shows where)") from e
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


# -- input files, outputs ---------------------------------------------------------------------------

def load_input_file(path_text: str) -> tuple[tuple, dict]:
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"input file {path} does not exist; write one with torch.save(tensor | tuple | dict, path)")
    try:
        data = torch.load(path, weights_only=True)
    except Exception as e:
        raise UsageError(f"cannot read input file {path}: not a torch.save file of tensors ({type(e).__name__}); "
                         "write it with torch.save(tensor | tuple | dict of tensors, path)") from None
    if isinstance(data, torch.Tensor):
        return (data,), {}
    if isinstance(data, (tuple, list)):
        return tuple(data), {}
    if isinstance(data, dict) and all(isinstance(k, str) for k in data):
        return (), dict(data)
    raise UsageError(f"input file {path} holds a {type(data).__name__}; save a tensor, a tuple of inputs or a dict of "
                     "named inputs")


def leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, leaf) pairs of an output structure: `logits`, `[0]`, `hidden_states[1]`, ..."""
    if isinstance(obj, Mapping):
        return [kv for k, v in obj.items() for kv in leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, (tuple, list)):
        return [kv for i, v in enumerate(obj) for kv in leaves(v, f"{prefix}[{i}]")]
    return [(prefix or "output", obj)]


def plain(obj: Any) -> Any:
    """The structure with plain dicts/tuples/lists only (a `ModelOutput` becomes a dict)."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(plain(v) for v in obj) if type(obj) in (tuple, list) else tuple(plain(v) for v in obj)
    return obj


def tensor_type(value: torch.Tensor) -> str:
    """`int64[2,16]`: the spec that makes a tensor like this one."""
    return f"{str(value.dtype).removeprefix('torch.')}[{','.join(map(str, value.shape))}]"


def describe(value: Any) -> str:
    """`float32[2, 16, 256]  mean=... std=... min=... max=...` for a tensor, repr for anything else."""
    if not isinstance(value, torch.Tensor):
        return repr(value)
    head = tensor_type(value)
    if value.numel() == 0:
        return head + "  (empty)"
    if value.dtype.is_floating_point:
        v = value.detach().float()
        std = v.std().item() if v.numel() > 1 else 0.0
        return head + f"  mean={v.mean().item():.4g} std={std:.4g} min={v.min().item():.4g} max={v.max().item():.4g}"
    if value.dtype.is_complex:
        return head
    v = value.detach().long()
    return head + f"  min={v.min().item()} max={v.max().item()}"


def counts(table: dict[str, int], top: int = 10) -> str:
    """`reshape x23, const x22, ...`: the largest counts first."""
    items = sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} x{v}" for k, v in items[:top])
    return text + (f", ... ({len(items) - top} more)" if len(items) > top else "")


def signature(graph: Any) -> str:
    """`forward(%input_ids: i64[s0, s1])`: the compiled graph's inputs and their (symbolic) types."""
    from fxforge.ir.printer import print_type

    return f"{graph.name}(" + ", ".join(f"%{v.name}: {print_type(v.type)}" for v in graph.inputs) + ")"
