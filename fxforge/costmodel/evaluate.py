"""Held-out evaluation: predictions of a cost model against freshly measured kernels.

    report = evaluate_rows(model, rows)   # rows from `costmodel.profile.measure` of models not trained on
    {"n_kernels": N, "spearman": {"registers": r, "instructions": r, "time": r?}, "mape": {...},
     "roofline_spearman": {...}, "text_spearman": {...}}

Decisions:
- A kernel is one (kernel, arch) row that built; rows of both archs are pooled (the arch is a feature).
- "time" appears only when rows carry a measured time (a GPU run); the roofline baseline of registers
  and instructions is `roofline.baseline` (an analytic guess from the tile), so the learned model is
  compared with what a hand model would say.
"""

from __future__ import annotations

from typing import Any

from fxforge.costmodel.metrics import mape, spearman
from fxforge.costmodel.models import CostModel
from fxforge.costmodel.roofline import baseline

TARGETS = ("registers", "instructions", "time")


def evaluate_rows(model: CostModel, rows: list[dict[str, Any]]) -> dict[str, Any]:
    built = [r for r in rows if "registers" in r]
    out: dict[str, Any] = {"n_kernels": len(built), "spearman": {}, "mape": {}, "roofline_spearman": {},
                           "text_spearman": {}}
    preds = [model.predict(r["features"]) for r in built]
    texts = [model.predict_text(r["bag"], r["arch"]) for r in built]
    for target in TARGETS:
        have = [i for i, r in enumerate(built) if target in r]
        if not have:
            continue
        true = [float(built[i][target]) for i in have]
        base = [baseline(built[i]["features"], target, built[i]["arch"]) for i in have]
        out["roofline_spearman"][target] = spearman(base, true)
        if target in preds[have[0]]:
            pred = [preds[i][target] for i in have]
            out["spearman"][target] = spearman(pred, true)
            out["mape"][target] = mape(pred, true)
            out["text_spearman"][target] = spearman([texts[i][target] for i in have], true)
    out["skipped"] = [r["skipped"] for r in rows if "skipped" in r]
    return out
