"""Constant folding: evaluate ops whose operands are all constants, at compile time.

An operand is constant when it is a `full` or `arange` with a static shape, or a `const` of a plain
(unencoded) weight with at most `max_elements` elements. Such an op (never an extern, never a
source itself) is run through its op table reference (`ir.evaluate.run_op`, the semantic ground
truth) and replaced: by a `full` when every element of the result is the same bit pattern (any
size: a full costs no storage), otherwise by a `const` of a new weight `folded.<name>` when the
result has at most `max_elements` elements, otherwise not at all, so a transposed or broadcast copy
of a big weight is never materialised. Folding walks the ops in order and remembers what it
computed, so chains of constant ops collapse in one sweep.

Options (`PassContext.options`): `constant_fold.max_elements` (default 4096), the largest weight a
fold may create or read; `constant_fold.max_eval_elements` (default 2**22), the largest result it
will compute at all (bounds compile time and memory).

Decisions: shape ops (reshape, permute, expand, slice, ...) applied directly to a model weight's
`const` are not folded. They are free views at run time, and folding them would copy a weight and
hide it from the passes that look for weights by their `const` (linear recognition, quantization);
shape ops of `full`/`arange` values and of weights this pass created (`folded.*`) do fold, so e.g.
rotary tables built from a static position range collapse into one small weight. Uniformity is
judged bitwise, so `-0.0` beside `0.0` is kept.
"""

from __future__ import annotations

import re

import torch

from fxforge.ir.errors import IRError
from fxforge.ir.evaluate import concrete, run_op
from fxforge.ir.graph import Graph, Op, Value
from fxforge.passes.manager import PassContext

FOLDED_PREFIX = "folded."
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def is_uniform(t: torch.Tensor) -> bool:
    """Every element has the same bit pattern (NaNs included, signed zeros told apart)."""
    flat = t.reshape(-1)
    if flat.numel() <= 1:
        return True
    if flat.is_floating_point():
        flat = flat.contiguous().view(_INT_OF_SIZE[flat.element_size()])
    return bool((flat == flat[0]).all())


def _is_model_weight(v: Value) -> bool:
    return v.producer.opcode == "const" and not str(v.producer.attrs["weight"]).startswith(FOLDED_PREFIX)


class _Folder:
    def __init__(self, graph: Graph, max_elements: int, max_eval: int) -> None:
        self.graph = graph
        self.max_elements = max_elements
        self.max_eval = max_eval
        self.tensors: dict[int, torch.Tensor] = {}
        self.stats = {"folded": 0, "to_full": 0, "to_weight": 0, "skipped_too_large": 0, "skipped_views": 0}
        self.by_opcode: dict[str, int] = {}

    def constant(self, v: Value) -> bool:
        op = v.producer
        if op is None or not v.type.is_static:
            return False
        if op.opcode in ("full", "arange"):
            return True
        return op.opcode == "const" and v.type.encoding is None and v.type.numel() <= self.max_elements

    def tensor(self, v: Value) -> torch.Tensor:
        if id(v) not in self.tensors:
            self.tensors[id(v)] = run_op(self.graph, v.producer, [], {})[0]
        return self.tensors[id(v)]

    def foldable(self, op: Op) -> bool:
        if op.opcode in ("extern", "const", "full", "arange") or not op.operands or len(op.results) != 1:
            return False
        if not op.result.type.is_static or not all(self.constant(v) for v in op.operands):
            return False
        try:
            concrete(op.attrs, {})
        except IRError:
            return False  # attributes with symbols cannot be evaluated now
        if op.opdef.category == "shape" and any(_is_model_weight(v) for v in op.operands):
            self.stats["skipped_views"] += 1
            return False
        if op.result.type.numel() > self.max_eval:
            self.stats["skipped_too_large"] += 1
            return False
        return True

    def fold(self, op: Op) -> None:
        out = run_op(self.graph, op, [self.tensor(v) for v in op.operands], {})[0]
        t = op.result.type
        if is_uniform(out):
            value = out.reshape(-1)[0].item() if out.numel() else torch.zeros((), dtype=out.dtype).item()
            new = self.graph.insert_before(op, "full", [], {"shape": t.shape, "value": value, "dtype": t.dtype})
            self.stats["to_full"] += 1
        elif out.numel() <= self.max_elements:
            name = self.weight_name(op)
            self.graph.add_weight(name, out.contiguous().clone())
            new = self.graph.insert_before(op, "const", [], {"weight": name}, name=name.rsplit(".", 1)[-1])
            self.stats["to_weight"] += 1
        else:
            self.stats["skipped_too_large"] += 1
            return
        self.tensors[id(new.result)] = out
        self.graph.replace_op(op, [new.result])
        self.stats["folded"] += 1
        self.by_opcode[op.opcode] = self.by_opcode.get(op.opcode, 0) + 1

    def weight_name(self, op: Op) -> str:
        base = FOLDED_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", op.result.name)
        name, i = base, 1
        while name in self.graph.weights:
            name, i = f"{base}_{i}", i + 1
        return name


def fold_constants(graph: Graph, max_elements: int = 4096, max_eval_elements: int = 1 << 22) -> dict:
    """Fold every foldable op; returns the statistics (see `ConstantFold`)."""
    folder = _Folder(graph, max_elements, max_eval_elements)
    for op in list(graph.ops):
        if folder.foldable(op):
            folder.fold(op)
    return {**folder.stats, "by_opcode": dict(sorted(folder.by_opcode.items()))}


class ConstantFold:
    """stats: folded, to_full, to_weight, skipped_too_large, skipped_views, by_opcode."""

    name = "constant_fold"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        ctx.stats.update(fold_constants(graph, int(ctx.option("constant_fold.max_elements", 4096)),
                                        int(ctx.option("constant_fold.max_eval_elements", 1 << 22))))
        return graph
