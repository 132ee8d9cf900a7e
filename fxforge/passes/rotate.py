"""The `rotate` pass: orthogonal (Hadamard) rotations that spread activation outliers before quantization.

Two forms, both exact in real arithmetic (fp32 outputs equal the unrotated graph's to rounding):
- residual (QuaRot): `rotate_residual.rotate_stream` rotates the residual stream of an RMSNorm
  transformer by one randomised Hadamard matrix Q folded into the weights (norm weights folded into
  the following linears first). Readers of the stream (q/k/v, gate/up, lm_head) get W <- W Q, writers
  (o_proj, down_proj) W <- Q^T W, the embedding table E <- E Q. No op is added. Architectures whose
  stream is not "embedding -> (rms_norm -> linears, add of a linear) ... -> rms_norm -> linear" (LayerNorm
  with mean subtraction and bias, BERT-like; streams that are graph outputs) are left to the online
  form, and the pass's `notes` say why.
- online: for each input value x of linears that will be quantized (and is not already a rotated
  stream), `h = hadamard(x) {block=b}` is inserted once and every such linear reads h with its weight's
  input dim rotated offline (W <- W H_b): y = x W^T = (x H)(W H)^T. b is the largest Hadamard size
  (2^k * {1, 12, 20, 28}) dividing the input width, at most `rotate_block` (default: the whole width),
  so a 688-wide down_proj gets blocks of 16. This is the form for BERT-like models and for inputs the
  residual form does not reach (o_proj after attention, down_proj after SwiGLU).

Options: "rotate.enabled" (None: the method plan decides, see `quant_methods`), "rotate.mode" = "auto"
(residual where the architecture allows, online elsewhere) | "online", "rotate.block" (max block, 0 =
whole width), "rotate.seed" (the random signs of Q); the quantize.* options say which linears.
Stats: per layer the block, the form, and with calibration data the round-to-nearest error of the
layer before and after rotation (`rtn_error_before/after`).
"""

from __future__ import annotations

from typing import Any

import torch

from fxforge.ir.graph import Graph, Op, Value, Weight
from fxforge.ir.hadamard import hadamard_ref, largest_block
from fxforge.passes.calibrate import calibrate
from fxforge.passes.manager import PassContext
from fxforge.passes.qerror import layer_error, report_inputs, rows_for
from fxforge.passes.quant_methods import method_targets, resolve_methods
from fxforge.passes.rotate_residual import rotate_stream


def _weight_name(op: Op) -> str:
    return op.operands[1].producer.attrs["weight"]


def _exclusive(graph: Graph, names: set[str], ops: list[Op]) -> bool:
    """Every const of these weights feeds only these linears as their weight (safe to rewrite in place)."""
    ids = {id(o) for o in ops}
    for op in graph.ops:
        if op.opcode == "const" and op.attrs["weight"] in names:
            if any(id(u) not in ids or u.operands[1] is not op.result for u in op.result.uses):
                return False
    return True


def rotate_online(graph: Graph, targets: list[tuple[Op, str, str]], max_block: int,
                  skip_values: set[int]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Insert `hadamard` before the target linears (grouped by input) and rotate their weights."""
    by_input: dict[int, tuple[Value, list[tuple[Op, str, str]]]] = {}
    for t in targets:
        x = t[0].operands[0]
        if id(x) not in skip_values:
            by_input.setdefault(id(x), (x, []))[1].append(t)
    layers, notes = {}, {}
    position = {id(op): i for i, op in enumerate(graph.ops)}
    for x, group in by_input.values():
        n = x.type.shape[-1]
        ops = [g[0] for g in group]
        if not isinstance(n, int):
            notes[group[0][1]] = "input width is symbolic: not rotated"
            continue
        b = largest_block(n, max_block or None)
        if b <= 1:
            notes[group[0][1]] = f"input width {n} has no Hadamard block > 1: not rotated"
            continue
        names = {_weight_name(op) for op in ops}
        if not _exclusive(graph, names, ops):
            notes[group[0][1]] = "weight shared with another op: not rotated"
            continue
        first = min(ops, key=lambda o: position[id(o)])
        h = graph.insert_before(first, "hadamard", [x], {"block": b}, name=f"{x.name}_rot")
        for op, layer, _ in group:
            graph.set_operand(op, 0, h.result)
            layers[layer] = {"form": "online", "block": b}
        for name in names:
            w = graph.weight(name).data
            graph.weights[name] = Weight(hadamard_ref(w.to(torch.float64), block=b).to(w.dtype))
    return layers, notes


def _errors(calib, targets, rotate_rows, graph: Graph, group: int | None) -> dict[str, tuple[float, float]]:
    """Round-to-nearest error of each target before (calibration rows, original weight) and after."""
    out = {}
    for op, layer, scheme in targets:
        site = calib.sites.get(layer) if calib else None
        if site is None or not site.samples or layer not in rotate_rows:
            continue
        x = rows_for(site.sample_matrix())
        w0, fn = rotate_rows[layer]
        out[layer] = (layer_error(x, w0, scheme, group), layer_error(fn(x), graph.weight(_weight_name(op)).data, scheme, group))
    return out


class Rotate:
    """Off unless the method plan turns rotation on (see `quant_methods.resolve_methods`)."""

    name = "rotate"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        plan = resolve_methods(ctx.options, bool(ctx.calibration))
        ctx.stats["plan"] = plan.why["rotate"]
        ctx.stats["methods"] = plan.to_json()  # the whole plan once in the trace (rotate runs first)
        targets = method_targets("rotate", graph, ctx.options, bool(ctx.calibration))
        if not targets:
            ctx.stats["enabled"] = False
            return graph
        mode = ctx.option("rotate.mode") or "auto"
        calibration = ctx.calibration
        # the before/after report needs only the rows calibrate keeps (MAX_SAMPLES): the first inputs do
        calib = calibrate(graph, report_inputs(calibration), sites=[t[1] for t in targets]) if calibration else None
        originals = {layer: graph.weight(_weight_name(op)).data.clone() for op, layer, _ in targets}
        layers: dict[str, dict[str, Any]] = {}
        notes: dict[str, str] = {}
        rotated_values: set[int] = set()
        stream = None
        if mode == "auto":
            stream = rotate_stream(graph, seed=int(ctx.option("rotate.seed") or 0))
            notes.update(stream.notes)
            rotated_values = stream.reader_inputs
            for layer, q in stream.layers.items():
                form = "residual-out" if layer in stream.writers else "residual"
                layers[layer] = {"form": form, "block": q}
        online, online_notes = rotate_online(graph, targets,
                                             int(ctx.option("rotate.block") or 0), rotated_values)
        for layer, info in online.items():
            layers.setdefault(layer, {}).update(info)
        notes.update(online_notes)
        rot_fns = {}
        for layer, info in layers.items():
            b = info["block"]
            if layer not in originals:  # rotated for exactness (lm_head), not quantized
                continue
            if info["form"] == "online":
                rot_fns[layer] = (originals[layer], lambda x, b=b: hadamard_ref(x, block=b))
            elif stream is not None and layer in stream.input_maps:
                rot_fns[layer] = (originals[layer], stream.input_maps[layer])
        for layer, (before, after) in _errors(calib, targets, rot_fns, graph, ctx.option("quantize.group")).items():
            layers[layer].update(rtn_error_before=before, rtn_error_after=after)
        ctx.stats.update(enabled=True, mode=mode, layers=layers, notes=notes,
                         hadamard_ops=len(graph.find("hadamard")))
        return graph
