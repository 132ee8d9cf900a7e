"""The pass trace: plain records of one pipeline run (IR text before/after each pass, time, statistics).

The passes produce it (`passes.manager.PassManager`), the runtime stores it in artifacts, codegen's
build check adds to it, and the CLI and the notebook read it; so it lives in `ir/`, which every layer
may import, and holds only plain data.

Decisions:
- `PassRecord`s hold plain data (str, float, dicts of JSON types) so `Trace.to_json()`/`from_json()`
  round-trip exactly; `jsonable` turns a pass's statistics into such data.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PassRecord:
    """One pass run: its name, IR text before and after, wall time, statistics and op counts."""

    name: str
    ir_before: str
    ir_after: str
    seconds: float
    stats: dict[str, Any]
    ops_before: dict[str, int]
    ops_after: dict[str, int]

    def diff(self) -> str:
        return "".join(difflib.unified_diff(
            self.ir_before.splitlines(keepends=True), self.ir_after.splitlines(keepends=True),
            fromfile=f"before {self.name}", tofile=f"after {self.name}"))


@dataclass
class Trace:
    """The records of one pipeline run, in order (a pass listed twice has two records)."""

    records: list[PassRecord] = field(default_factory=list)

    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def record(self, name: str, occurrence: int = 0) -> PassRecord:
        """The `occurrence`-th record of the pass called `name` (0: its first run, -1: its last)."""
        found = [r for r in self.records if r.name == name]
        try:
            return found[occurrence]
        except IndexError:
            raise KeyError(f"no run #{occurrence} of pass {name!r} in the trace; it ran: {self.names()}") from None

    def diff(self, name: str, occurrence: int = 0) -> str:
        """Unified diff of the IR text before/after that pass run ('' when it changed nothing)."""
        return self.record(name, occurrence).diff()

    def summary(self) -> str:
        lines = [f"{'pass':<16}{'ms':>9}{'ops':>7}  stats"]
        for r in self.records:
            n = sum(r.ops_after.values())
            lines.append(f"{r.name:<16}{r.seconds * 1e3:>9.2f}{n:>7}  {json.dumps(r.stats, sort_keys=True)}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"records": [asdict(r) for r in self.records]}, indent=1)

    @staticmethod
    def from_json(text: str) -> Trace:
        """Reads `to_json`'s output (or a bare list of records: `[]` is an empty trace)."""
        data = json.loads(text)
        records = data["records"] if isinstance(data, dict) else data
        return Trace([PassRecord(**r) for r in records])


def jsonable(value: Any) -> Any:
    """Statistics as plain JSON data: tuples become lists, keys strings, other objects their str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
