"""Choosing a rewrite per linear site under an accuracy budget: the plan `fxforge.compile(budget=...)` compiles.

    plan = choose(graph, calibration, budget=0.05, apply=apply, schemes=SCHEMES)
    plan.overrides   # {site: scheme} for quantize_overrides; dense sites are absent
    plan.stats()     # the report's `plan` (site -> choice, predicted time, error), the search, the check

The budget is the mean relative L2 error of the model's output on the calibration inputs:
    err(plan) = mean over calibration examples of ||y_plan - y_dense|| / ||y_dense||  (first output).

Decisions:
- Candidates per site: dense and each scheme `apply` accepts there. A candidate's error is measured by
  rewriting that site alone (`apply(graph, {site: scheme})`, the same passes the compile runs) and running
  `ir.evaluate` on the calibration inputs; its time is predicted for the site's kernel group at the
  calibration shape (learned registers/shared memory -> roofline time; the roofline alone when no
  model file is shipped, which the plan says); its bytes are the weight bytes as stored.
- Errors of different sites compose in quadrature (independent errors: err^2 adds), a good first-order
  model of small independent perturbations, checked at the end.
- Search: Lagrangian relaxation. For each multiplier lam on a geometric grid each site takes the candidate
  minimising time + lam * err^2; the fastest plan within the (composed) budget wins, weight bytes breaking
  ties. Then the whole plan is applied and measured (the check); if it is over the budget, the composed
  budget is tightened by the measured excess and the search runs again (up to `RETRIES` times). When no
  plan meets the budget the model stays dense and the plan says so.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fxforge.costmodel.features import kernel_features
from fxforge.costmodel.models import CostModel, shipped_model
from fxforge.costmodel.roofline import kernel_time
from fxforge.ir.evaluate import bind_symbols, evaluate
from fxforge.ir.graph import Graph, Op
from fxforge.passes.calibrate import site_name
from fxforge.passes.fuse import fuse
from fxforge.passes.linear_sites import choose_by_pattern, embedding_tables, relative_error, skip_reason

SCHEMES = ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp")
RETRIES = 4
Apply = Callable[[Graph, dict[str, str]], Graph]


@dataclass
class Candidate:
    choice: str
    error: float
    time: float
    bytes: int


@dataclass
class Plan:
    budget: float
    sites: dict[str, list[Candidate]]
    choices: dict[str, str] = field(default_factory=dict)
    error: float = 0.0  # measured, whole model
    met: bool = False
    predictor: str = ""
    notes: list[str] = field(default_factory=list)
    checks: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def overrides(self) -> dict[str, str]:
        return {s: c for s, c in self.choices.items() if c != "dense"}

    def chosen(self, site: str) -> Candidate:
        return next(c for c in self.sites[site] if c.choice == self.choices.get(site, "dense"))

    def stats(self) -> dict[str, Any]:
        per_site = {s: {"choice": self.chosen(s).choice, "predicted_time_us": round(self.chosen(s).time * 1e6, 3),
                        "error": round(self.chosen(s).error, 6), "weight_bytes": self.chosen(s).bytes}
                    for s in self.sites}
        return {"budget": self.budget, "met": self.met, "error": round(self.error, 6), "predictor": self.predictor,
                "predicted_time_us": round(sum(self.chosen(s).time for s in self.sites) * 1e6, 3),
                "site_weight_bytes": sum(self.chosen(s).bytes for s in self.sites), "plan": per_site,
                "checks": self.checks, "notes": self.notes, "seconds": round(self.seconds, 3),
                "candidates": {s: [vars(c) for c in cs] for s, cs in self.sites.items()}}


def output_error(graph: Graph, calibration: Sequence[Sequence[torch.Tensor]], reference: list[torch.Tensor]) -> float:
    """Mean relative L2 error of the graph's first output against `reference`, over the calibration inputs."""
    errs = [relative_error(evaluate(graph, list(args))[0].float(), ref.float())
            for args, ref in zip(calibration, reference)]
    return sum(errs) / len(errs)


