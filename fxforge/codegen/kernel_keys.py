"""One kernel per functional kernel group: the emitted text of a pointwise/row group is keyed by
`ir.fhash.group_key` and reused, within a module (identical decoder layers launch one kernel, so
Triton builds it once) and across compiles in a process (a recompile of the same model emits nothing).

A group's kernel is emitted with canonical local names (`kernels.canonical_naming`) and a placeholder
name; a launch takes the cached text, gives it the module's kernel name, and maps the launch
arguments from the canonical names to `run()`'s names.

Decisions:
- The key holds everything the emitters read: the group's ops, attributes and types (canonical IR),
  and per input whether it is a contiguous buffer and whether it is a `full` literal (its value).
- The process-wide cache is bounded (LRU, `MAX_CACHED` groups): kernels are small text.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace

from fxforge.codegen.kernels import KernelSource, Naming, canonical_naming, pointwise_kernel, row_kernel
from fxforge.ir.fhash import group_key
from fxforge.ir.graph import Value
from fxforge.ir.partition import KernelGroup

PLACEHOLDER = "_fxforge_kernel_"
MAX_CACHED = 4096
_CACHE: OrderedDict[str, KernelSource] = OrderedDict()
_LOCAL = re.compile(r"\b(in\d+|t\d+)\b")
STATS = {"hits": 0, "misses": 0}  # process-wide, for benchmarks and tests


def _extra(v: Value, contiguous: set[int]) -> str:
    p = v.producer
    lit = f" literal={p.attrs['value']!r}" if p is not None and p.opcode == "full" else ""
    return ("contiguous" if id(v) in contiguous else "strided") + lit


def key_of(group: KernelGroup, contiguous: set[int]) -> str:
    return group_key(group.kind, group.ops, group.inputs, group.outputs, group.reason, group.params,
                     lambda v: _extra(v, contiguous))


def _canonical(group: KernelGroup, key: str, contiguous: set[int]) -> KernelSource:
    ks = _CACHE.get(key)
    if ks is not None:
        STATS["hits"] += 1
        _CACHE.move_to_end(key)
        return ks
    STATS["misses"] += 1
    local = canonical_naming(group, {}, contiguous)
    naming = Naming(local.names, contiguous)  # the launch arguments in canonical names, mapped per launch
    ks = (row_kernel if group.kind == "row" else pointwise_kernel)(group, PLACEHOLDER, naming)
    _CACHE[key] = ks
    if len(_CACHE) > MAX_CACHED:
        _CACHE.popitem(last=False)
    return ks


def kernel_for(group: KernelGroup, run_names: dict[int, str], contiguous: set[int], names: dict[str, str],
               index: int) -> tuple[KernelSource, bool]:
    """The kernel for `group` in a module whose kernels so far are `names` (group key -> kernel name,
    updated here): (its source with the launch arguments in `run()`'s names, whether it is new to
    the module). `index` numbers a new kernel's name (`k{index}_{opcode}`)."""
    key = key_of(group, contiguous)
    canon = _canonical(group, key, contiguous)
    new = key not in names
    if new:
        anchor = group.params["anchor"].opcode if group.kind == "row" else group.root.opcode
        names[key] = f"k{index}_{anchor}"
    kname = names[key]
    local = canonical_naming(group, run_names, contiguous)
    to_run = {local.names[id(v)]: run_names[id(v)] for v in [*group.inputs, *group.outputs] if id(v) in run_names}

    def sub(text: str) -> str:
        return _LOCAL.sub(lambda m: to_run.get(m.group(1), m.group(1)), text)

    text = canon.text.replace(f"def {PLACEHOLDER}(", f"def {kname}(", 1)
    return replace(canon, name=kname, text=text, args=[sub(a) for a in canon.args], grid=sub(canon.grid),
                   meta={k: sub(v) for k, v in canon.meta.items()}, guard=sub(canon.guard)), new
