"""Quantization schemes and element codes: what each scheme stores, and the per-element encode/decode of
its formats (`formats.py` holds the bit-level codecs). `lowp_ops` builds the weight codec and the
low-precision ops on these; they are re-exported there.

Block schemes (`Scheme.block` > 0: OCP MX and NVFP4, formats of `block_formats`): the weight is a
`#blockfp` const (codec in `block_weights`), blocks of `block` along the input dim, and activations are
quantize-dequantized per block of the last dim on the fly (`fake_quant_act` with the block format's
name as act_format; scale rule "noclip", NVFP4 with a per-token second-level scale: see
`block_formats`). Decided: mxfp6 is E2M3 (one more mantissa bit than E3M2; blocks of 32 rarely need
E3M2's range) and mxfp8 is E4M3 (E5M2's 2-bit mantissa loses more than its range gains).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fxforge.ir import block_formats, formats

# -- schemes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scheme:
    name: str
    weight_format: str
    act_format: str | None
    group: int  # default group along the input dim (0: per output channel)
    zero_point: bool = False
    pow2: bool = False  # ZeroQuant-FP power-of-two group scales
    block: int = 0  # block schemes: elements per shared scale (weight_format / act_format name block formats)


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("w8a8-int8", "i8", "i8", 0),
        Scheme("w8a8-fp8", "f8e4m3", "f8e4m3", 0),
        Scheme("w4a16-int4", "i4", None, 128, zero_point=True),
        Scheme("w4a8-fp", "f4e2m1", "f8e4m3", 32, pow2=True),
        Scheme("mxfp8", "mxfp8_e4m3", "mxfp8_e4m3", 32, block=32),
        Scheme("mxfp6", "mxfp6_e2m3", "mxfp6_e2m3", 32, block=32),
        Scheme("mxfp4", "mxfp4", "mxfp4", 32, block=32),
        Scheme("mxint8", "mxint8", "mxint8", 32, block=32),
        Scheme("nvfp4", "nvfp4", "nvfp4", 16, block=16),
    )
}
BLOCK_ACT_FORMATS = (*block_formats.MX_FORMATS, "nvfp4")
ACT_FORMATS = (None, "i8", "f8e4m3", *BLOCK_ACT_FORMATS)
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
    """Per-token (per row of the last dim) symmetric quantize-dequantize, in float32; block formats
    per block of the last dim (`block_formats.fake_quant_block`, scale rule "noclip")."""
    xf = x.to(torch.float32)
    if fmt is None:
        return xf
    if fmt in BLOCK_ACT_FORMATS:
        return block_formats.fake_quant_block(xf, fmt, "noclip").to(torch.float32)
    f = formats.get_format(fmt)
    s = amax_scale(xf.abs().amax(-1, keepdim=True), f.max_value)
    return decode_elements(encode_elements(xf / s, fmt), fmt) * s
