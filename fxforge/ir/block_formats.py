"""Block-scaled formats: OCP Microscaling (MXFP8/MXFP6/MXFP4/MXINT8), NVFP4, their packing and sizes.

This module owns how a tensor is cut into blocks along its last axis, how each block's shared scale is
chosen and stored, and how element codes are laid out in bytes. Element formats come from
`fxforge.ir.formats`, whose rounding rules apply to every element (saturating round-to-nearest-even).
Only its tests import it today; it is kept on purpose: issue #12 (block formats in the IR and kernels)
builds on it (docs/architecture.md, "Kept on purpose").

Decisions:
- Blocks run along the last axis, which must be a multiple of the block size (32 for MX, 16 for
  NVFP4); other sizes raise ValueError (pad the tensor first). No implicit padding.
- MX shared scale (OCP MX v1.0): E8M0 (bias 127, 0xFF = NaN), exponent
  floor(log2(amax_block)) - emax(element), clamped to the representable [-127, 127]. An all-zero block
  gets the smallest scale 2^-127 (code 0x00), so it decodes to zeros, never NaN/inf. A block holding
  NaN or +-inf gets the NaN scale 0xFF (its elements are stored as zeros) and decodes to all NaN.
  Elements are x / 2^scale (exact in float64) encoded in the element format, saturating at its max.
- MXINT8 elements are two's complement fixed point s1.6 (value = code * 2^-6, emax 0), rounded half
  to even and restricted to the symmetric range +-127 (code -128 is never produced).
- NVFP4 (NVIDIA's recipe): tensor scale ts = amax(|x|) / (6 * 448) in fp32 (1.0 for an all-zero
  tensor); per 16 elements a block scale e4m3(amax_block / 6 / ts) (saturating RNE, computed in
  float64); elements e2m1(x / (block_scale * ts)), all zeros where the block scale is 0 (a zero block,
  or one so small its scale underflows e4m3). Non-finite inputs raise ValueError (NVFP4 has no NaN).
  Divisions are exact-then-rounded-once in float64; a GPU kernel that multiplies by a reciprocal can
  differ on exact ties.
- Packing along the last axis: 4-bit codes two per byte (element 2i in the low nibble); 6-bit codes
  four per three bytes, little-endian (code 4i in bits 0-5 of the 24-bit group, 4i+1 in 6-11, ...);
  8-bit codes one per byte (MXINT8 as the int8 bit pattern).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fxforge.ir.formats import (
    Format,
    decode_float,
    encode_float,
    get_format,
    pack_nibbles,
    unpack_nibbles,
)

E8M0_BIAS = 127
E8M0_NAN = 0xFF
NVFP4_BLOCK = 16
NVFP4_SCALE_FORMAT = "f8e4m3"
NVFP4_ELEMENT_FORMAT = "f4e2m1"


@dataclass(frozen=True)
class MXSpec:
    """One MX format: element format name, block size, and the element's emax."""

    name: str
    element: str
    block: int = 32

    @property
    def element_format(self) -> Format:
        return get_format(self.element)

    @property
    def emax(self) -> int:
        return self.element_format.emax


MX_FORMATS: dict[str, MXSpec] = {
    s.name: s
    for s in (
        MXSpec("mxfp8_e4m3", "f8e4m3"),
        MXSpec("mxfp8_e5m2", "f8e5m2"),
        MXSpec("mxfp6_e2m3", "f6e2m3"),
        MXSpec("mxfp6_e3m2", "f6e3m2"),
        MXSpec("mxfp4", "f4e2m1"),
        MXSpec("mxint8", "i8"),
    )
}


def get_mx_format(fmt: MXSpec | str) -> MXSpec:
    """The `MXSpec` for a name; ValueError names the known MX formats."""
    if isinstance(fmt, MXSpec):
        return fmt
    try:
        return MX_FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown MX format {fmt!r}; known: {', '.join(MX_FORMATS)}") from None


@dataclass(frozen=True)
class MXTensor:
    """An MX-quantized tensor: packed element codes, one E8M0 scale per block of the last axis."""

    codes: Tensor  # uint8, packed along the last axis per the element's bit width
    scales: Tensor  # uint8 E8M0, shape [..., K // block]
    shape: tuple[int, ...]
    format: str

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_mx(self, dtype)

    @property
    def nbytes(self) -> int:
        return bytes_of(self.codes, self.scales)


