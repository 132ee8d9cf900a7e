"""The block-scaled weight codec: what a `#blockfp` linear weight of an MX / NVFP4 scheme means.

    weight = encode_block_weight(w, "mxfp4")          # Weight(placeholder, BlockFP("mxfp4", 32, axis=1), payload)
    w_hat = decode_block_weight(weight)               # dense float32 [out, in]; WEIGHT_DECODERS["blockfp"]

The element formats, scale rules and packing are `fxforge.ir.block_formats`'s; this module only lays a
2-D [out, in] weight out as blocks along the input (reduction) dim, so a GEMM's K loop reads one scale
per output channel per block (the layout sm_100's native MX MMA reads too: codes [N, K] row-major,
one scale per 32 K-elements).

Payload parts:
    "codes"         uint8 [out, in * bits / 8]: element codes packed along K (4-bit: two per byte, low
                    nibble first; 6-bit: four per three bytes; 8-bit: one per byte, MXINT8 as int8 bits)
    "scales"        uint8 [out, in / block]: E8M0 exponents (MX) or E4M3 codes (NVFP4)
    "tensor_scale"  float32 [] (NVFP4 only): the second-level scale amax(|w|) / (6 * 448)

Decisions:
- Weights use the scale rule "search" (each block keeps the better of two scales by squared error;
  `block_formats`): offline, so its cost does not matter, and it never clips worse than the OCP rule.
- The input dim must be a multiple of the block: ValueError naming both sizes (the quantize pass turns
  it into a ConfigError naming the layer). Padding was not chosen: a padded K would need a second,
  padded copy of every activation row in the kernels.
- `Weight.data` is a zero-stride float32 placeholder of the logical shape (as `lowp_ops` does), so the
  `const` type is f32[out, in] #blockfp<...>.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fxforge.ir import block_formats as bf
from fxforge.ir.evaluate import WEIGHT_DECODERS
from fxforge.ir.graph import Weight
from fxforge.ir.schemes import get_scheme
from fxforge.ir.types import BlockFP

WEIGHT_RULE = "search"


def element_bits(fmt: str) -> int:
    return 4 if fmt == "nvfp4" else bf.get_mx_format(fmt).element_format.bits


def check_block_fit(in_features: int, block: int) -> None:
    """ValueError unless the input dim is a multiple of the block (names both sizes and the fix)."""
    if in_features % block:
        raise ValueError(f"input dim {in_features} is not a multiple of the block size {block}: block formats "
                         f"need in_features % {block} == 0 (keep this layer high precision, or pad it)")


def _placeholder(out_f: int, in_f: int) -> Tensor:
    return torch.zeros((), dtype=torch.float32).expand(out_f, in_f)


def block_weight_from_codes(codes: Tensor, scales: Tensor, scheme: str, tensor_scale: Tensor | None = None) -> Weight:
    """The encoded `Weight` of unpacked element codes [out, in] and their block scale codes [out, nb]."""
    sc = get_scheme(scheme)
    out_f, in_f = codes.shape
    payload = {"codes": bf.pack_codes(codes.to(torch.uint8), element_bits(sc.weight_format)).contiguous(),
               "scales": scales.to(torch.uint8).contiguous()}
    if sc.weight_format == "nvfp4":
        payload["tensor_scale"] = tensor_scale.to(torch.float32).reshape(())
    return Weight(_placeholder(out_f, in_f), BlockFP(sc.weight_format, sc.block, 1), payload)


def _check_finite(w: Tensor) -> None:
    bad = ~torch.isfinite(w)
    if bool(bad.any()):
        first = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(f"weight has {int(torch.isnan(w).sum())} NaN and {int(torch.isinf(w).sum())} inf values "
                         f"(first at {first}); a quantized weight cannot represent them")


def encode_block_weight(w: Tensor, scheme: str, rule: str = WEIGHT_RULE) -> Weight:
    """Encode a 2-D [out, in] weight with a block scheme (round to nearest, scale rule `rule`)."""
    sc = get_scheme(scheme)
    if not sc.block:
        raise ValueError(f"{scheme!r} is not a block scheme")
    if w.dim() != 2:
        raise ValueError(f"encode_weight takes a 2-D [out, in] weight, got shape {list(w.shape)}")
    _check_finite(w)
    check_block_fit(w.shape[1], sc.block)
    wf = w.detach().to(torch.float32)
    if sc.weight_format == "nvfp4":
        q = bf.quantize_nvfp4(wf, rule)
        return Weight(_placeholder(*w.shape), BlockFP("nvfp4", sc.block, 1),
                      {"codes": q.codes, "scales": q.block_scales, "tensor_scale": q.tensor_scale.reshape(())})
    q = bf.quantize_mx(wf, sc.weight_format, rule)
    return Weight(_placeholder(*w.shape), BlockFP(sc.weight_format, sc.block, 1), {"codes": q.codes, "scales": q.scales})


def decode_block_weight(weight: Weight) -> Tensor:
    """The dense float32 [out, in] tensor a `#blockfp` weight stands for."""
    enc, p = weight.encoding, weight.payload
    if not isinstance(enc, BlockFP) or enc.perm is not None:
        raise ValueError(f"decode_block_weight takes an unpermuted #blockfp weight, got encoding {enc!r}")
    shape = tuple(weight.data.shape)
    if enc.format == "nvfp4":
        return bf.dequantize_nvfp4(bf.NVFP4Tensor(p["codes"], p["scales"], p["tensor_scale"], shape))
    return bf.dequantize_mx(bf.MXTensor(p["codes"], p["scales"], shape, enc.format))


WEIGHT_DECODERS["blockfp"] = decode_block_weight


class BlockQuantizer:
    """GPTQ's column quantizer for a block scheme (`fxforge.passes.obs_solver.ColumnQuantizer`): each
    block's scales are chosen (rule "search") on the block's weights as updated when the solver
    reaches it; NVFP4's tensor scale once, from the original weight."""

    def __init__(self, w: Tensor, scheme: str) -> None:
        self.sc = get_scheme(scheme)
        self.scheme, self.group = scheme, self.sc.block
        check_block_fit(w.shape[1], self.group)
        self.nv = self.sc.weight_format == "nvfp4"
        self.ts = bf.nvfp4_tensor_scale(w.float()) if self.nv else None
        self.element = None if self.nv else bf.get_mx_format(self.sc.weight_format).element
        self.scales: list[Tensor] = []
        self.codes: list[Tensor | None] = [None] * w.shape[1]

    def begin(self, index: int, w_cols: Tensor) -> None:
        blocks = w_cols.to(torch.float64).unsqueeze(1)  # [out, 1, block]
        if self.nv:
            self.scales.append(bf.nvfp4_block_codes(blocks, self.ts, WEIGHT_RULE)[:, 0])
        else:
            spec = bf.get_mx_format(self.sc.weight_format)
            self.scales.append(bf.mx_block_exponents(blocks, spec, WEIGHT_RULE)[:, 0])

    def __call__(self, col: Tensor, j: int) -> Tensor:
        blocks = col.to(torch.float64).reshape(-1, 1, 1)
        if self.nv:
            codes, vals = bf.nvfp4_encode_blocks(blocks, self.scales[-1].reshape(-1, 1), self.ts)
        else:
            codes, vals = bf.mx_encode_blocks(blocks, self.scales[-1].reshape(-1, 1), self.element)
        self.codes[j] = codes.reshape(-1)
        return vals.reshape(-1).to(torch.float32)

    def to_weight(self, perm: Tensor | None = None) -> Weight:
        if perm is not None:
            raise ValueError("block schemes keep the column order (a block's scale spans consecutive columns)")
        codes = torch.stack(self.codes, dim=1)  # type: ignore[arg-type]
        scales = torch.stack(self.scales, dim=1)
        if not self.nv:
            scales = bf.encode_e8m0(scales)
        return block_weight_from_codes(codes, scales, self.scheme, self.ts)
