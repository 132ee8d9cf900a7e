"""On a GPU: every test model through fxforge's `triton` executor, checked against eager and timed
beside eager and torch.compile (inductor), in one process. Writes JSON to $OUT (or --out).

    python benchmarks/gpu/bench_models.py --out $OUT/models.json

fp16 models at batch 4, seq 256 (the zoo's small configs scaled up a little); timings are medians of
CUDA-event-timed calls after warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import torch

import fxforge
from fxforge import testing as zoo

SIZES = {"llama": dict(hidden=512, layers=4, heads=8, kv_heads=4, intermediate=1376, vocab=4096),
         "mistral": dict(hidden=512, layers=4, heads=8, kv_heads=4, intermediate=1376, vocab=4096),
         "gpt2": dict(hidden=512, layers=4, heads=8, vocab=4096), "bert": dict(hidden=512, layers=4, heads=8, intermediate=2048, vocab=4096),
         "mlp": dict(dim=512, hidden=2048)}


def timed(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def logits(out):
    return out if isinstance(out, torch.Tensor) else (out.logits if hasattr(out, "logits") else out[0])


def bench(name: str, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    model = zoo.MODELS[name](**SIZES[name]).to("cuda", dtype).eval()
    x = (torch.randn(4, 256, 512, device="cuda", dtype=dtype) if name == "mlp"
         else torch.randint(3, 4096, (4, 256), device="cuda"))
    kwargs = {} if name in ("mlp", "bert") else {"use_cache": False}
    row: dict = {"model": name, "dtype": str(dtype)}
    with torch.no_grad():
        ref = logits(model(x, **kwargs))
        t = time.perf_counter()
        fx = fxforge.compile_aot(model, (x,), kwargs, executor="triton")
        out = logits(fx(x))
        row["fxforge_compile_s"] = time.perf_counter() - t
        row["max_abs_diff"] = (out.float() - ref.float()).abs().max().item()
        row["max_abs_ref"] = ref.float().abs().max().item()
        ind = torch.compile(model)
        t = time.perf_counter()
        logits(ind(x, **kwargs))
        row["inductor_compile_s"] = time.perf_counter() - t
        row["eager_ms"] = timed(lambda: model(x, **kwargs))
        row["fxforge_ms"] = timed(lambda: fx(x))
        row["inductor_ms"] = timed(lambda: ind(x, **kwargs))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", nargs="*", default=list(SIZES))
    args = ap.parse_args()
    rows = []
    for name in args.models:
        try:
            rows.append(bench(name, torch.float16))
        except Exception as e:  # record and go on: one broken model must not cost the whole device lease
            rows.append({"model": name, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "gpu_models", "date": str(date.today()), "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "python": platform.python_version(), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
