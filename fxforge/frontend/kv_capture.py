"""Capture of a Hugging Face decoder LM's step with fxforge's own static KV cache (issue #13).

`capture_decoder(model, batch, max_length)` exports one graph,

    step(input_ids[B, T], cache_position[T], kv=(k_0, v_0, ..., k_{L-1}, v_{L-1})) -> logits[B, T, V]

where every cache is a run-time input of static shape [B, H_kv, max_length, D], written in place at
`cache_position` (RoPE already applied to keys) by `cache_write` ops, and attention reads the whole
cache under HF's mask built from `cache_position` (the device-side length: rows past it are masked).
T is dynamic: the same graph runs the prefill (T = prompt length) and every decode step (T = 1).

Decisions (the capture route):
- torch.export of a wrapper whose cache object is an HF `Cache` of `StaticLayer`s bound to the input
  tensors, with `update` writing at the given positions (HF's own StaticLayer counts positions in a
  tensor of its own state, which an exported graph cannot keep). HF computes RoPE, GQA and the mask as
  in eager, so the tokens are eager's; no model code is rewritten.
- Each layer's cache shape is read from HF's own dynamic cache after a 2-token eager forward (`kv_layout`), not from
  the config: Falcon's new decoder caches every query head, Gemma 4's global layers have wider heads.
- The writes are `aten.index_copy_` on graph inputs: lowered to `cache_write` (in place, no copy of
  the cache), and only the cache inputs may be written (anything else is refused as `compile_aot` does).
- RoPE whose frequencies depend on the positions seen (dynamic NTK, LongRoPE) is captured with its original table,
  exact up to its limit, which max_length must not pass (`rope_updates.static_rope`).
- Batch and max length are static per capture (one graph per (batch bucket, max length)); the
  runtime (`runtime/generate.py`) owns the preallocated caches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import Dim

from fxforge.errors import CaptureError, ConfigError, NotCompilableError
from fxforge.frontend.experts import batched_experts
from fxforge.frontend.export import Capture, _written_placeholders, lower_exported
from fxforge.frontend.rope_updates import static_rope
from fxforge.ir.calling import DECODE_STEP_ARGS

STEP_ARGS = list(DECODE_STEP_ARGS)  # the step's signature: how a CompiledModule knows it can generate


@dataclass(frozen=True)
class KVLayout:
    """The caches of one decoder: per cache layer a pair (k, v) of [batch, heads, max_length, dim], `shapes` holding
    (k heads, k dim, v heads, v dim) per layer: what the model writes, which may differ between layers (Gemma 4's
    global layers have wider heads) and from the config (Falcon's new decoder keeps every query head's K/V)."""

    shapes: tuple[tuple[int, int, int, int], ...]
    batch: int
    max_length: int
    dtype: torch.dtype

    def allocate(self, device: Any = "cpu") -> tuple[torch.Tensor, ...]:
        return tuple(torch.zeros((self.batch, heads, self.max_length, dim), dtype=self.dtype, device=device)
                     for kh, kd, vh, vd in self.shapes for heads, dim in ((kh, kd), (vh, vd)))


def kv_layout(model: torch.nn.Module, batch: int, max_length: int) -> KVLayout:
    """The cache shapes `model` writes, read from HF's own dynamic cache after a 2-token eager forward (a config says
    what most models write, not what every one does)."""
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    if text is None or not hasattr(text, "num_hidden_layers") or not hasattr(text, "num_attention_heads"):
        raise NotCompilableError(f"{type(model).__name__} is not a Hugging Face decoder LM (no config with "
                                 "num_hidden_layers/num_attention_heads); compile_decoder takes e.g. LlamaForCausalLM")
    from transformers.cache_utils import DynamicCache

    param = next(model.parameters())
    cache = DynamicCache(config=cfg)
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=param.device), past_key_values=cache,
                  use_cache=True)
    except Exception as e:  # the model's own forward: any failure means it cannot be captured either
        raise CaptureError(f"a 2-token eager forward of {type(model).__name__} with HF's DynamicCache failed "
                           f"({type(e).__name__}: {str(e).strip()[:200]}); compile_decoder needs a decoder LM that "
                           "runs with HF's cache") from e
    layers = getattr(cache, "layers", [])
    unwritten = [i for i, layer in enumerate(layers) if getattr(layer, "keys", None) is None]
    if not layers or unwritten:
        raise NotCompilableError(f"{type(model).__name__} left cache layers {unwritten or 'all'} unwritten; "
                                 "compile_decoder's static cache holds one (k, v) per layer the model writes at "
                                 "every index (compile(model) still compiles its forward)")
    shapes = tuple((layer.keys.shape[1], layer.keys.shape[3], layer.values.shape[1], layer.values.shape[3])
                   for layer in layers)
    return KVLayout(shapes, batch, max_length, param.dtype)


def _step_module(model: torch.nn.Module) -> torch.nn.Module:
    from transformers.cache_utils import Cache, StaticLayer  # only HF decoders come here

    class _Layer(StaticLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor) -> None:
            super().__init__(keys.shape[2])
            self.keys, self.values, self.pos = keys, values, pos
            self.cumulative_length = pos[0]  # HF builds the mask's query positions from it: the device-side length
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            self.keys.index_copy_(2, self.pos, key_states.to(self.keys.dtype))
            self.values.index_copy_(2, self.pos, value_states.to(self.values.dtype))
            return self.keys, self.values

    class DecodeStep(torch.nn.Module):
        def __init__(self, lm: torch.nn.Module) -> None:
            super().__init__()
            self.model = lm

        def forward(self, input_ids, cache_position, kv):
            cache = Cache(layers=[_Layer(kv[2 * i], kv[2 * i + 1], cache_position) for i in range(len(kv) // 2)])
            positions = cache_position[None].expand(input_ids.shape[0], -1)
            return self.model(input_ids=input_ids, past_key_values=cache, cache_position=cache_position,
                              position_ids=positions, use_cache=True).logits

    return DecodeStep(model).eval()


def capture_decoder(model: torch.nn.Module, batch: int, max_length: int) -> tuple[Capture, KVLayout]:
    """Export the decode step of `model` for one (batch, max_length) and lower it (see the docstring)."""
    step = _step_module(model)
    device = next(model.parameters()).device
    ids = torch.zeros((batch, 2), dtype=torch.long, device=device)  # T=2: stays dynamic (1 would be specialised)
    pos = torch.arange(2, device=device)
    start = time.perf_counter()
    with static_rope(model, max_length), batched_experts(model):  # the tables it sets are those the export and the lowering read
        layout = kv_layout(model, batch, max_length)  # (its eager forward inside: the model's state is restored after)
        kv = layout.allocate(device)
        try:
            with torch.no_grad():
                ep = torch.export.export(step, (ids, pos, kv), strict=False,
                                         dynamic_shapes=({1: Dim.AUTO}, {0: Dim.AUTO}, (None,) * len(kv)))
        except Exception as e:  # torch raises many kinds; all mean "not capturable"
            raise CaptureError(f"torch.export could not capture the decode step of {type(model).__name__}: "
                               f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
        user = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        written = _written_placeholders(ep) - set(user[2:])
        if written or ep.graph_signature.buffers_to_mutate:
            raise CaptureError(f"the decode step of {type(model).__name__} writes {sorted(written)} besides its KV "
                               "cache; fxforge's decode capture only lets the cache be written")
        lowered = lower_exported(ep, step)
    return Capture(lowered, ep.call_spec.in_spec, ep.call_spec.out_spec, time.perf_counter() - start, []), layout


def step_calibration(examples: list, layout: KVLayout) -> list[list[torch.Tensor]]:
    """Calibration examples (token ids [B, T], a tuple whose first item they are, or {"input_ids": ...})
    as the step graph's tensor inputs: prefill calls (ids, arange(T), fresh zero caches), the rows cut
    into the compiled batch bucket (the last chunk padded with copies of its first row)."""
    out = []
    for example in examples:
        ids = example.get("input_ids") if isinstance(example, dict) else example[0] if isinstance(example, tuple) else example
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ConfigError("compile_decoder's calibration examples are token ids [batch, length] (a tensor, a tuple "
                               f"starting with one, or {{'input_ids': ...}}); got {type(ids).__name__}")
        if ids.shape[1] > layout.max_length:
            raise ConfigError(f"a calibration example of length {ids.shape[1]} is over max_length {layout.max_length}")
        for chunk in ids.long().split(layout.batch):
            if len(chunk) < layout.batch:
                chunk = torch.cat([chunk, chunk[:1].expand(layout.batch - len(chunk), -1)])
            out.append([chunk, torch.arange(chunk.shape[1]), *layout.allocate()])
    return out
