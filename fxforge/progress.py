"""Progress bars on long work and the `FXFORGE_LOGS` switch: what a user sees while fxforge works.

    for args in progress(inputs, "calibration"):   # a tqdm bar on a terminal, the plain iterable otherwise
    FXFORGE_LOGS=passes,codegen python run.py      # like TORCH_LOGS: log what those parts do, to stderr

Decisions:
- A bar only when stderr is a terminal and `FXFORGE_QUIET` is unset (or "0"): logs, CI and notebooks
  (whose stderr is not a TTY) stay clean; tqdm is optional (no bar without it, never an error).
- `FXFORGE_LOGS` names parts by a small table (`LOGS`: name -> logger) rather than logger paths, so the
  names stay stable when modules move; an unknown name is a `ConfigError` listing the known ones.
  `fxforge/__init__.py` reads the variable once at import; `configure_logging(spec)` does it later.
- Every module logs to `logging.getLogger(__name__)`, so a table row is just a package prefix.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from fxforge.errors import ConfigError

LOGS: dict[str, str] = {
    "all": "fxforge",
    "frontend": "fxforge.frontend",
    "passes": "fxforge.passes",
    "calibration": "fxforge.passes.calibrate",
    "solver": "fxforge.passes.hessian",
    "codegen": "fxforge.codegen",
    "build_check": "fxforge.codegen.buildcheck",
    "runtime": "fxforge.runtime",
    "costmodel": "fxforge.costmodel",
    "pipeline": "fxforge.pipeline",
}
_HANDLER_FLAG = "_fxforge_logs"


def quiet() -> bool:
    """No progress bars: FXFORGE_QUIET set (not "0"), or stderr is not a terminal."""
    if os.environ.get("FXFORGE_QUIET", "") not in ("", "0"):
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return not (isatty and isatty())


def progress(iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """`iterable`, shown as a progress bar named `desc` on a terminal (tqdm), as it is otherwise."""
    if quiet():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: no bar, same iteration
        return iterable
    return tqdm(iterable, desc=f"fxforge: {desc}", total=total, leave=False, file=sys.stderr, dynamic_ncols=True)


def configure_logging(spec: str | None = None) -> list[str]:
    """Log the named parts (comma-separated `LOGS` names; default: $FXFORGE_LOGS) at DEBUG to stderr,
    one line each "[logger] message"; returns the logger names enabled. Calling again replaces them."""
    spec = os.environ.get("FXFORGE_LOGS", "") if spec is None else spec
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in LOGS]
    if unknown:
        raise ConfigError(f"FXFORGE_LOGS names {unknown}, which fxforge does not know; use a comma-separated list of "
                          f"{sorted(LOGS)}")
    for logger_name in LOGS.values():  # undo an earlier call
        logger = logging.getLogger(logger_name)
        for h in [h for h in logger.handlers if getattr(h, _HANDLER_FLAG, False)]:
            logger.removeHandler(h)
            logger.setLevel(logging.NOTSET)
    enabled = [LOGS[n] for n in names]
    for logger_name in enabled:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        setattr(handler, _HANDLER_FLAG, True)
        logger = logging.getLogger(logger_name)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    return enabled
