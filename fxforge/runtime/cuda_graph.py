"""CUDA-graph capture and replay of a decode step (issue #13, item 2 of "What to build").

`GraphedStep(step, cache)` captures one decode step (T = 1) of a compiled decode module on its static
KV cache (`runtime/generate.py`) as a `torch.cuda.CUDAGraph`, once per (batch bucket, max length);
each token then copies its token ids and position into the graph's static inputs and replays: one
launch from the host instead of one per kernel, no Python on the path.

Decisions:
- Warm-up runs (Triton JIT compiles, the allocator's pool) happen on a side stream before capture;
  they write cache row 0, so the graph is made BEFORE the prefill, which overwrites that row.
- `run()` allocates nothing once a size key has run (`codegen/pool.py`: every kernel, template and
  host op writes a buffer planned once per key; `CompiledModule.generate` captures inside
  `Program.static_outputs()`, so the logits reuse theirs too): the warm-up makes the buffers, and the
  graph replays into those same addresses. The graph keeps references to every pooled buffer
  (`self.held`), so a pool that later drops the key (LRU) never frees storage the graph writes. Torch
  calls that would still allocate (a step the planner lists in `BufferPlan.allocating`: none for a
  decode step) take the graph's private pool, as before. The cache tensors must stay the ones
  captured: `__call__` checks their addresses.
- A capture that fails (a host synchronisation in some launcher) is not hidden: `generate` warns with
  the reason and runs the step uncaptured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fxforge.errors import InputError


class GraphedStep:
    def __init__(self, step: Callable[..., torch.Tensor], kv: tuple[torch.Tensor, ...], batch: int,
                 warmup: int = 2) -> None:
        device = kv[0].device
        if device.type != "cuda":
            raise InputError("CUDA-graph capture needs the decode step's caches on a CUDA device (executor='triton')")
        self.kv = kv
        self.ptrs = [t.data_ptr() for t in kv]
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                step(self.ids, self.pos, kv)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.logits = step(self.ids, self.pos, kv)
        pool = step.program.buffer_pool() if hasattr(step, "program") else None
        self.held = pool.held() if pool is not None else []  # the buffers the graph replays into

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, kv: Any = None) -> torch.Tensor:
        if kv is not None and [t.data_ptr() for t in kv] != self.ptrs:
            raise InputError("a captured decode step replays on the caches it was captured with; pass those")
        self.ids.copy_(ids)
        self.pos.copy_(pos)
        self.graph.replay()
        return self.logits