@dataclass(frozen=True)
class NVFP4Tensor:
    """An NVFP4 tensor: packed E2M1 codes, E4M3 scale codes per 16 elements, one fp32 tensor scale."""

    codes: Tensor  # uint8, two E2M1 codes per byte along the last axis
    block_scales: Tensor  # uint8 E4M3 codes, shape [..., K // 16]
    tensor_scale: Tensor  # float32, 0-dim
    shape: tuple[int, ...]
    format: str = "nvfp4"

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_nvfp4(self, dtype)

    @property
    def nbytes(self) -> int:
        return bytes_of(self.codes, self.block_scales, self.tensor_scale)


def bytes_of(*parts: Tensor | MXTensor | NVFP4Tensor) -> int:
    """Storage size in bytes of tensors and quantized tensors (codes + scales), summed."""
    total = 0
    for p in parts:
        total += p.nbytes if isinstance(p, (MXTensor, NVFP4Tensor)) else p.numel() * p.element_size()
    return total


# ---------------------------------------------------------------- E8M0 and packing

def encode_e8m0(exponent: Tensor) -> Tensor:
    """E8M0 codes of integer exponents (clamped to [-127, 127]); 2^e is stored as e + 127."""
    return (exponent.to(torch.int64).clamp(-E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).to(torch.uint8)


def decode_e8m0(codes: Tensor) -> Tensor:
    """float32 2^(code - 127); 0xFF is NaN (code 0 is the fp32 subnormal 2^-127)."""
    c = codes.to(torch.int64)
    value = torch.ldexp(torch.ones_like(c, dtype=torch.float64), (c - E8M0_BIAS).to(torch.float64))
    return torch.where(c == E8M0_NAN, torch.nan, value).to(torch.float32)


def pack_fp6(codes: Tensor) -> Tensor:
    """Pack 6-bit codes four per three bytes along the last axis (little-endian 24-bit groups)."""
    n = codes.shape[-1]
    if n % 4:
        raise ValueError(f"last axis has size {n}, not a multiple of 4; pad it to pack 6-bit codes")
    c = (codes.to(torch.int32) & 0x3F).reshape(*codes.shape[:-1], n // 4, 4)
    word = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    out = torch.stack((word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF), dim=-1)
    return out.reshape(*codes.shape[:-1], 3 * (n // 4)).to(torch.uint8)


def unpack_fp6(packed: Tensor) -> Tensor:
    """Inverse of `pack_fp6`: uint8 codes 0..63."""
    n = packed.shape[-1]
    if n % 3:
        raise ValueError(f"last axis has size {n}, not a multiple of 3: not packed 6-bit codes")
    b = packed.to(torch.int32).reshape(*packed.shape[:-1], n // 3, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    out = torch.stack([(word >> (6 * i)) & 0x3F for i in range(4)], dim=-1)
    return out.reshape(*packed.shape[:-1], 4 * (n // 3)).to(torch.uint8)


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack element codes of `bits` (4, 6 or 8) along the last axis."""
    return {4: pack_nibbles, 6: pack_fp6, 8: lambda c: c.to(torch.uint8)}[bits](codes)


def unpack_codes(packed: Tensor, bits: int) -> Tensor:
    """Inverse of `pack_codes`."""
    return {4: unpack_nibbles, 6: unpack_fp6, 8: lambda c: c}[bits](packed)


# ---------------------------------------------------------------- elements

def _blocks(x: Tensor, block: int) -> Tensor:
    """float64 view [..., K // block, block]; ValueError unless K is a multiple of `block`."""
    if x.dim() == 0 or x.shape[-1] % block:
        k = x.shape[-1] if x.dim() else "a scalar"
        raise ValueError(f"last axis has size {k}, not a multiple of the block size {block}; pad it")
    return x.to(torch.float64).reshape(*x.shape[:-1], x.shape[-1] // block, block)


def encode_elements(v: Tensor, fmt: Format | str) -> Tensor:
    """Element codes of already-scaled values: floats per `encode_float`, ints as MX fixed point."""
    f = get_format(fmt)
    if f.kind == "float":
        return encode_float(v, f)
    q = torch.round(v.to(torch.float64) * 2.0 ** (f.bits - 2))  # exact: a power-of-two scaling
    q = q.clamp(-f.max_value, f.max_value).to(torch.int64)
    return (q & ((1 << f.bits) - 1)).to(torch.uint8)


def decode_elements(codes: Tensor, fmt: Format | str) -> Tensor:
    """float32 values of element codes (ints as MX fixed point code * 2^-(bits-2))."""
    f = get_format(fmt)
    if f.kind == "float":
        return decode_float(codes, f)
    half = 1 << (f.bits - 1)
    q = (codes.to(torch.int64) ^ half) - half
    return (q.to(torch.float64) * 2.0 ** (2 - f.bits)).to(torch.float32)


# ---------------------------------------------------------------- MX

def mx_shared_exponent(amax: Tensor, emax: int) -> Tensor:
    """floor(log2(amax)) - emax as int64, clamped to [-127, 127]; amax == 0 gives -127."""
    a = amax.to(torch.float64)
    _, e = torch.frexp(a)
    exp = torch.where(a > 0, e.to(torch.int64) - 1 - emax, -E8M0_BIAS)
    return exp.clamp(-E8M0_BIAS, E8M0_BIAS)


def quantize_mx(x: Tensor, fmt: MXSpec | str) -> MXTensor:
    """Quantize `x` to an MX format in blocks along the last axis (see the module docstring)."""
    spec = get_mx_format(fmt)
    blocks = _blocks(x, spec.block)
    amax = blocks.abs().amax(-1)
    finite = torch.isfinite(amax)
    exp = mx_shared_exponent(torch.where(finite, amax, 0.0), spec.emax)
    scaled = torch.ldexp(blocks, -exp.unsqueeze(-1).to(torch.float64))
    scaled = torch.where(finite.unsqueeze(-1), scaled, 0.0)
    codes = encode_elements(scaled, spec.element_format).reshape(x.shape)
    scales = torch.where(finite, encode_e8m0(exp), E8M0_NAN).to(torch.uint8)
    packed = pack_codes(codes, spec.element_format.bits)
    return MXTensor(packed, scales, tuple(x.shape), spec.name)


def dequantize_mx(q: MXTensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Element value * 2^scale per block; NaN blocks (scale 0xFF) decode to NaN."""
    spec = get_mx_format(q.format)
    codes = unpack_codes(q.codes, spec.element_format.bits)
    values = decode_elements(codes, spec.element_format).to(torch.float64)
    blocks = values.reshape(*q.shape[:-1], q.shape[-1] // spec.block, spec.block)
    scale = decode_e8m0(q.scales).to(torch.float64).unsqueeze(-1)
    return (blocks * scale).reshape(q.shape).to(dtype)


# ---------------------------------------------------------------- NVFP4

def nvfp4_tensor_scale(x: Tensor) -> Tensor:
    """fp32 amax(|x|) / (6 * 448); 1.0 when x is all zeros."""
    amax = x.detach().abs().amax().to(torch.float32)
    scale = amax / (6.0 * 448.0)
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def quantize_nvfp4(x: Tensor) -> NVFP4Tensor:
    """Quantize `x` to NVFP4 in blocks of 16 along the last axis (see the module docstring)."""
    blocks = _blocks(x, NVFP4_BLOCK)
    if not bool(torch.isfinite(blocks).all()):
        raise ValueError("NVFP4 cannot store NaN or inf: clamp or mask the tensor before quantizing")
    ts = nvfp4_tensor_scale(x)
    block_codes = encode_float(blocks.abs().amax(-1) / 6.0 / ts.double(), NVFP4_SCALE_FORMAT)
    s = (decode_float(block_codes, NVFP4_SCALE_FORMAT).double() * ts.double()).unsqueeze(-1)
    scaled = torch.where(s > 0, blocks / torch.where(s > 0, s, 1.0), 0.0)
    codes = encode_float(scaled, NVFP4_ELEMENT_FORMAT).reshape(x.shape)
    return NVFP4Tensor(pack_nibbles(codes), block_codes, ts, tuple(x.shape))


def nvfp4_block_scales(q: NVFP4Tensor) -> Tensor:
    """float64 effective scale of each block: e4m3 block scale * tensor scale."""
    return decode_float(q.block_scales, NVFP4_SCALE_FORMAT).double() * q.tensor_scale.double()


def dequantize_nvfp4(q: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """E2M1 value * block scale * tensor scale (exact in float64, rounded once to `dtype`)."""
    values = decode_float(unpack_nibbles(q.codes), NVFP4_ELEMENT_FORMAT).double()
    blocks = values.reshape(*q.shape[:-1], q.shape[-1] // NVFP4_BLOCK, NVFP4_BLOCK)
    return (blocks * nvfp4_block_scales(q).unsqueeze(-1)).reshape(q.shape).to(dtype)
