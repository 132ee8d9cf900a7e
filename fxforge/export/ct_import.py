"""Import: a transformers model loaded from a compressed-tensors checkpoint, taken into fxforge with the
checkpoint's own quantization (its codes, scales and zero points), never rounded a second time.

The route (decided): before capture, `take_quantization(model)` reads every module that compressed-tensors
quantized (it carries a `quantization_scheme`) into an fxforge encoded `Weight` (`weight_from_codes`, the
quantize pass's own constructor) keyed by the HF weight name, and turns the module back into a plain Linear
(compressed-tensors' own `decompress_module(..., leave_decompressed=False)`) whose weight is that encoding's
exact decode, so capture sees `linear`s. The `adopt` pass (`fxforge.passes.adopt`, before sparsify and
quantize) then rewrites each of those `linear`s into the `qlinear` the quantize pass would have written,
with the imported weight; the quantize pass only rewrites `linear`s, so it never touches them, and the
layers the checkpoint left high precision stay open to the compile's own options.

Decisions:
- The model is changed in place (its quantized modules become plain Linears with the dequantized weights,
  as compressed-tensors' own decompression leaves them, minus its activation fake-quantization): capture
  has to see plain linears, and copying a whole LLM to avoid it would double its memory.
- Codes come from the compressed tensors when the module is still compressed (transformers' default), else
  from compressed-tensors' `quantize` of the decompressed weight with the checkpoint's scales; either way
  compressed-tensors' `dequantize` of the codes must give back the module's weight exactly, or import stops.
- Scales keep the checkpoint's values: converted to the dtype the fxforge scheme stores (f16 for int4
  groups, f32 per channel) only where that is exact, else kept in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fxforge.errors import ExportError
from fxforge.export.ct_format import codes_from_tensors, fxforge_scheme, require
from fxforge.ir.graph import Weight
from fxforge.ir.lowp_ops import decode_weight, get_scheme, weight_from_codes

PARTS = ("weight", "weight_packed", "weight_shape", "weight_scale", "weight_zero_point")


def quantized_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The modules compressed-tensors quantized (they carry a `quantization_scheme` with weights)."""
    return [(n, m) for n, m in model.named_modules()
            if getattr(getattr(m, "quantization_scheme", None), "weights", None) is not None]


def _scale(scale: Tensor, scheme: str, group: int) -> Tensor:
    target = torch.float16 if get_scheme(scheme).group and group else torch.float32
    s = scale.detach().to(torch.float32)
    return s.to(target) if torch.equal(s.to(target).to(torch.float32), s) else s


def _codes(module: torch.nn.Module, fmt: str) -> tuple[Tensor, Tensor | None]:
    from compressed_tensors.quantization import QuantizationStatus
    from compressed_tensors.quantization.lifecycle.forward import quantize

    state = {k: getattr(module, k).detach() for k in PARTS if isinstance(getattr(module, k, None), Tensor)}
    args = module.quantization_scheme.weights
    if args.symmetric:
        state.pop("weight_zero_point", None)  # all zeros where present; compressed-tensors never stores it
    if getattr(module, "quantization_status", None) == QuantizationStatus.COMPRESSED:
        return codes_from_tensors(fmt, state)
    zp = state.get("weight_zero_point")
    q = quantize(state["weight"].float(), state["weight_scale"].float(), zp, args, dtype=args.pytorch_dtype())
    if fmt == "float-quantized":
        return q.view(torch.uint8), None
    if fmt == "pack-quantized":
        zero = torch.zeros_like(state["weight_scale"], dtype=torch.int16) if zp is None or args.symmetric else zp
        return (q.to(torch.int16) + 8).to(torch.uint8), (zero.to(torch.int16) + 8).to(torch.uint8)
    return q.to(torch.int8), None


def read_module(name: str, module: torch.nn.Module) -> tuple[str, Weight]:
    """The fxforge encoded weight of one compressed-tensors quantized module."""
    sc = module.quantization_scheme
    scheme, group = fxforge_scheme(sc.weights, sc.input_activations)
    fmt = getattr(sc.format, "value", sc.format) or ""
    if fmt not in ("int-quantized", "float-quantized", "pack-quantized", "naive-quantized"):
        raise ExportError(f"{name}: compressed-tensors format {fmt!r} is not one fxforge imports")
    fmt = {"naive-quantized": "int-quantized" if scheme == "w8a8-int8" else "float-quantized"}.get(fmt, fmt)
    codes, zero = _codes(module, fmt)
    params = {"scale": _scale(module.weight_scale, scheme, group)}
    if zero is not None:
        params["zero"] = zero
    return scheme, weight_from_codes(codes, scheme, group, params)


def take_quantization(model: torch.nn.Module) -> dict[str, tuple[str, Weight]]:
    """{HF weight name: (fxforge scheme, encoded Weight)} of a model loaded from a compressed-tensors checkpoint (empty for
    any other model); the quantized modules become plain Linears holding the exact decode (see Decisions)."""
    modules = quantized_modules(model)
    if not modules:
        return {}
    require()
    hook = getattr(model, "ct_decompress_hook", None)
    if hook is not None:  # compressed-tensors decompresses on the first forward; fxforge takes over instead
        hook.remove()
        del model.ct_decompress_hook
    from compressed_tensors.offload import remove_dispatch

    remove_dispatch(model, onload_tensors=True)  # CT's offloading wrappers (set when it decompressed) do not trace
    out: dict[str, tuple[str, Weight]] = {}
    for name, module in modules:
        scheme, w = read_module(name, module)
        dtype = dtype_of(model)
        _to_plain_linear(module)
        dense = decode_weight(w)
        if dtype == torch.float32 and not torch.equal(module.weight.detach().float(), dense):
            raise ExportError(f"{name}: compressed-tensors' decompression of the checkpoint disagrees with fxforge's "
                              "decode of the same codes; the checkpoint is not one fxforge can take over exactly")
        module.weight = torch.nn.Parameter(dense.to(dtype), requires_grad=False)
        out[f"{name}.weight"] = (scheme, w)
    return out


def _to_plain_linear(module: torch.nn.Module) -> None:
    """compressed-tensors' own way back to a plain module: decompress it if it is still compressed, drop
    its quantization parameters and scheme, restore its forward. Its weight is then CT's dequantization."""
    from compressed_tensors.compressors.base import decompress_module
    from compressed_tensors.quantization import QuantizationMetadata, QuantizationStatus

    if getattr(module, "quantization_status", None) == QuantizationStatus.COMPRESSED:
        decompress_module(module, leave_decompressed=False)
        return
    QuantizationMetadata.clear_quantization(module)
    if hasattr(module, "quantization_status"):
        delattr(module, "quantization_status")


def dtype_of(model: torch.nn.Module) -> torch.dtype:
    """The model's floating-point dtype (HF models say it; else float32)."""
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32