def linear_sites(graph: Graph, overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    """site -> the name of its linear's result value, for the linears a rewrite may touch (lm_head and tied
    weights kept, as quantize does)."""
    tied = embedding_tables(graph)
    out = {}
    for op in graph.find("linear"):
        layer = site_name(graph, op)
        if layer and skip_reason(graph, op, tied) is None and choose_by_pattern(layer, "x", overrides) is not None:
            out[layer] = op.result.name
    return out


def _site_op(graph: Graph, value_name: str) -> Op | None:
    return next((op for op in graph.ops if op.opcode in ("linear", "qlinear") and op.results
                 and op.result.name == value_name), None)


def _weight_bytes(graph: Graph, op: Op) -> int:
    return sum(graph.weight(v.producer.attrs["weight"]).nbytes() for v in op.operands[1:]
               if v.producer is not None and v.producer.opcode == "const")


class _Predictor:
    def __init__(self, model: CostModel | None, arch: int) -> None:
        self.model, self.arch = model, arch

    @property
    def name(self) -> str:
        if self.model is None:
            return f"roofline sm_{self.arch} (no shipped cost model: registers/shared memory not predicted)"
        return f"learned figures ({self.model.meta.get('feature_set', 'ir')}) + roofline sm_{self.arch}"

    def time(self, graph: Graph, op: Op, bindings: dict) -> float:
        fuse(graph)
        group = graph.partition.group_of().get(id(op)) if graph.partition else None
        if group is None:
            return 0.0
        feats = kernel_features(graph, group, None, self.arch, bindings=bindings)
        return kernel_time(feats, self.model.predict(feats) if self.model else None, self.arch)


def _candidate(graph: Graph, site: str, value: str, choice: str, apply: Apply, calibration: Sequence,
               reference: list[torch.Tensor], predictor: _Predictor, bindings: dict) -> Candidate | None:
    g = copy.deepcopy(graph) if choice == "dense" else apply(copy.deepcopy(graph), {site: choice})
    op = _site_op(g, value)
    if op is None or (choice != "dense" and op.opcode != "qlinear"):
        return None  # the scheme does not apply here (odd input dim, ...)
    err = 0.0 if choice == "dense" else output_error(g, calibration, reference)
    return Candidate(choice, err, predictor.time(g, op, bindings), _weight_bytes(g, op))


def _search(plan: Plan, limit: float) -> dict[str, str] | None:
    """The fastest plan whose composed error sqrt(sum err^2) is within `limit` (Lagrangian over a grid)."""
    best: tuple[float, int, dict[str, str]] | None = None
    for lam in [0.0, *(10.0 ** (e / 4) for e in range(-40, 41))]:
        pick = {s: min(cs, key=lambda c: (c.time + lam * c.error ** 2, c.bytes)) for s, cs in plan.sites.items()}
        err = math.sqrt(sum(c.error ** 2 for c in pick.values()))
        if err > limit:
            continue
        key = (sum(c.time for c in pick.values()), sum(c.bytes for c in pick.values()))
        if best is None or key < best[:2]:
            best = (*key, {s: c.choice for s, c in pick.items()})
    return best[2] if best else None


def choose(graph: Graph, calibration: Sequence[Sequence[torch.Tensor]], budget: float, apply: Apply, *,
           schemes: Sequence[str] = SCHEMES, model: CostModel | None | str = "shipped", arch: int = 90,
           overrides: dict[str, str | None] | None = None) -> Plan:
    """The plan (see the module docstring); `graph` is not changed."""
    start = time.perf_counter()
    model = shipped_model() if model == "shipped" else model
    predictor = _Predictor(model, arch)  # type: ignore[arg-type]
    reference = [evaluate(graph, list(args))[0] for args in calibration]
    bindings = bind_symbols([v.type for v in graph.inputs], list(calibration[0]), [v.name for v in graph.inputs])
    sites: dict[str, list[Candidate]] = {}
    for site, value in linear_sites(graph, overrides).items():
        cands = [_candidate(graph, site, value, c, apply, calibration, reference, predictor, bindings)
                 for c in ("dense", *schemes)]
        sites[site] = [c for c in cands if c is not None]
    plan = Plan(budget, sites, predictor=predictor.name)
    plan.choices = {s: "dense" for s in sites}
    limit = budget
    for _ in range(RETRIES):
        choice = _search(plan, limit)
        if choice is None or all(c == "dense" for c in choice.values()):
            break
        g = apply(copy.deepcopy(graph), {s: c for s, c in choice.items() if c != "dense"})
        measured = output_error(g, calibration, reference)
        plan.checks.append({"composed_limit": round(limit, 6), "measured": round(measured, 6)})
        if measured <= budget:
            plan.choices, plan.error, plan.met = choice, measured, True
            break
        limit *= 0.9 * budget / measured
    if not plan.met:
        plan.notes.append(f"no plan with a rewrite meets the budget {budget} (mean relative L2 error on the "
                          "calibration inputs); the model stays dense")
    if model is None:
        plan.notes.append("no shipped cost model: times are the roofline's alone")
    plan.seconds = time.perf_counter() - start
    return plan
