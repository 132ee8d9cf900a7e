"""ATen lowering of the in-place KV-cache write: `aten.index_copy_` on a cache -> `cache_write`
(`ir/cache_ops.py`). Filed into this module's `TABLE` (merged by `aten_table.py`).

Decisions: fx_to_ir rebinds the written tensor to the op's result (`FxToIR._rebind_written`), so
every later read of the cache depends on the write. Which captures may write their inputs at all is
the capture's decision (`export.capture_export` refuses it; `kv_capture` allows the cache inputs).
"""

from __future__ import annotations

from fxforge.frontend.aten_common import Table, aten, registrar
from fxforge.frontend.builder import Builder, Unsupported

TABLE: Table = {}
lowers = registrar(TABLE)


@lowers(aten.index_copy_.default)
def _index_copy_(b: Builder, cache, dim, index, source):
    if not isinstance(dim, int) or cache.type.rank != 4 or dim % 4 != 2:
        raise Unsupported("index_copy_ other than a [B, H, L, D] cache write along L")
    return b.op("cache_write", cache, index, source, dim=2)
