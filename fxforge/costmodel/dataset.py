"""Datasets of kernel figures: versioned JSON files (in `fxforge/costmodel/data/` for the shipped ones).

    ds = new_dataset(rows, archs=(90, 80), models=[...], feature_set="ir")
    path = save(ds, "fxforge/costmodel/data")     # -> data/kernels-v1-<date>-<device>.json
    ds = load(path)

Decisions:
- A file holds its own provenance: format version, creation date (UTC), device ("cpu-build" when the
  figures come from compiling for the GPU on a CPU, else the GPU's name), the versions of torch, triton,
  fxforge and torch-mlir, the archs, the models and shapes profiled, and the feature set ("ir" or
  "ir+mlir"). Rows are plain JSON (see `costmodel.profile.measure`).
- The file name carries the format version, the date and the device, so datasets never overwrite each
  other and a newer format can be read next to older ones.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from fxforge.errors import ConfigError

FORMAT_VERSION = 1
DATA_DIR = Path(__file__).parent / "data"


def versions() -> dict[str, str]:
    import torch
    import triton

    from fxforge.version import __version__

    out = {"fxforge": __version__, "torch": torch.__version__, "triton": triton.__version__}
    try:
        from importlib.metadata import version

        out["torch_mlir"] = version("torch-mlir")
    except Exception:  # not installed: the feature set says "ir"
        pass
    return out


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu-build"


def new_dataset(rows: list[dict[str, Any]], *, archs: list[int], models: list[str], inputs: list[str],
                feature_set: str) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": device_name(), "versions": versions(), "archs": list(archs), "models": list(models),
            "inputs": list(inputs), "feature_set": feature_set, "rows": rows}


def save(dataset: dict[str, Any], where: str | Path = DATA_DIR) -> Path:
    """Write into directory `where` under a versioned name (or to `where` itself if it ends in .json)."""
    where = Path(where)
    if where.suffix != ".json":
        where.mkdir(parents=True, exist_ok=True)
        stamp = dataset["created"][:10]
        device = "".join(c if c.isalnum() else "-" for c in dataset["device"]).strip("-").lower()
        base, i = f"kernels-v{dataset['format']}-{stamp}-{device}", 0
        where = where / f"{base}.json"
        while where.exists():
            i += 1
            where = where.parent / f"{base}-{i}.json"
    where.write_text(json.dumps(dataset, indent=None, separators=(",", ":")))
    return where


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"dataset {path} does not exist; make one with `fxforge costmodel profile`")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT_VERSION or "rows" not in data:
        raise ConfigError(f"{path} is not a fxforge kernel dataset of format {FORMAT_VERSION}")
    return data


def measured(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose build succeeded (they carry the figures)."""
    return [r for r in rows if "registers" in r]
