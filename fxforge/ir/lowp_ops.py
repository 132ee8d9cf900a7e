"""Low-precision ops (`quantize`, `dequantize`, `qlinear`) and the quantized-weight codec.

This module owns what a `#quantized<...>` weight *means*: how a 2-D linear weight is encoded into a
payload (`encode_weight`) and decoded back (`decode_weight`, registered as
`WEIGHT_DECODERS["quantized"]` so a plain `const` of an encoded weight evaluates to its dequantized
tensor), and the torch reference semantics of the three low-precision ops. The references
DEQUANTIZE in torch (float32 math): they are the ground truth a Triton kernel is checked against.

Ops:
    quantize(x) {format, axis=-1, group=0} -> (q, scale)
        dynamic symmetric quantization: scale = amax / max(format) per group of `group` elements
        along `axis` (group 0: the whole axis), q = encode(x / scale). q has x's shape and dtype
        `format` (i8 -> int8, f8e4m3/f8e5m2 -> torch float8, f4e2m1 / i4 -> uint8 codes, one per
        element, unpacked); scale is f32 with `axis` reduced to the number of groups.
    dequantize(q, scale) {format, axis=-1, group=0, dtype=f32} -> decode(q) * scale
    qlinear(x, w, [bias], [lorc_u, lorc_v]) {scheme, act_format=none, group=0, lorc_rank=0}
        w is a `const` of a `#quantized` weight (evaluates to its dequantized tensor), or of an `#nm`
        weight whose kept values are quantized with the op's scheme (`fxforge.ir.nm`; decodes dense). Activations are
        quantize-dequantized per token (per row of the last dim) when `act_format` is set: "i8"
        symmetric (s = amax / 127), "f8e4m3" (s = amax / 448, saturating RNE encoder of formats.py).
        y = F.linear(xq, w) [+ (xq @ V) @ U^T when lorc_rank > 0] [+ bias], in f32, cast to x.dtype.
        Operand count disambiguates: 2 + (1 if bias) + (2 if lorc_rank > 0).

Schemes (`SCHEMES`; weight format, activation format, default group, zero point):
    w8a8-int8   i8 weights, per-output-channel symmetric (group 0), int8 per-token activations
    w8a8-fp8    f8e4m3 weights, per-output-channel scale amax/448, f8e4m3 per-token activations
    w4a16-int4  i4 weights in groups of 128 along the input dim, ASYMMETRIC (uint4 codes + a 4-bit
                zero point per group, stored one per byte), activations untouched. Decided asymmetric:
                at 4 bits the 16th level and an offset for skewed groups cut the error measurably
                (GPTQ/AWQ's choice); a W4A16 kernel dequantizes to fp16 before the MMA anyway, so the
                zero point costs one subtract per element and nothing in the GEMM.
    w4a8-fp     ZeroQuant-FP: f4e2m1 weights in groups of 32 (decided: FP4 has 15 levels, so small
                groups matter; 32 is OCP MX's block, so the same kernels' tiling applies), f8e4m3
                per-token activations. Power-of-two scale constraint: per row s_max = max_i s_i (real,
                s_i = amax_i / 6) and each group's scale is s_max * 2^-k_i, k_i an integer in [0, 8].
                k_i = floor(log2(s_max / s_i)) by default, so the group scale is >= s_i and nothing
                saturates. DESIGN's s_max / 2^ceil(log2(s_max / s_i)) taken literally (with scale as the
                multiplier of the codes) makes the scale <= s_i, which saturates each group's largest
                values: on a Gaussian 256x512 weight, relative weight error 0.19 (ceil) vs 0.113
                (floor) vs 0.102 unconstrained. Read on the inverse scale (codes = x * S) the ceil
                rounds the step size up, as our floor does; `encode_weight(pow2_round="ceil")` keeps the literal variant.
                The payload stores s_max (f32, [out, 1]) and the shifts k_i (uint8,
                [out, n_groups]); FP4 value * 2^-k_i is then exactly an E4M3 value (the smallest FP4
                magnitude 0.5 * 2^-8 = 2^-9 is E4M3's smallest subnormal: hence the clamp at 8), so a
                kernel casts FP4 -> FP8 by an exponent shift and multiplies by s_max after the GEMM.

Block schemes (mxfp8 | mxfp6 | mxfp4 | mxint8 | nvfp4, `Scheme.block` > 0): the weight is a `#blockfp`
const (`fxforge.ir.block_weights`; `encode_weight` / `decode_weight` dispatch to it) and act_format is
the block format itself: activations are quantize-dequantized per block of the last dim
(`schemes.fake_quant_act`). qlinear's reference is otherwise unchanged.

Encoding fields: `Quantized(format, axis=1, group, scale_dtype, zero_point)`; `axis` is the input
(reduction) dim the groups run along; group 0 = one scale per row (per output channel).
Groups are exactly the requested size, never changed: n_groups = ceil(in / group), and when the group
does not divide `in` the last group is partial (decided over refusing or shrinking the group: a
smaller group would silently cost bytes, a refusal would make e.g. in=100 unquantizable). Encoding
pads the weight with zeros to n_groups * group (zeros never change a group's amax, nor its min/max
range, which always includes 0) and drops the padding's codes; decoding and the kernels index the
group of element k as k // group and mask k >= in, i.e. the reference semantics of a zero-padded K.
Non-finite weights (NaN/inf) are refused (ValueError; the quantize pass names the layer): a scale
computed from them would turn a whole group into NaN or 0 with no trace of where it came from.
Payload parts: "codes" (i8: int8 [out, in]; f8e4m3: uint8 codes [out, in]; i4 / f4e2m1: two codes per
byte [out, in/2], see formats.pack_nibbles), "scale" ([out, n_groups], scale_dtype; w4a8-fp: s_max
[out, 1] f32), "zero" (uint8 [out, n_groups], asymmetric only), "shift" (uint8 [out, n_groups], w4a8-fp).
Scales are f32 for per-channel schemes (negligible bytes) and f16 for int4 groups (as GPTQ stores
them); quantization uses the f16-rounded scale, so decode matches encode exactly.
A 4-bit weight may carry a decode layout (`Quantized.layout`, codec in `weight_layouts`): its codes are
pre-shuffled for the decode kernels and `decode_weight` reads them back exactly.
`Weight.data` of an encoded weight is a zero-stride placeholder with the logical shape (so the
`const` type is right) that costs 4 bytes; the original leaves the table.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
import torch.nn.functional as F
from torch import Tensor

from fxforge.ir import block_weights, formats, weight_layouts
from fxforge.ir.dtypes import DType
from fxforge.ir.errors import ShapeError
from fxforge.ir.evaluate import WEIGHT_DECODERS
from fxforge.ir.graph import Weight
from fxforge.ir.ops import REQUIRED, OpDef, norm_axis, register
from fxforge.ir.schemes import (  # noqa: F401  (re-exported: callers see one low-precision module)
    ACT_FORMATS,
    MAX_SHIFT,
    SCHEMES,
    Scheme,
    amax_scale,
    decode_elements,
    encode_elements,
    fake_quant_act,
    get_scheme,
    is_float,
)
from fxforge.ir.types import NM, BlockFP, Quantized, TensorType, dims_equal, normalize_dim

# -- the weight codec -------------------------------------------------------------------------------


def group_count(in_features: int, group: int) -> int:
    """Number of groups along an input dim of `in_features`: ceil(in / group) (the last one partial
    when `group` does not divide it), 1 for group 0 (per channel)."""
    return -(-in_features // group) if group > 0 else 1


def _check_group(group: Any) -> int:
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise ValueError(f"group must be an int >= 0 (0: one scale per output channel), got {group!r}")
    return group


def _check_finite(w: Tensor) -> None:
    bad = ~torch.isfinite(w)
    if bool(bad.any()):
        first = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(f"weight has {int(torch.isnan(w).sum())} NaN and {int(torch.isinf(w).sum())} inf values "
                         f"(first at {first}); a quantized weight cannot represent them")


def weight_params(wg: Tensor, scheme: str, grouped: bool, pow2_round: str = "floor",
                  s_max: Tensor | None = None) -> dict[str, Tensor]:
    """Scale parameters of grouped weights `wg` [out, G, g] (float32) under a scheme, as stored:
    "scale" [out, G] (scale dtype: f16 for grouped non-pow2 schemes, else f32), plus "zero" [out, G]
    (asymmetric) or, for pow2 schemes, "scale" = s_max [out, 1] and "shift" [out, G]. `s_max` given
    (pow2 only): keep that row scale and choose only the shifts (GPTQ decides s_max once per row and
    each group's shift as the solver reaches the group)."""
    sc, fmt = get_scheme(scheme), formats.get_format(get_scheme(scheme).weight_format)
    if sc.pow2:
        s_i = wg.abs().amax(-1) / fmt.max_value  # [out, G]
        if s_max is None:
            s_max = s_i.amax(-1, keepdim=True)
            s_max = torch.where(s_max > 0, s_max, torch.ones_like(s_max))
        ratio = s_max / torch.where(s_i > 0, s_i, s_max * 2.0**-MAX_SHIFT)
        mant, e = torch.frexp(ratio)  # ratio = mant * 2^e, mant in [0.5, 1): ceil(log2) exactly
        ceil_k = torch.where(mant == 0.5, e - 1, e)
        k = (ceil_k if pow2_round == "ceil" else e - 1).to(torch.float32).clamp(0, MAX_SHIFT)
        return {"scale": s_max.to(torch.float32).contiguous(), "shift": k.to(torch.uint8)}
    scale_dtype = DType.f16 if grouped else DType.f32
    if sc.zero_point:
        qmin, qmax = formats.int_range(fmt.bits, symmetric=False)
        lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
        scale = _nonzero_scale((hi - lo) / (qmax - qmin)).to(scale_dtype.torch)
        zero = torch.round(-lo / scale.float()).clamp(qmin, qmax)  # from the stored scale: decode == encode
        return {"scale": scale, "zero": zero.to(torch.uint8)}
    return {"scale": amax_scale(wg.abs().amax(-1), fmt.max_value).to(scale_dtype.torch)}


def _nonzero_scale(s: Tensor) -> Tensor:
    return torch.where(s > 0, s, torch.ones_like(s))


def param_multiplier(params: dict[str, Tensor]) -> Tensor:
    """The float32 scale [out, G] each group's decoded codes are multiplied by."""
    if "shift" in params:
        k = params["shift"].to(torch.float32)
        return torch.ldexp(params["scale"].to(torch.float32).expand_as(k), -k)  # exact power-of-two multiples
    return params["scale"].to(torch.float32)


def quantize_groups(wg: Tensor, scheme: str, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(codes [out, G, g] unpacked, one per element; dequantized float32 values) of `wg` under fixed
    `params` (from `weight_params`, possibly sliced to the groups `wg` covers)."""
    sc = get_scheme(scheme)
    fmt = formats.get_format(sc.weight_format)
    scale = param_multiplier(params).unsqueeze(-1)
    if sc.zero_point:
        qmin, qmax = formats.int_range(fmt.bits, symmetric=False)
        zero = params["zero"].to(torch.float32).unsqueeze(-1)
        q = (torch.round(wg.to(torch.float32) / scale) + zero).clamp(qmin, qmax)
        return q.to(torch.uint8), (q - zero) * scale
    codes = encode_elements(wg.to(torch.float32) / scale, fmt.name)
    return codes, decode_elements(codes, fmt.name) * scale


def weight_from_codes(codes: Tensor, scheme: str, group: int, params: dict[str, Tensor]) -> Weight:
    """The encoded `Weight` of unpacked codes [out, in] (from `quantize_groups`) with their params."""
    sc = get_scheme(scheme)
    fmt = formats.get_format(sc.weight_format)
    out_f, in_f = codes.shape
    if fmt.kind == "float" and codes.dtype != torch.uint8:
        codes = codes.view(torch.uint8)
    payload = {"codes": formats.pack_nibbles(codes) if fmt.bits == 4 else codes.contiguous(),
               "scale": params["scale"].contiguous()}
    payload.update({k: params[k].contiguous() for k in ("zero", "shift") if k in params})
    scale_dtype = DType.from_torch(params["scale"].dtype)
    enc = Quantized(fmt.name, axis=1, group=group, scale_dtype=scale_dtype, zero_point=sc.zero_point)
    placeholder = torch.zeros((), dtype=torch.float32).expand(out_f, in_f)
    return Weight(placeholder, enc, payload)


def encode_weight(w: Tensor, scheme: str, group: int | None = None, pow2_round: str = "floor") -> Weight:
    """Encode a 2-D [out, in] weight with a scheme (round to nearest); returns the `Weight` (encoding +
    payload). `pow2_round` (w4a8-fp only): "floor" (default: k_i = floor(log2(s_max / s_i)), the group
    scale is >= s_i, nothing saturates) or "ceil" (DESIGN's formula read literally: scale <= s_i, saturates)."""
    if pow2_round not in ("floor", "ceil"):
        raise ValueError(f"pow2_round must be 'floor' or 'ceil', got {pow2_round!r}")
    sc = get_scheme(scheme)
    if sc.block:  # MX / NVFP4: the block is the format's, a different group cannot hold
        if group not in (None, 0, sc.block):
            raise ValueError(f"{scheme} has a fixed block of {sc.block} along the input dim; group {group} cannot hold")
        return block_weights.encode_block_weight(w, scheme)
    if w.dim() != 2:
        raise ValueError(f"encode_weight takes a 2-D [out, in] weight, got shape {list(w.shape)}")
    out_f, in_f = w.shape
    g = _check_group(sc.group if group is None else group)
    fmt = formats.get_format(sc.weight_format)
    if fmt.bits == 4 and in_f % 2:
        raise ValueError(f"4-bit formats pack two codes per byte: input dim {in_f} must be even")
    _check_finite(w)
    gsize = g or in_f
    in_pad = group_count(in_f, g) * gsize
    wf = F.pad(w.detach().to(torch.float32), (0, in_pad - in_f))  # zeros fill the last group: see Decisions
    wg = wf.reshape(out_f, in_pad // gsize, gsize)
    params = weight_params(wg, scheme, bool(g), pow2_round)
    codes, _ = quantize_groups(wg, scheme, params)
    return weight_from_codes(codes.reshape(out_f, in_pad)[:, :in_f], scheme, g, params)


def decode_weight(weight: Weight) -> Tensor:
    """The dense float32 [out, in] tensor an encoded weight stands for."""
    enc, p = weight.encoding, weight.payload
    if isinstance(enc, BlockFP):
        return block_weights.decode_block_weight(weight)
    if not isinstance(enc, Quantized):
        raise ValueError(f"decode_weight takes a #quantized weight, got encoding {enc!r}")
    fmt = formats.get_format(enc.format)
    codes = weight_layouts.codes_of(weight) if fmt.bits == 4 else p["codes"]  # any `Quantized.layout`
    out_f, in_f = codes.shape
    gsize = enc.group or in_f
    if "shift" in p:
        k = p["shift"].to(torch.float32)
        scale = torch.ldexp(p["scale"].to(torch.float32).expand_as(k), -k)
        vals = decode_elements(codes, fmt.name)
    elif enc.zero_point:
        scale = p["scale"].to(torch.float32)
        vals = codes.to(torch.float32) - p["zero"].to(torch.float32).repeat_interleave(gsize, dim=1)[:, :in_f]
    else:
        scale = p["scale"].to(torch.float32)
        vals = decode_elements(codes, fmt.name)
    dense = vals * scale.repeat_interleave(gsize, dim=1)[:, :in_f]  # the last group may be partial
    return dense.reshape(weight.data.shape)  # stacked experts [E, N, K]: codes by rows [E * N, K]


WEIGHT_DECODERS["quantized"] = decode_weight


# -- quantize / dequantize --------------------------------------------------------------------------


def _group_count(d, group: int):
    if group <= 0:
        return 1
    if isinstance(d, int) and d % group:
        raise ShapeError(f"axis size {d} is not a multiple of group {group}")
    return normalize_dim(sympy.sympify(d) / group)


def _check_format(fmt: str) -> None:
    if fmt not in formats.FORMATS or fmt not in DType.__members__:
        raise ShapeError(f"format {fmt!r} has no IR dtype; use one of i8, i4, f8e4m3, f8e5m2, f4e2m1")


def _quantize_infer(types, attrs):
    (x,) = types
    _check_format(attrs["format"])
    ax = norm_axis(attrs["axis"], x.rank)
    scale_shape = tuple(_group_count(d, attrs["group"]) if i == ax else d for i, d in enumerate(x.shape))
    return [TensorType(x.shape, DType[attrs["format"]]), TensorType(scale_shape, DType.f32)]


def _grouped(x: Tensor, axis: int, group: int) -> Tensor:
    xt = x.movedim(axis, -1)
    g = group or xt.shape[-1]
    return xt.reshape(*xt.shape[:-1], xt.shape[-1] // g, g)


def _quantize_ref(x, *, format, axis, group):
    f = formats.get_format(format)
    axis = axis % x.dim()
    xg = _grouped(x.to(torch.float32), axis, group)
    s = amax_scale(xg.abs().amax(-1, keepdim=True), f.max_value)
    q = encode_elements(xg / s, format)
    q = q.reshape(*q.shape[:-2], -1).movedim(-1, axis)
    return q, s.squeeze(-1).movedim(-1, axis).contiguous()


def _dequantize_infer(types, attrs):
    q, s = types
    _check_format(attrs["format"])
    if q.dtype != DType[attrs["format"]]:
        raise ShapeError(f"dequantize: codes are {q.dtype}, format says {attrs['format']}")
    return [TensorType(q.shape, attrs["dtype"])]


def _dequantize_ref(q, scale, *, format, axis, group, dtype):
    axis = axis % q.dim()
    vals = _grouped(decode_elements(q, format), axis, group)
    out = vals * scale.to(torch.float32).movedim(axis, -1).unsqueeze(-1)
    return out.reshape(*out.shape[:-2], -1).movedim(-1, axis).to(dtype.torch)


register(OpDef("quantize", (1, 1), {"format": REQUIRED, "axis": -1, "group": 0}, _quantize_infer, _quantize_ref,
               "lowp", "dynamic symmetric quantization: (codes, scale = amax / max(format) per group)",
               num_results=2))
register(OpDef("dequantize", (2, 2), {"format": REQUIRED, "axis": -1, "group": 0, "dtype": DType.f32},
               _dequantize_infer, _dequantize_ref, "lowp", "dequantize(codes, scale) = decode(codes) * scale"))

# -- qlinear ----------------------------------------------------------------------------------------


def _qlinear_parts(operands: list[Any], lorc_rank: int) -> tuple[Any, Any, Any, Any, Any]:
    x, w, *rest = operands
    lorc = 2 if lorc_rank > 0 else 0
    if len(rest) not in (lorc, lorc + 1):
        raise ShapeError(f"qlinear: {len(operands)} operands do not fit lorc_rank={lorc_rank} "
                         "(x, w, [bias], [lorc_u, lorc_v])")
    bias = rest[0] if len(rest) == lorc + 1 else None
    u, v = (rest[-2], rest[-1]) if lorc else (None, None)
    return x, w, bias, u, v


def _qlinear_infer(types, attrs):
    get_scheme(attrs["scheme"])
    if attrs["act_format"] not in ACT_FORMATS:
        raise ShapeError(f"qlinear: act_format {attrs['act_format']!r} is not one of {ACT_FORMATS}")
    x, w, bias, u, v = _qlinear_parts(types, attrs["lorc_rank"])
    nm_ok = isinstance(w.encoding, NM) and w.encoding.scheme == attrs["scheme"]  # quantized N:M (fxforge.ir.nm)
    block_ok = isinstance(w.encoding, BlockFP) and w.encoding.format == get_scheme(attrs["scheme"]).weight_format
    if not (isinstance(w.encoding, Quantized) or nm_ok or block_ok) or w.rank != 2:
        raise ShapeError("qlinear: the weight must be a 2-D const with a #quantized encoding "
                         "(or #nm with the op's scheme, or #blockfp of the op's block scheme)")
    if not dims_equal(x.shape[-1], w.shape[1]):
        raise ShapeError(f"qlinear: input {list(x.shape)} does not fit weight {list(w.shape)} (expects [out, in])")
    if bias is not None and (bias.rank != 1 or not dims_equal(bias.shape[0], w.shape[0])):
        raise ShapeError(f"qlinear: bias {list(bias.shape)} does not fit weight {list(w.shape)}")
    if u is not None:
        r = attrs["lorc_rank"]
        if list(u.shape) != [w.shape[0], r] or list(v.shape) != [w.shape[1], r]:
            raise ShapeError(f"qlinear: lorc_u {list(u.shape)} / lorc_v {list(v.shape)} must be "
                             f"[{w.shape[0]}, {r}] / [{w.shape[1]}, {r}]")
    return [TensorType(x.shape[:-1] + (w.shape[0],), x.dtype)]


def qlinear_ref(*operands, scheme, act_format, group, lorc_rank):
    """The reference: per-token activation quantize-dequantize, dense GEMM on the dequantized weight,
    LoRC correction on the same (quantized) activations, bias; f32 math, result in x's dtype."""
    x, w, bias, u, v = _qlinear_parts(list(operands), lorc_rank)
    xq = fake_quant_act(x, act_format)
    y = F.linear(xq, w.to(torch.float32))
    if u is not None:
        y = y + (xq @ v.to(torch.float32)) @ u.to(torch.float32).T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


register(OpDef("qlinear", (2, 5), {"scheme": REQUIRED, "act_format": None, "group": 0, "lorc_rank": 0},
               _qlinear_infer, qlinear_ref, "lowp",
               "qlinear(x, w #quantized, [bias], [lorc_u, lorc_v]): per-token activation quantization, "
               "GEMM with the dequantized weight, optional LoRC correction (x @ V) @ U^T", kernel="gemm"))
