"""Quantization schemes and element codes: what each scheme stores, and the per-element encode/decode of
its formats (`formats.py` holds the bit-level codecs). `lowp_ops` builds the weight codec and the
low-precision ops on these; they are re-exported there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fxforge.ir import formats

# -- schemes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scheme:
    name: str
    weight_format: str
    act_format: str | None
    group: int  # default group along the input dim (0: per output channel)
    zero_point: bool = False
    pow2: bool = False  # ZeroQuant-FP power-of-two group scales


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("w8a8-int8", "i8", "i8", 0),
        Scheme("w8a8-fp8", "f8e4m3", "f8e4m3", 0),
        Scheme("w4a16-int4", "i4", None, 128, zero_point=True),
        Scheme("w4a8-fp", "f4e2m1", "f8e4m3", 32, pow2=True),
    )
}
ACT_FORMATS = (None, "i8", "f8e4m3")
MAX_SHIFT = 8  # FP4 (min magnitude 2^-1) * 2^-8 = 2^-9, E4M3's smallest subnormal: the cast stays exact


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown quantization scheme {name!r}; known schemes: {', '.join(SCHEMES)}") from None


# -- element helpers --------------------------------------------------------------------------------


def is_float(fmt: str) -> bool:
    return formats.get_format(fmt).kind == "float"


def encode_elements(x: Tensor, fmt: str) -> Tensor:
    """Codes of `x` (already divided by its scale), one per element, in the storage dtype of `fmt`."""
    f = formats.get_format(fmt)
    if f.kind == "float":
        codes = formats.encode_float(x, f)
        return codes.view(formats.FP8_TORCH_DTYPES[f.name]) if f.name in formats.FP8_TORCH_DTYPES else codes
    q = torch.round(x.to(torch.float32)).clamp(-f.max_value, f.max_value)
    return q.to(torch.int8) if f.bits == 8 else (q.to(torch.int16) & 0xF).to(torch.uint8)


def decode_elements(q: Tensor, fmt: str) -> Tensor:
    """float32 values of codes made by `encode_elements`."""
    f = formats.get_format(fmt)
    if f.kind == "float":
        codes = q.view(torch.uint8) if q.dtype != torch.uint8 else q
        return formats.decode_float(codes, f)
    if f.bits == 8:
        return q.to(torch.float32)
    return (((q.to(torch.int16) & 0xF) ^ 8) - 8).to(torch.float32)


def amax_scale(amax: Tensor, max_value: float) -> Tensor:
    s = amax.to(torch.float32) / max_value
    return torch.where(s > 0, s, torch.ones_like(s))


def fake_quant_act(x: Tensor, fmt: str | None) -> Tensor:
    """Per-token (per row of the last dim) symmetric quantize-dequantize, in float32."""
    xf = x.to(torch.float32)
    if fmt is None:
        return xf
    f = formats.get_format(fmt)
    s = amax_scale(xf.abs().amax(-1, keepdim=True), f.max_value)
    return decode_elements(encode_elements(xf / s, fmt), fmt) * s
