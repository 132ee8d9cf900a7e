"""The pass trace: plain records of one pipeline run (IR text before/after each pass, time, statistics).

The passes produce it (`passes.manager.PassManager`), the runtime stores it in artifacts, codegen's
build check adds to it, and the CLI and the notebook read it; so it lives in `ir/`, which every layer
may import, and holds only plain data.

Decisions:
- `PassRecord`s hold plain data (str, float, dicts of JSON types) so `Trace.to_json()`/`from_json()`
  round-trip exactly; `jsonable` turns a pass's statistics into such data.
- The IR texts may be given unprinted, as `printer.GraphText` snapshots (the pass manager does:
  printing every pass's IR was linear in depth for traces nobody reads): `ir_before`/`ir_after`
  print them when first read and keep the string, so what is read is the same text.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from fxforge.ir.printer import GraphText

IRText = str | GraphText  # a printed IR text, or a snapshot printed when first read


class PassRecord:
    """One pass run: its name, IR text before and after, wall time, statistics and op counts."""

    FIELDS = ("name", "ir_before", "ir_after", "seconds", "stats", "ops_before", "ops_after")

    def __init__(self, name: str, ir_before: IRText, ir_after: IRText, seconds: float, stats: dict[str, Any],
                 ops_before: dict[str, int], ops_after: dict[str, int]) -> None:
        self.name, self._before, self._after, self.seconds = name, ir_before, ir_after, seconds
        self.stats, self.ops_before, self.ops_after = stats, ops_before, ops_after

    @property
    def ir_before(self) -> str:
        if not isinstance(self._before, str):
            self._before = str(self._before)
        return self._before

    @property
    def ir_after(self) -> str:
        if not isinstance(self._after, str):
            self._after = str(self._after)
        return self._after

    def with_name(self, name: str, seconds: float, stats: dict[str, Any]) -> PassRecord:
        """A record of a check that leaves the IR as this record left it (its IR after, unprinted if it is)."""
        return PassRecord(name, self._after, self._after, seconds, stats, dict(self.ops_after), dict(self.ops_after))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PassRecord) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"PassRecord({self.name!r}, {self.seconds:.4f} s, stats={self.stats!r})"

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
        return json.dumps({"records": [r.to_dict() for r in self.records]}, indent=1)

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
