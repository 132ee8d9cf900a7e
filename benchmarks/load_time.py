"""`fxforge.load` + first call in fresh processes, two source trees side by side (issue #13, item 6).

Each tree builds the 8-layer h512 Llama artifact (intermediate 1376, 8 heads, vocab 4096, reference
executor, ~118 MB of f32 weights; same seed) with its own code, then the script alternates fresh processes of each tree (`--trees main=/work/main
branch=.`; each child runs with PYTHONPATH set to its tree), `--runs` times each. In every child torch,
fxforge and transformers are imported first (not counted; transformers' import is ~1 s and is paid by
any process that returns its output classes), then `fxforge.load(art)` and the first call on a 1x16
input are timed. `--cold-hf` leaves transformers out of the pre-imports, so its import is counted
(the output spec names `transformers.modeling_outputs.CausalLMOutputWithPast`). Medians per tree.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load_time.py [--runs 7] [--trees main=/work/main branch=.]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

BUILD = r"""
import sys, torch, fxforge
from fxforge import testing as zoo
torch.manual_seed(0)
model = zoo.llama(hidden=512, intermediate=1376, layers=8, heads=8, kv_heads=8, vocab=4096)
fxforge.compile_aot(model, (torch.randint(0, 4096, (1, 16)),), executor="reference").save(sys.argv[1])
"""

LOAD = r"""
import json, sys, time
import torch, fxforge
if sys.argv[2] == "warm":
    import transformers
ids = torch.randint(0, 4096, (1, 16))
c = time.process_time()
t = time.perf_counter(); m = fxforge.load(sys.argv[1]); t1 = time.perf_counter(); m(ids); t2 = time.perf_counter()
cpu = time.process_time() - c
try:
    from fxforge.ir.reader import STATS
    reader = dict(STATS)
except ImportError:
    reader = None
print(json.dumps({"load_s": t1 - t, "first_call_s": t2 - t1, "total_s": t2 - t, "cpu_s": cpu, "reader": reader,
                  "lark_imported_for_parse": "fxforge.ir.parser" in sys.modules and reader is None}))
"""


def child(code: str, tree: str, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(Path(tree).resolve()))
    # -P and a neutral cwd: the tree on PYTHONPATH is the fxforge imported (not the caller's cwd)
    proc = subprocess.run([sys.executable, "-P", "-c", code, *args], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--trees", nargs="+", default=["main=/work/main", "branch=."], help="name=path, alternated")
    ap.add_argument("--cold-hf", action="store_true", help="count transformers' import too")
    ap.add_argument("--out", default=f"benchmarks/results/load_time-{date.today()}.json")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    tmp = Path(tempfile.mkdtemp(prefix="fxforge-lt-"))
    arts = {name: str(tmp / name) for name in trees}
    for name, tree in trees.items():  # each tree loads the artifact it writes (same model, same seed)
        child(BUILD, tree, arts[name])
    mode = "cold" if args.cold_hf else "warm"
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            runs[name].append(child(LOAD, tree, arts[name], mode))
    result = {"benchmark": "load_time", "date": str(date.today()), "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "transformers_import_counted": args.cold_hf,
              "command": " ".join(["python", "benchmarks/load_time.py", *sys.argv[1:]]),
              "artifact_weights_bytes": (Path(arts[args.trees[-1].split("=", 1)[0]]) / "weights.safetensors").stat().st_size,
              "trees": {}}
    for name, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("load_s", "first_call_s", "total_s", "cpu_s")}
        result["trees"][name] = {"path": trees[name], "median": med, "runs": rows}
        each = ", ".join(f"{r['total_s']:.3f}" for r in rows)
        print(f"{name:8s} load + first call: median {med['total_s']:.3f} s (load {med['load_s']:.3f} s, first call "
              f"{med['first_call_s']:.3f} s; CPU time of all threads {med['cpu_s']:.3f} s); all: {each}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
