"""Block-scaled formats: OCP Microscaling (MXFP8/MXFP6/MXFP4/MXINT8), NVFP4, their packing and sizes.

This module owns how a tensor is cut into blocks along its last axis, how each block's shared scale is
chosen and stored, and how element codes are laid out in bytes. Element formats come from
`fxforge.ir.formats`, whose rounding rules apply to every element (saturating round-to-nearest-even).
The MX/NVFP4 quantization schemes (`fxforge.ir.block_weights`, `fxforge.ir.schemes`) and the KV-cache
formats build on it.

Decisions:
- Blocks run along the last axis, which must be a multiple of the block size (32 for MX, 16 for
  NVFP4); other sizes raise ValueError (pad the tensor first). No implicit padding.
- MX shared scale (OCP MX v1.0): E8M0 (bias 127, 0xFF = NaN), exponent
  floor(log2(amax_block)) - emax(element), clamped to the representable [-127, 127]. An all-zero block
  gets the smallest scale 2^-127 (code 0x00), so it decodes to zeros, never NaN/inf. A block holding
  NaN or +-inf gets the NaN scale 0xFF (its elements are stored as zeros) and decodes to all NaN.
  Elements are x / 2^scale (exact in float64) encoded in the element format, saturating at its max.
- Scale rules (`SCALE_RULES`, argument `rule` of `quantize_mx` / `quantize_nvfp4`): "ocp" is the spec's
  rule above (NVFP4: the block scale rounded to nearest, NVIDIA's recipe). It clips: a block whose
  amax / 2^e exceeds the element max (E4M3: amax / 2^e in (448, 512); E2M1: (6, 8)) saturates its
  largest values. "noclip" takes e + 1 (NVFP4: the next E4M3 code) for exactly those blocks, so
  nothing saturates; it is cheap and deterministic (one exact comparison), which is why on-the-fly
  activation quantization uses it. "search" encodes each block with both candidates (e and e + 1;
  NVFP4: the rounded scale code and the next one) and keeps the one with the smaller squared error
  (ties keep the smaller scale), in float64: weights use it (decided offline, once).
  Decoding never depends on the rule: every rule's output is a valid spec-conforming tensor.
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

SCALE_RULES = ("ocp", "noclip", "search")
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


def element_max(fmt: Format | str) -> float:
    """Largest magnitude of an MX element value (ints as fixed point: 127 * 2^-6 for INT8)."""
    f = get_format(fmt)
    return f.max_value if f.kind == "float" else f.max_value * 2.0 ** (2 - f.bits)


def _check_rule(rule: str) -> None:
    if rule not in SCALE_RULES:
        raise ValueError(f"unknown scale rule {rule!r}; use one of {SCALE_RULES}")


def mx_encode_blocks(blocks: Tensor, exp: Tensor, fmt: Format | str) -> tuple[Tensor, Tensor]:
    """(element codes, float64 dequantized values) of float64 `blocks` [..., nb, block] with shared
    exponents `exp` [..., nb] (finite blocks only)."""
    f = get_format(fmt)
    e = exp.unsqueeze(-1).to(torch.float64)
    codes = encode_elements(torch.ldexp(blocks, -e), f)
    return codes, torch.ldexp(decode_elements(codes, f).to(torch.float64), e)


def mx_block_exponents(blocks: Tensor, spec: MXSpec, rule: str = "ocp") -> Tensor:
    """Shared exponent (int64 [..., nb]) of each finite float64 block under a scale rule."""
    _check_rule(rule)
    amax = blocks.abs().amax(-1)
    exp = mx_shared_exponent(amax, spec.emax)
    if rule == "ocp":
        return exp
    up = (exp + 1).clamp(max=E8M0_BIAS)
    if rule == "noclip":
        return torch.where(torch.ldexp(amax, -exp.to(torch.float64)) > element_max(spec.element), up, exp)
    errs = [((mx_encode_blocks(blocks, e, spec.element)[1] - blocks) ** 2).sum(-1) for e in (exp, up)]
    return torch.where(errs[1] < errs[0], up, exp)


def quantize_mx(x: Tensor, fmt: MXSpec | str, rule: str = "ocp") -> MXTensor:
    """Quantize `x` to an MX format in blocks along the last axis (see the module docstring)."""
    spec = get_mx_format(fmt)
    blocks = _blocks(x, spec.block)
    finite = torch.isfinite(blocks).all(-1)
    blocks = torch.where(finite.unsqueeze(-1), blocks, 0.0)
    exp = mx_block_exponents(blocks, spec, rule)
    codes = encode_elements(torch.ldexp(blocks, -exp.unsqueeze(-1).to(torch.float64)), spec.element_format)
    scales = torch.where(finite, encode_e8m0(exp), E8M0_NAN).to(torch.uint8)
    packed = pack_codes(codes.reshape(x.shape), spec.element_format.bits)
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

def _second_level_scale(amax: Tensor) -> Tensor:
    """fp32 amax / (6 * 448); 1.0 where amax is 0; never 0 for a nonzero amax (a subnormal amax would
    underflow the division and decode its whole tensor to zeros: the smallest fp32 subnormal instead)."""
    scale = (amax / (6.0 * 448.0)).clamp_min(torch.finfo(torch.float32).smallest_normal * 2.0**-23)
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def nvfp4_tensor_scale(x: Tensor) -> Tensor:
    """fp32 amax(|x|) / (6 * 448) (`_second_level_scale`); 1.0 when x is all zeros."""
    return _second_level_scale(x.detach().abs().amax().to(torch.float32))


def nvfp4_encode_blocks(blocks: Tensor, block_codes: Tensor, ts: Tensor) -> tuple[Tensor, Tensor]:
    """(E2M1 codes, float64 dequantized values) of float64 `blocks` [..., nb, 16] with E4M3 block
    scale codes [..., nb] and the tensor scale `ts` (broadcastable to [..., nb])."""
    s = (decode_float(block_codes, NVFP4_SCALE_FORMAT).double() * ts.double()).unsqueeze(-1)
    scaled = torch.where(s > 0, blocks / torch.where(s > 0, s, 1.0), 0.0)
    codes = encode_float(scaled, NVFP4_ELEMENT_FORMAT)
    return codes, decode_float(codes, NVFP4_ELEMENT_FORMAT).double() * s


def nvfp4_block_codes(blocks: Tensor, ts: Tensor, rule: str = "ocp") -> Tensor:
    """E4M3 block scale codes [..., nb] of float64 blocks under a scale rule (the next code up is the
    next larger E4M3 value; 0x7E = 448 is the largest)."""
    _check_rule(rule)
    amax = blocks.abs().amax(-1)
    codes = encode_float(amax / 6.0 / ts.double(), NVFP4_SCALE_FORMAT)
    if rule == "ocp":
        return codes
    up = torch.where(codes < 0x7E, codes + 1, codes).to(torch.uint8)
    if rule == "noclip":
        s = decode_float(codes, NVFP4_SCALE_FORMAT).double() * ts.double()
        return torch.where(amax > 6.0 * s, up, codes)
    errs = [((nvfp4_encode_blocks(blocks, c, ts)[1] - blocks) ** 2).sum(-1) for c in (codes, up)]
    return torch.where(errs[1] < errs[0], up, codes)


def quantize_nvfp4(x: Tensor, rule: str = "ocp", tensor_scale: Tensor | None = None) -> NVFP4Tensor:
    """Quantize `x` to NVFP4 in blocks of 16 along the last axis (see the module docstring).
    `tensor_scale` (fp32, broadcastable to x's shape without its last axis, e.g. [rows, 1] per row):
    the second-level scale to use instead of the whole tensor's."""
    blocks = _blocks(x, NVFP4_BLOCK)
    if not bool(torch.isfinite(blocks).all()):
        raise ValueError("NVFP4 cannot store NaN or inf: clamp or mask the tensor before quantizing")
    ts = nvfp4_tensor_scale(x) if tensor_scale is None else tensor_scale.to(torch.float32)
    block_codes = nvfp4_block_codes(blocks, ts, rule)
    codes, _ = nvfp4_encode_blocks(blocks, block_codes, ts)
    return NVFP4Tensor(pack_nibbles(codes.reshape(x.shape)), block_codes, ts, tuple(x.shape))


def nvfp4_row_scale(x: Tensor) -> Tensor:
    """Per-row (last axis) fp32 second-level scale amax_row / (6 * 448), 1.0 for zero rows, [..., 1]."""
    return _second_level_scale(x.detach().abs().amax(-1, keepdim=True).to(torch.float32))


def round_elements(v: Tensor, fmt: Format | str) -> Tensor:
    """float64 values of `v` (already scaled, finite) rounded to the element format's grid: the value
    `decode_elements(encode_elements(v))` gives, computed without codes (round half to even on the
    binade's quantum, saturating at the max; ints as MX fixed point)."""
    f = get_format(fmt)
    v = v.to(torch.float64)
    if f.kind == "int":
        step = 2.0 ** (f.bits - 2)
        return torch.round(v * step).clamp(-f.max_value, f.max_value) / step
    a = v.abs()
    _, e = torch.frexp(a)
    quantum = torch.ldexp(torch.ones_like(a), (torch.clamp(e - 1, min=1 - f.bias) - f.man_bits).to(torch.float64))
    r = torch.clamp(torch.round(a / quantum) * quantum, max=f.max_value)
    return torch.copysign(r, v)


def fake_quant_block(x: Tensor, fmt: str, rule: str = "noclip") -> Tensor:
    """float32 quantize-dequantize of `x` in blocks along its last axis: an MX format (`MX_FORMATS`)
    or "nvfp4" with a per-row second-level scale (what an activation quantized on the fly gets).
    Equal to dequantize(quantize(x)) (the tests check it), without building codes: the hot path of
    evaluating a graph with block-quantized activations."""
    if fmt == "nvfp4":
        blocks = _blocks(x, NVFP4_BLOCK)
        if not bool(torch.isfinite(blocks).all()):
            raise ValueError("NVFP4 cannot store NaN or inf: clamp or mask the tensor before quantizing")
        ts = nvfp4_row_scale(x)
        s = (decode_float(nvfp4_block_codes(blocks, ts, rule), NVFP4_SCALE_FORMAT).double() * ts.double()).unsqueeze(-1)
        out = torch.where(s > 0, round_elements(blocks / torch.where(s > 0, s, 1.0), NVFP4_ELEMENT_FORMAT) * s, 0.0)
        return out.reshape(x.shape).to(torch.float32)
    spec = get_mx_format(fmt)
    blocks = _blocks(x, spec.block)
    finite = torch.isfinite(blocks).all(-1, keepdim=True)
    blocks = torch.where(finite, blocks, 0.0)
    e = mx_block_exponents(blocks, spec, rule).unsqueeze(-1).to(torch.float64)
    out = torch.ldexp(round_elements(torch.ldexp(blocks, -e), spec.element_format), e)
    return torch.where(finite, out, torch.nan).reshape(x.shape).to(torch.float32)


def nvfp4_block_scales(q: NVFP4Tensor) -> Tensor:
    """float64 effective scale of each block: e4m3 block scale * tensor scale."""
    return decode_float(q.block_scales, NVFP4_SCALE_FORMAT).double() * q.tensor_scale.double()


def dequantize_nvfp4(q: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """E2M1 value * block scale * tensor scale (exact in float64, rounded once to `dtype`)."""
    values = decode_float(unpack_nibbles(q.codes), NVFP4_ELEMENT_FORMAT).double()
    blocks = values.reshape(*q.shape[:-1], q.shape[-1] // NVFP4_BLOCK, NVFP4_BLOCK)
    return (blocks * nvfp4_block_scales(q).unsqueeze(-1)).reshape(q.shape).to(dtype)
