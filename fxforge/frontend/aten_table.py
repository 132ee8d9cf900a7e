"""The one table from ATen ops to fxforge ops: `LOWERINGS`, merged from the lowering modules.

Each entry is a small function `lower(b, *args, **kwargs)` registered for one or more ATen
overloads with `@lowers(...)` in its module; args arrive as aten's schema gives them, with tensors
already turned into IR Values and symbolic sizes into sympy. A lowering returns a Value, a tuple of
Values (ops with several results; `None` for a result it does not compute, which makes a use of
that result send the node to an extern), or `None` for ops with no value (asserts). A lowering
that cannot express a particular call raises `Unsupported`, and the node becomes an `extern`.
Shape-changing views take their target shape from the node's metadata, so `-1` is already resolved.

Decisions: the modules (`aten_pointwise`, `aten_structural`, `aten_multi`) each fill their own
table and share only `aten_common`; this module merges them explicitly, later tables winning, so
there is no import cycle and no registration by import side effect.
"""

from __future__ import annotations

from fxforge.frontend import aten_cache, aten_multi, aten_pointwise, aten_structural
from fxforge.frontend.aten_common import Lowering

LOWERINGS: dict[object, Lowering] = {**aten_pointwise.TABLE, **aten_structural.TABLE, **aten_multi.TABLE,
                                     **aten_cache.TABLE}
IN_PLACE = aten_pointwise.IN_PLACE  # in-place lowerings that need a tensor of the graph's own (fx_to_ir checks)

__all__ = ["IN_PLACE", "LOWERINGS"]
