"""What a compiled graph's linears hold, read back as exportable layers (codes, scales, zero points in the
dense [out, in] layout an HF checkpoint stores), and the refusal of what an export format cannot express.

Every quantized layer is read from the graph's weight table exactly as fxforge stores it (the codes fxforge
rounded to, its scales and zero points): an exporter re-packs those bits and never rounds again.

Decisions:
- A layer is named by its Hugging Face parameter: the graph weight a `linear`/`qlinear` reads is the
  HF weight name plus the suffix a rewrite added (`.q`, `.nm`); the longest dotted prefix that is an HF
  parameter name is the layer's weight.
- An N:M weight whose values are quantized groups `g` *kept* values (`fxforge.ir.nm`); with 2:4 and no
  tail those are exactly the `g * m / n` dense columns around them, and the pruned places decode to an
  exact 0 (code 0, or the group's zero point), so the dense group `g * m / n` is the same weight, bit for bit.
- A weight `concat_linears` stacked (`prefix.{q_proj+k_proj+v_proj}.weight`) is read once and split back by
  rows into its HF layers (`export/stacked.py`).
- A grouped weight whose one group covers the whole row (group >= in) is per channel; a grouped weight whose
  last group is partial is refused (the format has no partial groups).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor

from fxforge.errors import ExportError
from fxforge.export import stacked
from fxforge.ir import formats, nm, weight_layouts
from fxforge.ir.graph import Graph, Op, Weight
from fxforge.ir.lowp_ops import decode_elements, decode_weight, get_scheme
from fxforge.ir.types import NM, Quantized

# ops whose meaning a checkpoint of plain linears cannot carry -> why
REFUSED_OPS = {
    "hadamard": "an online Walsh-Hadamard rotation of activations (rotate_mode='online') runs between layers; "
                "the format has no online transform of this kind (compile with rotate_mode='fold' or rotate=False)",
    "skip_gate": "FFN skipping is a per-token decision at run time (ffn_skip); a checkpoint has no place for its gates "
                 "(compile without ffn_skip)",
}
REFUSED_OPS["skip_keep"] = REFUSED_OPS["skip_gate"]  # the same gate in decode form (per-row keep flags)


@dataclass
class Layer:
    """One linear's weight as an exporter needs it."""

    name: str  # the HF module name, e.g. "model.layers.0.mlp.up_proj"
    scheme: str | None  # fxforge scheme, None for a plain (possibly pruned) weight
    dense: Tensor | None = None  # plain weight [out, in] in its logical dtype
    codes: Tensor | None = None  # unpacked codes [out, in]: int8 (i8), uint8 (f8e4m3 bits, i4 0..15)
    scale: Tensor | None = None  # float32 [out, G]
    zero: Tensor | None = None  # uint8 [out, G] (asymmetric int4)
    group: int = 0  # dense columns per scale (0: one per output channel)
    sparse: tuple[int, int] | None = None  # (n, m) when the weight is N:M pruned


def hf_key(graph_name: str, keys: Collection[str]) -> str | None:
    """The HF parameter a graph weight stands for: the longest dotted prefix of its name that is one."""
    name = graph_name
    while name not in keys and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in keys else None


def refusals(graph: Graph) -> list[tuple[str, str]]:
    """(where, why) for every op the graph runs that no checkpoint of linears can express."""
    out = []
    for op in graph.ops:
        if op.opcode in REFUSED_OPS:
            out.append((f"%{op.result.name}" if op.results else op.opcode, REFUSED_OPS[op.opcode]))
        if op.opcode == "moe" and any(v.type.encoding is not None for v in op.operands):
            out.append((f"%{op.result.name}", "its experts are int4 (moe_quant); the exporter writes quantized "
                                              "linears, not stacked experts (compile with quantize_overrides="
                                              "{'*.experts': None} to export them 16-bit)"))
    return out


