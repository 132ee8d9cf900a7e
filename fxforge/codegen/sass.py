"""Reading SASS (`cuobjdump -sass` text of a cubin): instruction counts of a kernel and of its main loop.

This module owns the parsing of cuobjdump's SASS listing; `fxforge.codegen.build` calls it on every cubin
it builds. `loop_instructions` is the figure behind "SASS instructions per weight" of the quantized decode
kernels (`templates/qlinear_decode.py`): the instructions of the steady-state K loop body, i.e. from a
backward branch's target up to and including the branch, divided (by the caller) by the weights one
thread consumes per iteration.

Decisions:
- The main loop is the backward branch with the longest body among those that issue an MMA (a GEMM's K loop,
  not a longer row loop before it: the decode kernel's norm / E4M3 prologue), else the longest: Triton's software
  pipeliner leaves one steady-state loop per `for` (prologue and epilogue are straight-line code); a kernel whose
  only loop is elsewhere (a row loop) still gets that loop's count, which is what the caller asked about there.
- Not counted: `NOP`s and `@!UPT UIADD3 URZ, URZ, URZ, URZ` (a predicated-off uniform add that ptxas
  pads wgmma sequences with; it issues nothing).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_OPCODE = re.compile(r"^(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_BRA = re.compile(r"\bBRA\s+(?:`?\(?\.?L?_?x?_?)?(0x[0-9a-f]+)")
_PADDING = "@!UPT UIADD3 URZ, URZ, URZ, URZ"
_MMA = re.compile(r"\b(HMMA|HGMMA|IMMA|IGMMA|QGMMA|UTC\w*MMA)\b")


def sass_text(cubin: bytes) -> str:
    """cuobjdump -sass of a cubin (the tool bundled with Triton)."""
    import triton

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        return subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout


def instructions(text: str, drop_padding: bool = True) -> list[tuple[int, str]]:
    """(address, instruction text) of every instruction in a SASS listing but NOPs (and the uniform
    padding unless `drop_padding` is False: the kernel-wide count keeps it, as the cost model's data has)."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        body = m.group(2)
        op = _OPCODE.match(body)
        if op is None or op.group(2).startswith("NOP") or (drop_padding and body.startswith(_PADDING)):
            continue
        out.append((int(m.group(1), 16), body))
    return out


def main_loop(text: str) -> list[str]:
    """The instructions of the longest loop body (backward-branch target .. the branch) that issues an MMA, else of
    the longest loop body, [] without a loop."""
    instrs = instructions(text)
    loops = []
    for addr, body in instrs:
        m = _BRA.search(body)
        if m is not None and int(m.group(1), 16) < addr:
            loops.append([b for a, b in instrs if int(m.group(1), 16) <= a <= addr])
    mma = [body for body in loops if any(_MMA.search(b) for b in body)]
    return max(mma or loops, key=len, default=[])


def loop_instructions(cubin: bytes) -> int:
    """Instructions in the kernel's main loop body (0 when it has no loop)."""
    return len(main_loop(sass_text(cubin)))
