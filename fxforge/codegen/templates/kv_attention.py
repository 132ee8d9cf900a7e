"""Attention over a packed KV cache (issue #12): the template of a `kv_attention` kernel group, i.e. an
`attention` op whose K and V are `kv_load`s of packed caches (through HF's GQA head-repeat views).

    out = kv_attention(q, k_cache, v_cache, mask, format=, block=, scale=, is_causal=, softcap=, sinks=)

q [B, Hq, Lq, D]; k_cache / v_cache uint8 [B, Hkv, L, row_bytes] (`kv_ops.kv_row_layout`); mask as
for `attention`. Query head h reads kv head h // (Hq / Hkv): the repeat views the group swallowed.
Same result as `attention(q, kv_load(k_cache), kv_load(v_cache), mask)` with the heads repeated.

Decisions:
- Lq = 1 (a decode step, not causal): flash-decoding reads the packed rows directly and decodes them
  in its key loop (`decode_attention(..., kv_format=)`): one launch, and memory traffic is the
  compressed cache. So a T=1 step keeps the dense step's launch count.
- Lq > 1 (the prefill call): the caches are first decoded into temporaries (`kv_unpack_rows`, one launch
  each) and the flash-attention template runs on them. Simpler than a second packed attention kernel,
  and a prefill runs once per generation; its extra memory is one layer's dense K and V at a time.
"""

from __future__ import annotations

import torch

from fxforge.codegen.templates.attention import attention
from fxforge.codegen.templates.decode_attention import decode_attention
from fxforge.codegen.templates.kv_cache import kv_unpack_rows
from fxforge.errors import ShapeError
from fxforge.ir.kv_ops import kv_row_layout


def kv_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor | None = None, *,
                 format: str, block: int, scale: float | None = None, is_causal: bool = False,
                 softcap: float | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """sdpa of q over the packed caches (see the module docstring)."""
    B, Hq, Lq, D = q.shape
    row = kv_row_layout(format, block, D)[1]
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    if (k_cache.dtype != torch.uint8 or tuple(k_cache.shape) != (B, Hkv, L, row) or v_cache.shape != k_cache.shape
            or v_cache.dtype != torch.uint8 or Hq % Hkv):
        raise ShapeError(f"kv_attention: {format} caches of head_dim {D} must both be uint8 [B={B}, Hkv, L, {row}] with "
                         f"Hkv dividing Hq={Hq}; got {k_cache.dtype}{tuple(k_cache.shape)}, "
                         f"{v_cache.dtype}{tuple(v_cache.shape)}")
    if Lq == 1 and not is_causal and L > 0 and B * Hq > 0 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1:
        if mask is not None:
            try:
                mask.expand(B, Hq, 1, L)
            except RuntimeError as e:
                raise ShapeError(f"mask {tuple(mask.shape)} does not broadcast to {(B, Hq, 1, L)}") from e
        if sinks is not None:
            sinks = sinks.reshape(Hq).contiguous()
        return decode_attention(q, k_cache, v_cache, mask, scale=scale, softcap=softcap, sinks=sinks, kv_format=format,
                                kv_block=block)
    k = kv_unpack_rows(k_cache.contiguous(), format, block, D, q.dtype)
    v = kv_unpack_rows(v_cache.contiguous(), format, block, D, q.dtype)
    return attention(q, k, v, mask, scale=scale, is_causal=is_causal, enable_gqa=Hq != Hkv, softcap=softcap, sinks=sinks)