def _weight_const(op: Op) -> str | None:
    prod = op.operands[1].producer if len(op.operands) > 1 else None
    return prod.attrs["weight"] if prod is not None and prod.opcode == "const" else None


def linear_layers(graph: Graph, keys: Collection[str], exportable: Collection[str]) -> tuple[list[Layer], dict[str, str]]:
    """(layers, {graph weight name: HF key}) of every linear/qlinear whose weight is an HF parameter;
    raises `ExportError` naming every layer the format cannot express (`exportable`: its schemes)."""
    problems = refusals(graph)
    layers: list[Layer] = []
    names: dict[str, str] = {}
    for op in graph.ops:
        if op.opcode not in ("linear", "qlinear"):
            continue
        wname = _weight_const(op)
        parts = stacked.parts_of(wname) if wname else []
        rows = stacked.part_rows(op, len(parts)) if len(parts) > 1 else [None]
        part_keys = [hf_key(n, keys) for n in parts]
        if not parts or rows is None or not all(k and k.endswith(".weight") for k in part_keys):
            if op.opcode == "qlinear" or (wname and graph.weight(wname).encoding is not None):
                problems.append((wname or f"%{op.result.name}", "its weight is not a parameter of the HF model"))
            continue
        names.update(zip(parts, part_keys))
        layer_names = [k.removesuffix(".weight") for k in part_keys]
        if op.opcode == "qlinear" and op.attrs.get("lorc_rank", 0):
            problems.append((layer_names[0], f"LoRC adds a rank-{op.attrs['lorc_rank']} correction beside the quantized "
                                             "weight (lorc_rank); the format has none (compile with lorc_rank=0)"))
            continue
        try:
            whole = read_layer("+".join(layer_names), graph.weight(wname), exportable, op.attrs.get("scheme"))
        except ExportError as e:
            problems.append(("+".join(layer_names), str(e)))
            continue
        layers.extend([whole] if len(parts) == 1 else stacked.split_layer(whole, layer_names, rows))
    if problems:
        raise ExportError(_problem_text(problems))
    return layers, names


def _problem_text(problems: list[tuple[str, str]]) -> str:
    by_reason: dict[str, list[str]] = {}
    for where, why in problems:
        by_reason.setdefault(why, []).append(where)
    parts = [f"{', '.join(w[:4])}{f' (+{len(w) - 4} more)' if len(w) > 4 else ''}: {why}" for why, w in by_reason.items()]
    return "the compiled model cannot be exported to this format: " + "; ".join(parts)


def read_layer(name: str, w: Weight, exportable: Collection[str], scheme: str | None = None) -> Layer:
    enc = w.encoding
    if enc is None:
        return Layer(name, None, dense=w.data)
    if isinstance(enc, NM):
        return _read_nm(name, w, exportable)
    if isinstance(enc, Quantized):
        scheme = _scheme_of(enc, exportable, scheme)
        codes, scale, zero = _unpacked(w)
        layer = Layer(name, scheme, codes=codes, scale=scale, zero=zero, group=_dense_group(enc.group, scale, codes.shape[1]))
        check_exact(layer, decode_weight(w))
        return layer
    raise ExportError(f"weight encoding {type(enc).__name__} has no counterpart in the format")


WHY_NOT = {  # fxforge schemes a format cannot express -> why (others: "no mapping to the format")
    "w4a8-fp": "power-of-two group scales (w4a8-fp, ZeroQuant-FP: FP4 weights whose group scales are s_max * 2^-k) "
               "have no counterpart in the format",
}


def _scheme_of(enc: Quantized, exportable: Collection[str], scheme: str | None = None) -> str:
    """The fxforge scheme of an encoded weight (named by its op when known), if the format can express it."""
    if scheme is None:
        scheme = next((s for s in exportable if get_scheme(s).weight_format == enc.format
                       and get_scheme(s).zero_point == enc.zero_point), None)
    if scheme in exportable:
        return scheme
    why = WHY_NOT.get(scheme, f"scheme {scheme or enc.format!r} has no mapping to the format")
    raise ExportError(f"{why} (exportable schemes: {', '.join(exportable)})")


