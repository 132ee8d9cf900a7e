"""The storage a generated module's `run()` writes into: planned buffers and a scratch workspace, allocated
once per size key and reused by every later call (issue #13, item 2: an allocation-free `run()`).

A generated module prints `_plan(device, *sizes)`, which allocates every buffer of its `BufferPlan`
(`buffers.py`), and starts `run()` with `buf0, ..., _ws = _pooled(pool, _plan, outputs, device, *sizes)`:
- `BufferPool.take` returns the buffers made for that key at the first call (device and sizes, so a
  decode step (T = 1) and a prefill (T = prompt length) keep a set each), and a `Workspace` for the
  templates' internal scratch (split-K partials, flash-decoding partials);
- without a pool (`pool=None`, a bare `module.run(...)` call) every call allocates afresh, as before.

Decisions:
- Graph outputs escape to the caller, so by default a call gets fresh output buffers (one allocation
  per output), and the old result stays valid. `static_outputs=True` (a decode step's generate loop, a
  CUDA graph) reuses them too: a result is then valid until the next call with the same sizes, the
  contract of a CUDA graph's outputs. The intermediates never escape, so they are always reused.
- One pool per thread (`GeneratedModule` keeps them in a `threading.local`): two threads running one
  module never share scratch; calls on one thread run in order on its stream.
- At most `MAX_KEYS` size keys are kept (least recently used dropped): a server seeing many prompt
  lengths does not keep a buffer set for each. A CUDA graph captured on a key keeps its own references
  (`BufferPool.held`), so dropping the key never frees storage a graph replays into.
- The workspace is one byte arena per device, grown to the largest request: a template carves its
  scratch tensors from it (`Workspace.take`) and must be done with them when it returns (the next
  template call reuses the bytes; kernels on one stream run in order). Growth happens in the first
  call of a key only, as the requests are the same every call. Counters that must start at zero
  (split-K's arrivals) live apart (`Workspace.counters`): zeroed once, re-armed by the kernel itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fxforge.errors import ShapeError

MAX_KEYS = 4
ALIGN = 256  # bytes: every scratch tensor starts at an aligned offset (vector loads, TMA)


class Workspace:
    """Scratch of the template calls of one `run()`: views into one growing byte arena."""

    def __init__(self) -> None:
        self.arena: torch.Tensor | None = None
        self.grows = 0  # how many times the arena was (re)allocated: 0 or 1 after warm-up
        self.locks: torch.Tensor | None = None  # zeroed int32 counters (split-K), never part of the arena

    def counters(self, device: torch.device, n: int) -> torch.Tensor:
        """`n` int32 counters that are zero before and after every kernel using them (each kernel re-arms
        what it counts: split-K's last split resets its tile's counter), kept apart from the scratch."""
        if self.locks is None or self.locks.numel() < n or self.locks.device != torch.device(device):
            self.locks = torch.zeros(max(n, 1), dtype=torch.int32, device=device)
        return self.locks[:n]

    def take(self, device: torch.device, *specs: tuple[tuple[int, ...], torch.dtype]) -> list[torch.Tensor]:
        """Contiguous tensors of these (shape, dtype), not overlapping each other, valid until the next take."""
        offsets, total = [], 0
        for shape, dtype in specs:
            total = -(-total // ALIGN) * ALIGN
            offsets.append(total)
            total += _numel(shape) * dtype.itemsize
        if self.arena is None or self.arena.numel() < total or self.arena.device != torch.device(device):
            self.arena = torch.empty(max(total, 1), dtype=torch.uint8, device=device)
            self.grows += 1
        out = []
        for (shape, dtype), at in zip(specs, offsets):
            size = _numel(shape) * dtype.itemsize
            out.append(self.arena[at:at + size].view(dtype).view(shape))
        return out


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def scratch(ws: Workspace | None, device: torch.device, *specs: tuple[tuple[int, ...], torch.dtype]) -> list[torch.Tensor]:
    """A template's scratch tensors: from the workspace when the caller passed one, else allocated."""
    if ws is None:
        return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in specs]
    return ws.take(device, *specs)


def counters(ws: Workspace | None, device: torch.device, n: int) -> torch.Tensor:
    """A template's zeroed counters: the workspace's (kept zero between calls) or new ones."""
    return torch.zeros(n, dtype=torch.int32, device=device) if ws is None else ws.counters(device, n)


class BufferPool:
    """Planned buffers and a workspace per size key, made at the first call of the key (see module doc)."""

    def __init__(self, static_outputs: bool = False, max_keys: int = MAX_KEYS) -> None:
        self.static_outputs = static_outputs
        self.max_keys = max_keys
        self.sets: OrderedDict[tuple, tuple[list[torch.Tensor], Workspace]] = OrderedDict()
        self.allocations = 0  # planned-buffer sets made (a test reads it: one per key after warm-up)

    def take(self, make: Callable[..., Sequence[torch.Tensor]], outputs: Sequence[int], key: tuple) -> list[Any]:
        """The buffers of `key` (`make(*key)` at its first call) and its workspace, last."""
        hit = self.sets.get(key)
        if hit is None:
            hit = self.sets[key] = (list(make(*key)), Workspace())
            self.allocations += 1
            while len(self.sets) > self.max_keys:
                self.sets.popitem(last=False)
        else:
            self.sets.move_to_end(key)
        bufs, ws = hit
        if outputs and not self.static_outputs:  # the caller keeps its results: fresh output storage
            bufs = list(bufs)
            for i in outputs:
                bufs[i] = torch.empty_like(bufs[i])
        return [*bufs, ws]

    def clear(self) -> None:
        """Drop every kept buffer (memory back to torch; the next call of each key makes its set again)."""
        self.sets.clear()

    def held(self) -> list[Any]:
        """Every buffer and workspace arena kept now (a CUDA graph keeps these references alive)."""
        out: list[Any] = []
        for bufs, ws in self.sets.values():
            out += [*bufs, ws.arena, ws.locks]
        return out


def pooled(pool: BufferPool | None, make: Callable[..., Sequence[torch.Tensor]], outputs: Sequence[int],
           *key: Any) -> list[Any]:
    """`run()`'s first line: its planned buffers and workspace (fresh every call without a pool)."""
    if pool is None:
        return [*make(*key), Workspace()]
    return pool.take(make, outputs, key)


class ThreadPools(threading.local):
    """One `BufferPool` per thread, with the policy of the module that owns it."""

    def __init__(self, static_outputs: bool = False) -> None:
        self.pool = BufferPool(static_outputs)


def out_tensor(out: torch.Tensor | None, shape: Sequence[int], dtype: torch.dtype, device: torch.device,
               what: str) -> torch.Tensor:
    """A template's result storage: the caller's planned `out` (checked: contiguous, this shape and dtype),
    else a new tensor."""
    shape = tuple(int(d) for d in shape)
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != shape or out.dtype != dtype or not out.is_contiguous() or out.device != torch.device(device):
        raise ShapeError(f"{what}: out= must be a contiguous {dtype} tensor of shape {shape} on {device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device} (contiguous: {out.is_contiguous()})")
    return out
