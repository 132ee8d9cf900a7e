"""Selection under a budget vs uniform schemes, on a zoo model (random weights, small config).

    PYTHONPATH=. python benchmarks/costmodel/budget.py --model bert --budget 0.12 [--method rtn]

For the budget plan and each uniform scheme: the mean relative L2 error of the output on held-out
inputs (not the calibration ones) and the weight bytes as stored. The plan should hold the budget on
the held-out inputs (<= 1.5x) and store no more bytes than the best uniform scheme that meets it.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

import fxforge
from fxforge import testing

SCHEMES = ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp")


def _err(compiled, model, inputs) -> float:
    errs = []
    for x in inputs:
        y = model(x)
        y = getattr(y, "last_hidden_state", y)
        yc = compiled(x)
        yc = getattr(yc, "last_hidden_state", yc)
        errs.append(((yc.float() - y.float()).norm() / y.float().norm()).item())
    return sum(errs) / len(errs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bert")
    ap.add_argument("--budget", type=float, default=0.12)
    ap.add_argument("--method", default="rtn")
    ap.add_argument("--seq", type=int, default=16)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = testing.build(args.model)
    calib = [testing.example_input(args.model, batch=2, seq=args.seq, seed=s) for s in range(4)]
    held = [testing.example_input(args.model, batch=2, seq=args.seq, seed=100 + s) for s in range(4)]
    out: dict = {"model": args.model, "budget": args.budget, "method": args.method}
    t = time.perf_counter()
    plan_c = fxforge.compile_aot(model, (calib[0],), budget=args.budget, calibration=calib, quantize_method=args.method)
    plan = plan_c.record.plan
    out["plan"] = {"seconds": round(time.perf_counter() - t, 1), "calib_error": plan["error"], "met": plan["met"],
                   "heldout_error": _err(plan_c, model, held), "weight_bytes": plan_c.record.weight_bytes,
                   "choices": {s: r["choice"] for s, r in plan["plan"].items()}, "predictor": plan["predictor"]}
    for scheme in ("dense", *SCHEMES):
        c = fxforge.compile_aot(model, (calib[0],), quantize=None if scheme == "dense" else scheme,
                                calibration=None if scheme == "dense" else calib, quantize_method=args.method)
        out[scheme] = {"heldout_error": _err(c, model, held), "weight_bytes": c.record.weight_bytes}
    meeting = [s for s in SCHEMES if out[s]["heldout_error"] <= args.budget]
    out["best_uniform_meeting_budget"] = min(meeting, key=lambda s: out[s]["weight_bytes"]) if meeting else None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