def _unpacked(w: Weight) -> tuple[Tensor, Tensor, Tensor | None]:
    fmt = formats.get_format(w.encoding.format)
    codes = weight_layouts.codes_of(w) if fmt.bits == 4 else w.payload["codes"]  # any decode layout, row-major
    zero = w.payload.get("zero")
    return codes, w.payload["scale"].to(torch.float32), zero


def _dense_group(group: int, scale: Tensor, in_f: int, per_dense: int = 1) -> int:
    """Dense columns per scale; `per_dense`: dense columns per stored column (m / n for N:M)."""
    if scale.shape[1] == 1:  # one group covers the row: that group when it is the row, else per channel
        return group * per_dense if group == in_f else 0
    if in_f % group:
        raise ExportError(f"group {group} does not divide the input dim {in_f} (a partial last group); "
                          "compile with a quantize_group that divides it")
    return group * per_dense


def _read_nm(name: str, w: Weight, exportable: Collection[str]) -> Layer:
    enc = w.encoding
    out_f, in_f = w.data.shape
    if (enc.n, enc.m) != (2, 4):
        raise ExportError(f"{enc.n}:{enc.m} sparsity: only 2:4 has a meaning for the format's runtimes")
    if in_f % enc.m:
        raise ExportError(f"input dim {in_f} is not a multiple of {enc.m} (a dense tail)")
    if enc.scheme is None:
        return Layer(name, None, dense=nm.decode_nm(w), sparse=(enc.n, enc.m))
    inner = nm.inner_weight(w)
    scheme = _scheme_of(inner.encoding, exportable, enc.scheme)
    codes, scale, zero = _unpacked(inner)
    k = codes.shape[1]
    group = _dense_group(enc.group, scale, k, enc.m // enc.n)
    pos = nm.unpack_bits(w.payload["index"], nm.index_bits(enc.m), k)
    if zero is None:  # symmetric: code 0 decodes to 0 (int8 0, fp8 +0)
        dense = nm.expand(codes, pos, enc.n, enc.m, in_f)
    else:  # asymmetric: centre on the zero point, fill 0, shift back by each dense column's group zero
        gk, gd = (enc.group or k), (group or in_f)
        centred = codes.to(torch.int16) - zero.to(torch.int16).repeat_interleave(gk, dim=1)[:, :k]
        dense = nm.expand(centred, pos, enc.n, enc.m, in_f) + zero.to(torch.int16).repeat_interleave(gd, dim=1)[:, :in_f]
        dense = dense.to(torch.uint8)
    layer = Layer(name, scheme, codes=dense, scale=scale, zero=zero, group=group, sparse=(enc.n, enc.m))
    check_exact(layer, nm.decode_nm(w))
    return layer


def layer_values(layer: Layer) -> Tensor:
    """float32 [out, in] the layer's codes/scales stand for (the decode an importer must reproduce)."""
    if layer.scheme is None:
        return layer.dense.to(torch.float32)
    sc = get_scheme(layer.scheme)
    out_f, in_f = layer.codes.shape
    g = layer.group or in_f
    scale = layer.scale.repeat_interleave(g, dim=1)[:, :in_f]
    if layer.zero is not None:
        zero = layer.zero.to(torch.float32).repeat_interleave(g, dim=1)[:, :in_f]
        return (layer.codes.to(torch.float32) - zero) * scale
    return decode_elements(layer.codes, sc.weight_format) * scale


def check_exact(layer: Layer, expected: Tensor) -> None:
    """The dense re-layout decodes to what fxforge runs, bit for bit (else a bug: never export it)."""
    got = layer_values(layer)
    if not torch.equal(got, expected.to(torch.float32)):
        raise ExportError(f"internal: the dense layout of {layer.name} does not decode to fxforge's weight "
                          f"(max diff {(got - expected.float()).abs().max():.3g}); please report this")
