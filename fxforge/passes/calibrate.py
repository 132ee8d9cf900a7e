"""Calibration: run a graph on calibration inputs and record activation statistics per `linear`.

`calibrate(graph, inputs, sites)` evaluates the graph (the reference evaluator, `ir.evaluate`) on
every calibration input list with an observer, and for each site (a `linear` op, keyed by the name
of its weight without the `.weight` suffix) records the statistics of that linear's input
activation x ([..., in]):
- `absmax`: per input channel max |x| over every token seen (f32 [in]);
- `samples`: up to `max_samples` token rows of x (f32 [n, in]), kept for error measurement (the
  pass compares the float and the quantized layer on them);
- `tokens`: how many token rows were seen.
It also returns the graph's outputs per calibration input, so a rewriting pass can report the
end-to-end error it introduced without running the original graph twice.

Decisions: samples are the first rows seen, in order, across inputs (deterministic; calibration
sets are small); statistics are taken on the CPU in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fxforge.ir.evaluate import evaluate
from fxforge.ir.graph import Graph, Op
from fxforge.progress import progress

log = logging.getLogger(__name__)

MAX_SAMPLES = 512


@dataclass
class SiteStats:
    """Activation statistics of one linear's input."""

    absmax: Tensor | None = None
    samples: list[Tensor] = field(default_factory=list)
    tokens: int = 0

    def sample_matrix(self) -> Tensor:
        return torch.cat(self.samples) if self.samples else torch.empty(0)


@dataclass
class Calibration:
    sites: dict[str, SiteStats]
    outputs: list[list[Tensor]]


def site_name(graph: Graph, op: Op) -> str | None:
    """The layer name of a linear whose weight is a `const` (weight name without `.weight`)."""
    if op.opcode not in ("linear", "qlinear") or len(op.operands) < 2:
        return None
    producer = op.operands[1].producer
    if producer is None or producer.opcode != "const":
        return None
    return producer.attrs["weight"].removesuffix(".weight")


def calibrate(graph: Graph, inputs: Sequence[Sequence[Tensor]], sites: Sequence[str] | None = None,
              max_samples: int = MAX_SAMPLES) -> Calibration:
    """Run `graph` on each input list; record statistics for the linears named in `sites` (all if None)."""
    watch: dict[int, list[str]] = {}  # id of an x value -> the sites it feeds
    for op in graph.ops:
        name = site_name(graph, op)
        if name is not None and (sites is None or name in sites):
            watch.setdefault(id(op.operands[0]), []).append(name)
    stats = {n: SiteStats() for names in watch.values() for n in names}

    def record(value_id: int, t: Tensor) -> None:
        rows = t.detach().reshape(-1, t.shape[-1]).to(torch.float32).cpu()
        for name in watch.get(value_id, ()):
            st = stats[name]
            amax = rows.abs().amax(0)
            st.absmax = amax if st.absmax is None else torch.maximum(st.absmax, amax)
            st.tokens += rows.shape[0]
            have = sum(s.shape[0] for s in st.samples)
            if have < max_samples:
                st.samples.append(rows[: max_samples - have].clone())

    def observe(op: Op, outs: list[Tensor]) -> None:
        for r, t in zip(op.results, outs):
            if id(r) in watch:
                record(id(r), t)

    outputs = []
    log.debug("calibrating %d sites on %d inputs", len(stats), len(inputs))
    for args in progress(inputs, "calibration", total=len(inputs)):
        for v, t in zip(graph.inputs, args):
            if id(v) in watch:
                record(id(v), t)
        outputs.append(evaluate(graph, list(args), observe=observe))
    return Calibration(stats, outputs)
