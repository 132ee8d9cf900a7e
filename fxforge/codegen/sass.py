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
- `sass_text` keeps each listing in Triton's cache directory (TRITON_CACHE_DIR, which CI keeps between runs):
  cuobjdump took most of a warm-cache build check's time.
- Not counted: `NOP`s and `@!UPT UIADD3 URZ, URZ, URZ, URZ` (a predicated-off uniform add that ptxas
  pads wgmma sequences with; it issues nothing).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
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
    """cuobjdump -sass of a cubin (the tool bundled with Triton), kept beside Triton's kernel cache by the hash of
    the cubin and the tool: disassembling costs ~0.5 s of CPU a kernel (a cached compile costs less), and the same
    cubin and tool always give the same listing."""
    import triton

    tool = triton.knobs.nvidia.cuobjdump.path
    cached = _cache_file(cubin, tool)
    if cached is not None and cached.is_file():
        return cached.read_text()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True, check=True).stdout
    if cached is not None:
        with contextlib.suppress(OSError):  # a read-only cache only costs the next disassembly
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, cached)  # atomic: concurrent builders never read a partial listing
    return text


def _cache_file(cubin: bytes, tool: str) -> Path | None:
    import triton

    try:
        stat = os.stat(tool)
        root = triton.knobs.cache.dir
    except (OSError, AttributeError):
        return None
    if not root:
        return None
    key = hashlib.sha256(cubin + f"{tool}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return Path(root) / "fxforge_sass" / f"{key}.sass"


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
