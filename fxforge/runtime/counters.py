"""Run-time counters that a compiled graph computes as extra outputs: FFN skipping's (rows, skipped).

A graph rewritten by `ffn_skip` returns one more output than its caller expects: a `skip_counts`
result, i64[L, 2], (rows the FFN would have run without skipping, rows skipped) per FFN block for
that call, with the blocks' sites in its `sites` attribute. `Program` hands every call's results to
its `SkipCounters`, which adds that output up where it was computed (no host synchronisation per
call) and turns it into plain numbers only when the report is read. Counted, never estimated.
"""

from __future__ import annotations

from typing import Any

import torch

from fxforge.ir.graph import Graph


class SkipCounters:
    """The running sum of a graph's `skip_counts` output (if it has one)."""

    def __init__(self, graph: Graph) -> None:
        self.index: int | None = None
        self.sites: tuple[str, ...] = ()
        for i, v in enumerate(graph.outputs):
            if v.producer is not None and v.producer.opcode == "skip_counts":
                self.index, self.sites = i, tuple(v.producer.attrs["sites"])
        self.total: torch.Tensor | None = None

    def add(self, results: list[torch.Tensor]) -> None:
        if self.index is None:
            return
        t = results[self.index].detach()
        self.total = t.clone() if self.total is None else self.total + t

    def per_layer(self) -> dict[str, dict[str, int]]:
        if self.total is None:
            return {}
        rows = self.total.cpu().tolist()
        return {site: {"rows": r, "skipped": s} for site, (r, s) in zip(self.sites, rows)}


def merge_counts(counters: list[SkipCounters]) -> dict[str, Any]:
    """`{"rows", "skipped", "share", "per_layer": {site: {"rows", "skipped"}}}` summed over graphs."""
    per: dict[str, dict[str, int]] = {}
    for c in counters:
        for site, v in c.per_layer().items():
            slot = per.setdefault(site, {"rows": 0, "skipped": 0})
            slot["rows"] += v["rows"]
            slot["skipped"] += v["skipped"]
    rows = sum(v["rows"] for v in per.values())
    skipped = sum(v["skipped"] for v in per.values())
    return {"rows": rows, "skipped": skipped, "share": skipped / rows if rows else 0.0, "per_layer": per}
