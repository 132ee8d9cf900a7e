"""Compile time: fxforge (AOT and JIT) beside torch.compile (inductor, cold cache), same machine, same run.

Compile time = first call - one eager call (wall), and the first call's CPU time (steadier on a shared
machine). Model: LlamaForCausalLM, hidden 512, intermediate 1376, 8 heads, vocab 4096, input 1x128; fxforge is
also timed at 8, 16 and 32 layers to show how compile time grows. Every measurement runs in a fresh
process (cold caches: inductor's cache dir is a new temp dir and its FX graph cache is off).

    .venv/bin/python benchmarks/compile_time.py [--layers 8 16 32] [--inductor-layers 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
import torch

def cpu_seconds():
    # this process and its finished children (inductor runs the C++ compiler as subprocesses)
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

from fxforge import testing as zoo
layers, mode = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
model = zoo.llama(hidden=512, intermediate=1376, layers=layers, heads=8, kv_heads=8, vocab=4096)
ids = torch.randint(0, 4096, (1, 128))
with torch.no_grad():
    t = time.perf_counter(); ref = model(ids, use_cache=False).logits; eager_s = time.perf_counter() - t
    t = time.perf_counter(); cpu = cpu_seconds()
    if mode == "fxforge-aot":
        import fxforge
        compiled = fxforge.compile_aot(model, (ids,))
        out = compiled(ids).logits
    elif mode == "fxforge-jit":
        import fxforge
        compiled = fxforge.compile(model)
        out = compiled(ids, use_cache=False).logits
    else:
        import torch._inductor.config as cfg
        cfg.fx_graph_cache = False
        compiled = torch.compile(model)
        out = compiled(ids, use_cache=False).logits
    first_call_s = time.perf_counter() - t
    first_call_cpu_s = cpu_seconds() - cpu
    t = time.perf_counter()
    for _ in range(3):
        compiled(ids) if mode == "fxforge-aot" else compiled(ids, use_cache=False)
    steady_s = (time.perf_counter() - t) / 3
extra = {}
if mode.startswith("fxforge"):
    rec = compiled.fxforge_report.graphs[0]
    extra = {"capture_s": rec.capture_seconds, "passes_s": rec.compile_seconds, "ir_ops": len(rec.program.graph.ops)}
print(json.dumps({"mode": mode, "layers": layers, "compile_s": first_call_s - eager_s, "first_call_s": first_call_s,
                  "first_call_cpu_s": first_call_cpu_s,
                  "eager_call_s": eager_s, "steady_call_s": steady_s,
                  "max_abs_diff": (out - ref).abs().max().item(), **extra}))
"""


def measure(layers: int, mode: str) -> dict:
    # One compile thread: inductor compiles in this process and its C++ compiler children, whose CPU
    # time is counted too (the machine is shared; CPU seconds are steadier than wall seconds under load).
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-cold-"), TORCHINDUCTOR_COMPILE_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(layers), mode], capture_output=True, text=True, env=env,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} at {layers} layers failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--inductor-layers", type=int, nargs="*", default=[8])
    ap.add_argument("--out", default=f"benchmarks/results/compile_time-{platform.machine()}-{date.today()}.json")
    args = ap.parse_args()
    rows = []
    plan = [(n, m) for n in args.layers for m in ("fxforge-aot", "fxforge-jit")] + [(n, "inductor") for n in args.inductor_layers]
    for layers, mode in plan:
        t = time.perf_counter()
        row = measure(layers, mode)
        rows.append(row)
        print(f"{mode:12s} layers={layers:3d}  compile {row['compile_s']:7.2f} s  (first call {row['first_call_s']:.2f} s wall, "
              f"{row['first_call_cpu_s']:.2f} s CPU, "
              f"steady call {row['steady_call_s'] * 1e3:.0f} ms, max|diff| {row['max_abs_diff']:.1e})  [{time.perf_counter() - t:.0f} s wall]",
              flush=True)
    result = {"benchmark": "compile_time", "date": str(date.today()), "machine": platform.platform(),
              "cpu_count": os.cpu_count(), "python": platform.python_version(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
