"""One fresh subprocess per architecture for the probes (`arch_probe.py`, `jit_probe.py`): a child prints its row as
`ROW <json>` (an exception becomes the row's error), the parent collects the rows and writes the table."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable


def probe_parser() -> argparse.ArgumentParser:
    """The options every probe takes: --archs (default: every `GQA_DECODERS` model), --out, --timeout per child, and
    --child (internal: run one architecture in this process)."""
    from fxforge.testing import GQA_DECODERS

    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", nargs="*", default=list(GQA_DECODERS))
    ap.add_argument("--out")
    ap.add_argument("--child")
    ap.add_argument("--timeout", type=int, default=900)
    return ap


def child_row(probe: Callable[..., dict], arch: str, *args) -> None:
    """Run `probe(arch, *args)` and print its row; report what broke, per architecture."""
    import warnings

    warnings.filterwarnings("ignore")
    try:
        row = probe(arch, *args)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        row = {"arch": arch, "error": f"{type(e).__name__}: {first}", "trace": traceback.format_exc()[-1500:]}
    print("ROW " + json.dumps(row))


def run_children(script: str, archs: list[str], child_args: Callable[[str], list[str]], timeout: int) -> list[dict]:
    """Each arch's row from `python script --child arch *child_args(arch)`, in order (a timeout is the row's error)."""
    rows = []
    for arch in archs:
        cmd = [sys.executable, script, "--child", arch, *child_args(arch)]
        with contextlib.suppress(subprocess.TimeoutExpired):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ)
            found = [json.loads(line[4:]) for line in out.stdout.splitlines() if line.startswith("ROW ")]
            rows.append(found[0] if found else {"arch": arch, "error": f"no result: {out.stderr.strip()[-300:]}"})
            print(json.dumps(rows[-1]), flush=True)
            continue
        rows.append({"arch": arch, "error": f"timeout {timeout}s"})
    return rows


def write_results(out: str, title: str, text: str, rows: list[dict]) -> None:
    """The markdown table (with the command and the time) at `out`, the rows beside it as .json."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = f"OMP_NUM_THREADS=1 python {' '.join(sys.argv)}"
    with open(out, "w") as f:
        f.write(f"# {title} ({stamp})\n\n`{cmd}`\n\n{text}\n")
    with open(out.removesuffix(".md") + ".json", "w") as f:
        json.dump(rows, f, indent=1)
