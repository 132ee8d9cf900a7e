"""The compressed-tensors format (vLLM's, written by llmcompressor): fxforge schemes <-> its
QuantizationArgs, and a layer's codes <-> the tensors a checkpoint stores. Both directions live here, so
export and import cannot disagree. The `compressed_tensors` package (`pip install fxforge[vllm]`) is
imported only when a function here runs.

    fxforge scheme  format           weights                                   input activations
    w8a8-int8       int-quantized    int8, symmetric, per channel              int8, dynamic per token
    w8a8-fp8        float-quantized  fp8 e4m3, symmetric, per channel          fp8 e4m3, dynamic per token
    w4a16-int4      pack-quantized   int4, ASYMMETRIC, group (or per channel)  none

Tensors per layer (`<layer>.` prefix): `weight` (int8 / float8_e4m3fn codes) or `weight_packed` (int32,
compressed-tensors' `pack_to_int32`) + `weight_shape`; `weight_scale` [out, G]; `weight_zero_point`
(int4, packed along dim 0 as compressed-tensors does).

Decisions:
- fxforge's int4 is asymmetric with uint4 codes q in 0..15 and zero points z in 0..15; compressed-tensors
  stores signed codes in -8..7 and dequantizes (q' - z') * s: q' = q - 8, z' = z - 8 is the same weight.
- Scales are written in float32, whatever fxforge stored (f16 for int4 groups, f32 per channel): the
  upcast is exact, and compressed-tensors dequantizes in the scale's dtype, so an f16 scale would round
  each (q - z) * s product to f16 on load (a second rounding that fxforge never does). A runtime that
  keeps scales in the model's dtype (vLLM in bf16) rounds them there, as it does for every checkpoint.
- 2:4 sparsity is stored dense (exact zeros in the pruned places): compressed-tensors 0.20 keeps
  `sparse-24-bitmask` only as a legacy config name, with no compressor, `ModelCompressor.update_config`
  writes `sparsity_config: {}`, transformers' loader has dropped sparse configs, and vLLM removed its
  2:4 kernels. So sparsity alone exports as a plain checkpoint, and with a scheme as that scheme's format
  whose codes hold the zeros; nothing is claimed that the tensors do not hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from fxforge.errors import ExportError
from fxforge.export.layers import Layer

FORMAT_NAME = "compressed-tensors"
INSTALL_HINT = "pip install 'fxforge[vllm]' (or pip install compressed-tensors==0.20.0)"

# fxforge scheme -> (compressed-tensors format, weight args, input-activation args or None)
SCHEMES: dict[str, tuple[str, dict[str, Any], dict[str, Any] | None]] = {
    "w8a8-int8": ("int-quantized", {"num_bits": 8, "type": "int", "symmetric": True},
                  {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}),
    "w8a8-fp8": ("float-quantized", {"num_bits": 8, "type": "float", "symmetric": True},
                 {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token", "dynamic": True}),
    "w4a16-int4": ("pack-quantized", {"num_bits": 4, "type": "int", "symmetric": False}, None),
}
INT4_OFFSET = 8  # fxforge uint4 (0..15) -> compressed-tensors int4 (-8..7)


def require() -> Any:
    """The compressed_tensors module, or an ExportError that says how to install it."""
    try:
        import compressed_tensors
    except ImportError:
        raise ExportError(f"the compressed-tensors format needs the compressed-tensors package: {INSTALL_HINT}") from None
    return compressed_tensors


def scheme_args(scheme: str, group: int) -> tuple[str, Any, Any]:
    """(format, weights QuantizationArgs, input-activation QuantizationArgs or None) of a layer."""
    require()
    from compressed_tensors.quantization import QuantizationArgs

    fmt, w, a = SCHEMES[scheme]
    strategy = {"strategy": "group", "group_size": group} if group else {"strategy": "channel"}
    return fmt, QuantizationArgs(**w, **strategy), QuantizationArgs(**a) if a else None


def quantization_config(layers: Iterable[Layer], plain: Iterable[str]) -> Any:
    """compressed-tensors' own QuantizationConfig for the quantized layers (one config group per
    (scheme, group)); `plain`: the linears that stay high precision (its `ignore` list)."""
    require()
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    groups: dict[tuple[str, int], list[str]] = {}
    for layer in layers:
        groups.setdefault((layer.scheme, layer.group), []).append(layer.name)
    if not groups:
        return None
    config_groups, formats = {}, set()
    for i, ((scheme, group), names) in enumerate(sorted(groups.items())):
        fmt, wargs, aargs = scheme_args(scheme, group)
        targets = ["Linear"] if len(groups) == 1 else names
        config_groups[f"group_{i}"] = QuantizationScheme(targets=targets, weights=wargs, input_activations=aargs, format=fmt)
        formats.add(fmt)
    fmt = formats.pop() if len(formats) == 1 else "mixed-precision"
    return QuantizationConfig(config_groups=config_groups, format=fmt, quantization_status="compressed",
                              ignore=sorted(plain))


def layer_tensors(layer: Layer) -> dict[str, Tensor]:
    """The checkpoint tensors of one quantized layer (local names: `weight`, `weight_scale`, ...)."""
    require()
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    fmt = SCHEMES[layer.scheme][0]
    out = {"weight_scale": layer.scale.to(torch.float32).contiguous()}
    if fmt == "int-quantized":
        out["weight"] = layer.codes.to(torch.int8).contiguous()
    elif fmt == "float-quantized":
        out["weight"] = layer.codes.contiguous().view(torch.float8_e4m3fn)
    else:
        signed = (layer.codes.to(torch.int16) - INT4_OFFSET).to(torch.int8)
        out["weight_packed"] = pack_to_int32(signed, 4).contiguous()
        out["weight_shape"] = torch.tensor(list(layer.codes.shape), dtype=torch.int64)
        zp = (layer.zero.to(torch.int16) - INT4_OFFSET).to(torch.int8)
        out["weight_zero_point"] = pack_to_int32(zp, 4, packed_dim=0).contiguous()
    return out


def codes_from_tensors(fmt: str, t: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """Inverse of `layer_tensors` for compressed tensors: (unpacked codes [out, in], zero [out, G] or None)
    in fxforge's conventions."""
    require()
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    if fmt == "int-quantized":
        return t["weight"].to(torch.int8), None
    if fmt == "float-quantized":
        return t["weight"].contiguous().view(torch.uint8), None
    shape = torch.Size(int(d) for d in t["weight_shape"])
    codes = unpack_from_int32(t["weight_packed"], 4, shape).to(torch.int16) + INT4_OFFSET
    zshape = torch.Size((shape[0], t["weight_scale"].shape[-1]))
    if "weight_zero_point" not in t:  # symmetric: signed zero point 0
        return codes.to(torch.uint8), torch.full(zshape, INT4_OFFSET, dtype=torch.uint8)
    zero = unpack_from_int32(t["weight_zero_point"], 4, zshape, packed_dim=0).to(torch.int16) + INT4_OFFSET
    return codes.to(torch.uint8), zero.to(torch.uint8)


