"""Learned models of kernel figures: scikit-learn gradient boosting per target on the kernel features,
and a bag-of-ops text model (TLP-like) on the op tokens; stored as plain JSON trees.

    model = train(rows)                            # rows of a dataset (`costmodel.profile.measure`)
    save_model(model, path); model = load_model(path)   # the shipped one: `shipped_model()`
    model.predict(features, bag) -> {"registers": 72.0, "instructions": 640.0, ...}

Decisions:
- One `GradientBoostingRegressor` per target, fit on log(1 + target): registers, shared memory and
  instruction counts span orders of magnitude, and rank quality (Spearman) is what selection needs.
- The text model is the same learner on the bag of ops only (IR opcodes, encodings, dtypes, the kind and,
  with torch-mlir, linalg/arith/math tokens) plus the arch: the seed's "MLIR text as NLP input" in its
  simplest form. `predict` uses the feature model; `predict_text` the text model (eval reports both).
- Model files are JSON (the trees' arrays), not pickles: loading runs no code, and the file does not
  depend on the scikit-learn version that trained it. Prediction walks the trees in numpy.
- Unknown feature names read as 0, so features added later do not break a shipped model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fxforge.errors import ConfigError

TARGETS = ("registers", "instructions", "shared", "spills")
SHIPPED = Path(__file__).parent / "data" / "model.json"
PARAMS = {"n_estimators": 120, "max_depth": 4, "learning_rate": 0.1, "subsample": 0.9, "random_state": 0}


@dataclass
class Trees:
    """A fitted boosting ensemble as arrays: f(x) = init + rate * sum(tree(x))."""

    init: float
    rate: float
    trees: list[dict[str, list]]

    def predict_one(self, x: list[float]) -> float:
        total = 0.0
        for t in self.trees:
            node = 0
            left, right, feat, thr, val = t["left"], t["right"], t["feature"], t["threshold"], t["value"]
            while left[node] != -1:
                node = left[node] if x[feat[node]] <= thr[node] else right[node]
            total += val[node]
        return self.init + self.rate * total

    @classmethod
    def of(cls, gbr: Any) -> Trees:
        trees = []
        for est in gbr.estimators_[:, 0]:
            t = est.tree_
            trees.append({"left": t.children_left.tolist(), "right": t.children_right.tolist(),
                          "feature": t.feature.tolist(), "threshold": [round(float(v), 6) for v in t.threshold],
                          "value": [round(float(v), 6) for v in t.value[:, 0, 0]]})
        return cls(float(gbr.init_.constant_[0, 0]), float(gbr.learning_rate), trees)


@dataclass
class CostModel:
    """Per-target feature models and text models, with the names they read."""

    features: list[str]
    tokens: list[str]
    feature_models: dict[str, Trees]
    text_models: dict[str, Trees]
    meta: dict[str, Any] = field(default_factory=dict)

    def _vec(self, values: dict[str, float], names: list[str]) -> list[float]:
        return [float(values.get(n, 0.0)) for n in names]

    def predict(self, features: dict[str, float]) -> dict[str, float]:
        x = self._vec(features, self.features)
        return {t: max(0.0, math.expm1(m.predict_one(x))) for t, m in self.feature_models.items()}

    def predict_text(self, bag: dict[str, float], arch: int) -> dict[str, float]:
        x = self._vec({**bag, "arch": float(arch)}, self.tokens)
        return {t: max(0.0, math.expm1(m.predict_one(x))) for t, m in self.text_models.items()}


def train(rows: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> CostModel:
    """Fit the feature and text models on measured rows (rows without figures are skipped)."""
    import numpy as np
    from sklearn.ensemble import GradientBoostingRegressor

    rows = [r for r in rows if "registers" in r]
    if len(rows) < 8:
        raise ConfigError(f"training needs at least 8 measured kernels, the dataset has {len(rows)}; profile more "
                          "models or shapes")
    features = sorted({k for r in rows for k in r["features"]})
    tokens = sorted({k for r in rows for k in r["bag"]} | {"arch"})
    xf = np.array([[float(r["features"].get(n, 0.0)) for n in features] for r in rows])
    xt = np.array([[float({**r["bag"], "arch": r["arch"]}.get(n, 0.0)) for n in tokens] for r in rows])
    fm, tm = {}, {}
    for target in TARGETS:
        y = np.log1p(np.array([float(r.get(target, 0.0)) for r in rows]))
        fm[target] = Trees.of(GradientBoostingRegressor(**PARAMS).fit(xf, y))
        tm[target] = Trees.of(GradientBoostingRegressor(**PARAMS).fit(xt, y))
    info = {"n_rows": len(rows), "params": PARAMS, **(meta or {})}
    return CostModel(features, tokens, fm, tm, info)


def save_model(model: CostModel, path: str | Path) -> Path:
    path = Path(path)
    body = {"format": 1, "meta": model.meta, "features": model.features, "tokens": model.tokens,
            "feature_models": {t: vars(m) for t, m in model.feature_models.items()},
            "text_models": {t: vars(m) for t, m in model.text_models.items()}}
    path.write_text(json.dumps(body, separators=(",", ":")))
    return path


def load_model(path: str | Path) -> CostModel:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cost model file {path} does not exist; train one with `fxforge costmodel train`")
    body = json.loads(path.read_text())
    if body.get("format") != 1:
        raise ConfigError(f"{path} is not a fxforge cost model file (format 1)")
    return CostModel(body["features"], body["tokens"], {t: Trees(**m) for t, m in body["feature_models"].items()},
                     {t: Trees(**m) for t, m in body["text_models"].items()}, body.get("meta", {}))


def shipped_model(path: str | Path | None = None) -> CostModel | None:
    """The model file shipped in the package (or `path`); None when it is missing (callers fall back to
    the roofline and say so)."""
    path = Path(path) if path else SHIPPED
    return load_model(path) if path.is_file() else None
