"""KV-cache storage formats: what a compressed K/V cache stores, and the `kv_quant` op that quantize-
dequantizes K (after RoPE) and V exactly as the cache would store them.

    kv_quant(x) {format, block} -> x's type: decode(encode(x)) in blocks of `block` along the last (head) dim
    packed = pack_kv(x, format, block)      # KVPacked(codes, scales): the bytes a cache slot holds
    x_hat = unpack_kv(packed, dtype)        # == kv_quant's reference, bit for bit
    rows = pack_kv_rows(x, format, block)   # uint8 [..., row_bytes]: one cache row per token (codes, then scales)
    x_hat = unpack_kv_rows(rows, format, block, head_dim, dtype)   # == unpack_kv(pack_kv(x)), bit for bit

Formats (`KV_FORMATS`; blocks run along head_dim, one scale per block per token and head):
    bfp4   block floating point, 4-bit mantissa: two's complement q in [-7, 7] (two per byte, low nibble
           first), value q * 2^e with a shared E8M0 exponent e per block (1 byte)
    bfp8   the same with an 8-bit mantissa q in [-127, 127] (one byte each)
    fp8    E4M3 elements (one byte each) with a shared E8M0 exponent per block (MXFP8 over kv_block)
    int8   q in [-127, 127] with an fp16 scale amax / 127 per block (2 bytes)
Bytes per token and layer = (K + V) * heads_kv * head_dim * (element bits / 8 + scale bytes / block);
`KVPacked.nbytes` measures it from the stored tensors.

Decisions:
- Shared exponents use the "noclip" rule of `block_formats` (BFP: e = the smallest exponent with
  amax / 2^e <= q_max; fp8: MX's floor(log2 amax) - emax, plus one when that would clip): written at
  decode time, one token at a time, so the rule must be cheap and deterministic; nothing saturates.
  An all-zero block gets e = -127 (decodes to zeros).
- Rounding: half to even on q (torch.round), in float64 after an exact power-of-two scaling, so the
  reference is exact; int8's division by its fp16 scale is done in float32 (as a kernel would).
- A packed cache row (`kv_row_layout`): the token's codes (head_dim * bits / 8 bytes) then its block
  scales (1 byte E8M0 each; int8: 2 bytes fp16, little endian, at the even byte offset head_dim), so a
  cache is ONE uint8 tensor [B, H_kv, L, row_bytes]: the decode step keeps one tensor per cache, a
  token's write is one contiguous row, and a kernel finds a row's scales at a constant offset.
- Non-finite K/V values are not representable: they decode as NaN for the whole block (E8M0 0xFF), so
  a NaN in attention stays visible instead of being silently replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fxforge.ir import block_formats as bf
from fxforge.ir.errors import ShapeError
from fxforge.ir.ops import REQUIRED, OpDef, register
from fxforge.ir.types import TensorType

KV_FORMATS = ("bfp4", "bfp8", "fp8", "int8")
KV_BLOCKS = (16, 32, 64)
_QMAX = {"bfp4": 7, "bfp8": 127, "int8": 127}
ELEMENT_BITS = {"bfp4": 4, "bfp8": 8, "fp8": 8, "int8": 8}
SCALE_BYTES = {"bfp4": 1, "bfp8": 1, "fp8": 1, "int8": 2}


KSORT_MODES = ("off", "on", "auto")  # the option vocabulary lives with the formats so config may import it


def kv_options_problem(fmt: object, block: object, k_sort: object = "off") -> str | None:
    """What is wrong with the kv_cache / kv_block / k_sort options, or None (CompileConfig and the passes)."""
    if fmt is not None and fmt not in KV_FORMATS:
        return f"kv_cache={fmt!r} is not a KV-cache format; use one of {list(KV_FORMATS)} or None"
    if block not in KV_BLOCKS:
        return f"kv_block={block!r} is not one of {list(KV_BLOCKS)}"
    if k_sort not in KSORT_MODES:
        return f"k_sort={k_sort!r} is not one of {list(KSORT_MODES)}"
    return None


def kv_bytes_per_element(fmt: str, block: int) -> float:
    """Stored bytes per K or V element (elements + their share of the block scale)."""
    return ELEMENT_BITS[fmt] / 8 + SCALE_BYTES[fmt] / block


@dataclass(frozen=True)
class KVPacked:
    """One compressed K or V tensor [..., D]: codes uint8 [..., D * bits / 8], scales [..., D / block]
    (uint8 E8M0 or fp16)."""

    codes: Tensor
    scales: Tensor
    shape: tuple[int, ...]
    format: str
    block: int

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()


def check_block(head_dim: int, block: int) -> None:
    if block not in KV_BLOCKS:
        raise ValueError(f"kv_block={block} is not one of {KV_BLOCKS}")
    if head_dim % block:
        raise ValueError(f"kv_block {block} does not divide head_dim {head_dim}; use a kv_block that divides it")


def _blocks(x: Tensor, block: int) -> Tensor:
    check_block(x.shape[-1], block)
    return x.to(torch.float64).reshape(*x.shape[:-1], x.shape[-1] // block, block)


def _bfp_exponent(amax: Tensor, qmax: int) -> Tensor:
    """Smallest e with amax / 2^e <= qmax (int64, clamped to [-127, 127]); -127 for zero blocks."""
    mant, e = torch.frexp(amax / qmax)  # = mant * 2^e, mant in [0.5, 1): ceil(log2) is e, or e - 1 at mant == 0.5
    exp = torch.where(mant == 0.5, e - 1, e).to(torch.int64)
    return torch.where(amax > 0, exp, -127).clamp(-127, 127)


def pack_kv(x: Tensor, fmt: str, block: int) -> KVPacked:
    """The compressed form of x [..., D] (see the module docstring)."""
    if fmt not in KV_FORMATS:
        raise ValueError(f"unknown KV-cache format {fmt!r}; use one of {KV_FORMATS}")
    blocks = _blocks(x, block)
    finite = torch.isfinite(blocks).all(-1)
    blocks = torch.where(finite.unsqueeze(-1), blocks, 0.0)
    amax = blocks.abs().amax(-1)
    if fmt == "fp8":
        q = bf.quantize_mx(blocks.reshape(*x.shape[:-1], -1), bf.MXSpec("kv_fp8", "f8e4m3", block), "noclip")
        scales = torch.where(finite, q.scales, bf.E8M0_NAN).to(torch.uint8)
        return KVPacked(q.codes, scales, tuple(x.shape), fmt, block)
    qmax = _QMAX[fmt]
    if fmt == "int8":
        s = (amax / qmax).to(torch.float16)
        s = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.round(blocks.float() / s.float().unsqueeze(-1)).clamp(-qmax, qmax)
        s = torch.where(finite, s, torch.full_like(s, float("nan")))
        return KVPacked(q.to(torch.int8).view(torch.uint8).reshape(x.shape), s, tuple(x.shape), fmt, block)
    exp = _bfp_exponent(amax, qmax)
    q = torch.round(torch.ldexp(blocks, -exp.unsqueeze(-1).to(torch.float64))).clamp(-qmax, qmax).to(torch.int64)
    codes = (q & 0xFF if fmt == "bfp8" else q & 0xF).to(torch.uint8).reshape(x.shape)
    if fmt == "bfp4":
        codes = bf.pack_codes(codes, 4)
    scales = torch.where(finite, bf.encode_e8m0(exp), bf.E8M0_NAN).to(torch.uint8)
    return KVPacked(codes, scales, tuple(x.shape), fmt, block)


def unpack_kv(p: KVPacked, dtype: torch.dtype = torch.float32) -> Tensor:
    """The values a compressed K/V tensor stands for (NaN blocks decode to NaN)."""
    if p.format == "fp8":
        spec = bf.MXSpec("kv_fp8", "f8e4m3", p.block)
        codes = p.codes
        vals = bf.decode_elements(codes, spec.element_format).double()
        scale = bf.decode_e8m0(p.scales).double()
    elif p.format == "int8":
        vals = p.codes.view(torch.int8).double()
        scale = p.scales.double()
    else:
        codes = bf.unpack_codes(p.codes, 4) if p.format == "bfp4" else p.codes
        bits = ELEMENT_BITS[p.format]
        half = 1 << (bits - 1)
        vals = ((codes.to(torch.int64) ^ half) - half).double()
        scale = bf.decode_e8m0(p.scales).double()
    blocks = vals.reshape(*p.shape[:-1], p.shape[-1] // p.block, p.block) * scale.unsqueeze(-1)
    return blocks.reshape(p.shape).to(dtype)


def kv_quant_ref(x: Tensor, *, format: str, block: int) -> Tensor:
    """kv_quant's reference: unpack(pack(x)) in x's dtype."""
    return unpack_kv(pack_kv(x, format, block), x.dtype)


def _kv_quant_infer(types, attrs):
    (x,) = types
    if attrs["format"] not in KV_FORMATS:
        raise ShapeError(f"kv_quant: format {attrs['format']!r} is not one of {KV_FORMATS}")
    d = x.shape[-1] if x.rank else None
    if attrs["block"] not in KV_BLOCKS or (isinstance(d, int) and d % attrs["block"]):
        raise ShapeError(f"kv_quant: block {attrs['block']} must be one of {KV_BLOCKS} and divide head_dim {d}")
    if not x.dtype.is_float:
        raise ShapeError(f"kv_quant takes a float tensor, got {x.dtype}")
    return [TensorType(x.shape, x.dtype)]


register(OpDef("kv_quant", (1, 1), {"format": REQUIRED, "block": REQUIRED}, _kv_quant_infer, kv_quant_ref, "lowp",
               "kv_quant(x) {format, block}: quantize-dequantize K/V along head_dim as a compressed KV cache stores it"))


def kv_row_layout(fmt: str, block: int, head_dim: int) -> tuple[int, int]:
    """(code bytes, row bytes) of one packed cache row of `head_dim` channels (see the docstring)."""
    if fmt not in KV_FORMATS:
        raise ValueError(f"unknown KV-cache format {fmt!r}; use one of {KV_FORMATS}")
    check_block(head_dim, block)
    code = head_dim * ELEMENT_BITS[fmt] // 8
    return code, code + head_dim // block * SCALE_BYTES[fmt]


def pack_kv_rows(x: Tensor, fmt: str, block: int) -> Tensor:
    """uint8 [..., row_bytes]: `pack_kv(x)` as cache rows, codes then scales (bytes of int8's fp16 scales)."""
    p = pack_kv(x, fmt, block)
    scales = p.scales.contiguous().view(torch.uint8) if fmt == "int8" else p.scales
    return torch.cat([p.codes, scales], dim=-1)


def unpack_kv_rows(rows: Tensor, fmt: str, block: int, head_dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The values packed cache rows [..., row_bytes] stand for, [..., head_dim] in `dtype` (== unpack_kv)."""
    code, total = kv_row_layout(fmt, block, head_dim)
    if rows.dtype != torch.uint8 or rows.shape[-1] != total:
        raise ValueError(f"packed {fmt} rows of head_dim {head_dim} (block {block}) are uint8 [..., {total}]; "
                         f"got {rows.dtype}{list(rows.shape)}")
    scales = rows[..., code:]
    if fmt == "int8":
        scales = scales.contiguous().view(torch.float16)
    return unpack_kv(KVPacked(rows[..., :code], scales, (*rows.shape[:-1], head_dim), fmt, block), dtype)
