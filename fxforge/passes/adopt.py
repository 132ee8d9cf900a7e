"""The `adopt` pass: rewrite `linear`s whose weight was already quantized outside fxforge (a model loaded
from a compressed-tensors checkpoint, `fxforge.export.ct_import`) into `qlinear`s with that encoded weight,
as the quantize pass would write them, but with the checkpoint's codes and scales instead of new ones.

Options: "adopt.source" names where the weights come from (e.g. "compressed-tensors"); the pass is in the
default pipeline only when it is set (`fxforge.compile`/`compile_aot` set it for such a model). The encoded
weights are data, not an option: `ctx.shared["adopt.weights"]` = {weight name: encoded `Weight`}.

Decisions:
- It runs before sparsify and quantize: both rewrite only `linear`s, so an adopted layer is left as the
  checkpoint made it, and the layers the checkpoint kept high precision stay open to the compile's options.
- The source set and no weights shared is an error (the option would otherwise silently do nothing), and so
  is an adopted weight no `linear` of any graph reads (JIT graphs share the table; the check is per graph
  only for names the graph holds).
"""

from __future__ import annotations

from fxforge.errors import ConfigError
from fxforge.ir.graph import Graph, Op, Weight
from fxforge.ir.lowp_ops import get_scheme
from fxforge.ir.types import Quantized
from fxforge.passes.linear_sites import free_name
from fxforge.passes.manager import PassContext

SHARED_KEY = "adopt.weights"


def adopt_linear(graph: Graph, op: Op, weight: Weight, scheme: str) -> None:
    """Replace one `linear` (x, const w, [bias]) by `qlinear` with the encoded `weight`."""
    const = op.operands[1].producer
    wname = const.attrs["weight"]
    qname = graph.add_weight(free_name(graph, f"{wname}.q"), weight)
    operands = [op.operands[0], graph.insert_before(op, "const", [], {"weight": qname}, name=const.result.name).result]
    operands += list(op.operands[2:3])
    enc = weight.encoding
    attrs = {"scheme": scheme, "act_format": get_scheme(scheme).act_format, "group": enc.group, "lorc_rank": 0}
    old_name = op.result.name
    q = graph.insert_before(op, "qlinear", operands, attrs)
    graph.replace_op(op, [q.result])
    graph.rename_value(q.result, old_name)
    if not const.result.uses and not any(const.result is o for o in graph.outputs):
        graph.erase(const)
    if not any(o.opcode == "const" and o.attrs["weight"] == wname for o in graph.ops):
        del graph.weights[wname]


class Adopt:
    """Off unless "adopt.source" is set; stats: the adopted layers and their schemes."""

    name = "adopt"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        source = ctx.option("adopt.source")
        if source is None:
            ctx.stats["enabled"] = False
            return graph
        table: dict[str, tuple[str, Weight]] = ctx.shared.get(SHARED_KEY) or {}
        if not table:
            raise ConfigError(f"adopt.source={source!r} is set but no imported weights were given; compile the model "
                              "loaded from the checkpoint with fxforge.compile / compile_aot (they read its weights)")
        adopted: dict[str, str] = {}
        for op in list(graph.find("linear")):
            const = op.operands[1].producer if len(op.operands) > 1 else None
            name = const.attrs["weight"] if const is not None and const.opcode == "const" else None
            if name not in table:
                continue
            scheme, weight = table[name]
            if not isinstance(weight.encoding, Quantized) or list(weight.data.shape) != list(graph.weight(name).data.shape):
                raise ConfigError(f"adopt: imported weight for {name} does not fit the captured layer")
            adopt_linear(graph, op, weight, scheme)
            adopted[name.removesuffix(".weight")] = scheme
        ctx.stats.update({"source": source, "layers": adopted, "adopted": len(adopted)})
        return graph
