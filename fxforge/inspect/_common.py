"""What every `fxforge.inspect` helper shares: the lazy matplotlib import, a figure without pyplot,
and `HTML`, a string that notebooks render as HTML.

Decisions:
- matplotlib is an optional dependency (the `notebook` extra): it is imported when a helper draws,
  and its absence is one `ConfigError` naming the extra to install.
- Figures are `matplotlib.figure.Figure` objects made without pyplot, so a helper draws nothing on
  screen by itself and leaves no open figure behind; Jupyter renders a returned Figure inline.
- `HTML` needs no IPython: Jupyter calls `_repr_html_`, anything else reads `.data` or `str()`.
"""

from __future__ import annotations

from typing import Any

from fxforge.errors import ConfigError

EXTRA = "pip install 'fxforge[notebook]' (matplotlib, nbclient, ipykernel)"


def optional(module: str) -> Any:
    """Import an optional dependency of the inspection helpers, or say which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"fxforge.inspect needs {module.split('.')[0]} for this: {EXTRA}") from e


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 6.4, height: float = 4.0, **kw: Any) -> tuple[Any, Any]:
    """A pyplot-free Figure and its axes (`Figure.subplots` semantics)."""
    mfigure = optional("matplotlib.figure")
    fig = mfigure.Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


class HTML:
    """An HTML fragment: rendered by Jupyter (`_repr_html_`), readable as text (`.data`)."""

    def __init__(self, data: str) -> None:
        self.data = data

    def _repr_html_(self) -> str:
        return self.data

    def __str__(self) -> str:
        return self.data


def trace_of(source: Any) -> Any:
    """The pass trace of a CompiledModule (`.record.trace`), a record (`.trace`), or a trace itself."""
    return getattr(getattr(source, "record", None), "trace", None) or getattr(source, "trace", None) or source


def layer_index(site: str) -> int | None:
    """The decoder layer a weight or site name belongs to (`model.layers.3.mlp` -> 3), None if none."""
    parts = site.split(".")
    for a, b in zip(parts, parts[1:]):
        if a in ("layers", "h", "layer", "blocks") and b.isdigit():
            return int(b)
    return None
