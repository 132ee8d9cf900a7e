"""Greedy generation through a compiled decode step (issue #13): fxforge's own static KV cache.

`greedy_generate(step, input_ids, max_new_tokens, eos_token_id)` runs a `CompiledModule` whose graph
is a decode step (`frontend/kv_capture.py`: `step(input_ids, cache_position, kv) -> logits`): one
prefill call on the prompt, then one call per new token, argmax each time. Returns the prompt with
the new tokens appended, as HF's `generate()` does (rows that met `eos_token_id` are padded with it).

Decisions:
- The caches are preallocated once per (batch bucket, max length) from the step's input types and
  kept on the module (`StaticKVCache`); every call writes them in place at `cache_position` (the
  device-side length the mask is built from), so nothing is reset or copied between steps. A stale
  row past the current length is never read (masked), so a new generation reuses the cache as is.
- A batch smaller than the compiled bucket is padded with copies of its first row and cut back.
- Compressed formats (#12, `compile_decoder(..., kv_cache="bfp4" | "bfp8" | "fp8" | "int8", kv_block=)`)
  are the storage itself: the `kv_cache` pass retypes the step's cache inputs to packed rows, so the
  caches allocated here from those types are ONE uint8 tensor per cache [B, H_kv, L, row_bytes]
  (`kv_ops.kv_row_layout`: a token's codes, then its block scales). One tensor, not codes + scales
  apart: the step keeps one input per cache, a token's write is one contiguous row, and a kernel finds
  the scales at a constant offset in the row it already addresses. `format` / `block` say which
  (read from the graph's `cache_write`s); `nbytes` is what the caches hold (measured in
  benchmarks/kv_cache_storage.py; allocate on device="meta" to size a long context without memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fxforge.errors import InputError


@dataclass
class StaticKVCache:
    """The preallocated caches of one (batch bucket, max length): k_0, v_0, ..., k_{L-1}, v_{L-1}."""

    tensors: tuple[torch.Tensor, ...]
    batch: int
    max_length: int
    format: str = "dense"
    block: int | None = None  # channels per scale of a compressed format

    @classmethod
    def for_step(cls, graph: Any, device: Any = None) -> StaticKVCache:
        """Allocated from the types of the step graph's cache inputs (all inputs after the first two)."""
        types = [v.type for v in graph.inputs[2:]]
        if not types or any(t.rank != 4 or not t.is_static for t in types):
            raise InputError("this compiled module is not a decode step with static caches; compile it with "
                             "fxforge.compile_decoder(model, max_length=...)")
        tensors = tuple(torch.zeros(tuple(t.shape), dtype=t.dtype.torch, device=device) for t in types)
        writes = [op.attrs for op in graph.ops if op.opcode == "cache_write" and op.attrs["format"] != "dense"]
        fmt, block = (writes[0]["format"], writes[0]["block"]) if writes else ("dense", None)
        return cls(tensors, int(types[0].shape[0]), int(types[0].shape[2]), fmt, block)

    @property
    def nbytes(self) -> int:
        """Bytes the caches hold (codes and scales of a compressed format)."""
        return sum(t.numel() * t.element_size() for t in self.tensors)


def greedy_generate(step: Any, cache: StaticKVCache, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | None = None, decode_step: Any = None) -> torch.Tensor:
    """Greedy decoding with `step` (a decode-step CompiledModule) on the caches `cache`; `decode_step`
    (e.g. a `cuda_graph.GraphedStep`, made before this call) runs the T=1 steps instead when given."""
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be [batch, length], got shape {list(input_ids.shape)}")
    batch, length = input_ids.shape
    if batch > cache.batch:
        raise InputError(f"batch {batch} is over the compiled batch bucket {cache.batch}; compile_decoder(..., batch={batch})")
    if length + max_new_tokens > cache.max_length:
        raise InputError(f"prompt ({length}) + max_new_tokens ({max_new_tokens}) is over the compiled max_length "
                         f"{cache.max_length}; compile_decoder(..., max_length={length + max_new_tokens})")
    ids = input_ids if batch == cache.batch else torch.cat([input_ids, input_ids[:1].expand(cache.batch - batch, -1)])
    device = cache.tensors[0].device
    ids = ids.to(device)
    out = [ids]
    done = torch.zeros(cache.batch, dtype=torch.bool, device=device)
    pos = torch.arange(length, device=device)
    tokens = ids
    for i in range(max_new_tokens):
        logits = (decode_step if decode_step is not None and i > 0 else step)(tokens, pos, cache.tensors)
        nxt = logits[:, -1].argmax(-1)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        out.append(nxt[:, None])
        if eos_token_id is not None and bool(done[:batch].all()):
            break
        tokens = nxt[:, None]
        pos = pos[-1:] + 1
    return torch.cat(out, dim=1)[:batch].to(input_ids.device)