def fxforge_scheme(weights: Any, acts: Any) -> tuple[str, int]:
    """(fxforge scheme, dense group) of compressed-tensors QuantizationArgs; ExportError when none fits.
    Symmetric int4 (llmcompressor's usual W4A16) is fxforge's asymmetric int4 with every zero point at 8."""
    def key(args: Any) -> tuple | None:
        if args is None:
            return None
        strategy = getattr(args.strategy, "value", args.strategy)
        return (args.num_bits, getattr(args.type, "value", args.type), bool(args.symmetric), strategy,
                getattr(args, "dynamic", False) is True)

    wk, ak = key(weights), key(acts)
    for name, (_, w, a) in SCHEMES.items():
        symmetric_ok = wk[2] == w["symmetric"] or (name == "w4a16-int4" and wk[2])
        a_key = None if a is None else (a["num_bits"], a["type"], a["symmetric"], a["strategy"], True)
        if wk[:2] == (w["num_bits"], w["type"]) and symmetric_ok and wk[3] in ("channel", "group") and ak == a_key:
            return name, (weights.group_size or 0) if wk[3] == "group" else 0
    raise ExportError(f"compressed-tensors weights {weights} with input activations {acts} have no fxforge scheme "
                      f"(fxforge runs: {', '.join(SCHEMES)})")
