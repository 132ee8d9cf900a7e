"""Block formats: KV-cache formats x blocks with and without K-sort, and the MX / NVFP4 weight+activation schemes.

    .venv/bin/python benchmarks/accuracy/block_formats.py [--windows 16] [--formats bfp4,bfp8,fp8,int8] [--blocks 16,32,64]

Models (the checked-in byte-level fixture, nothing downloaded):
  stdlib-llama           the perplexity fixture (4 layers, 4 query / 2 KV heads, head_dim 64)
  stdlib-llama-kplanted  the same function with K-cache outliers planted (`fxforge.testing.plant_k_outliers`:
                         per layer and KV head 4 RoPE pairs of W_k rows x16, W_q rows /16; fp32 logits unchanged)
Rows: fp32; every KV format x block with k_sort off and auto (teacher-forced: K after RoPE and V
quantize-dequantized as the cache stores them); on the fixture, the MX / NVFP4 schemes (weights and
activations, GPTQ with calibration: the defaults). Metrics: bits per byte (held-out next-byte NLL / ln 2)
and its change over fp32, next-byte argmax agreement with fp32, KV bytes per token (all layers, K + V,
measured from the stored format by the kv_cache pass) beside fp16's, and for auto how many KV heads kept
their permutation. Calibration: 8 train windows. Writes benchmarks/results/block-formats-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
import methods  # noqa: E402
import perplexity  # noqa: E402

MX_SCHEMES = ("mxfp8", "mxint8", "mxfp6", "mxfp4", "nvfp4")
LN2 = math.log(2)


def run_row(captured, options: dict[str, Any], windows, calib, batch: int, ref_preds) -> dict[str, Any]:
    from fxforge.config import CompileConfig
    from fxforge.ir import evaluate as ir_evaluate
    from fxforge.ir.graph import Weight
    from fxforge.ir.parser import parse_graph
    from fxforge.ir.printer import print_graph
    from fxforge.pipeline import compile_lowered

    g0 = captured.lowered.graph
    lowered = copy.copy(captured.lowered)
    lowered.graph = parse_graph(print_graph(g0), {k: Weight(w.data.clone()) for k, w in g0.weights.items()})
    t0 = time.perf_counter()
    reads = options.get("quantize") or options.get("k_sort") != "off"  # calibration nobody reads is refused
    calibration = [[w[None, :-1]] for w in calib] if reads else None
    record = compile_lowered(lowered, CompileConfig(executor="reference", **options), 0.0, 0, calibration=calibration)
    seconds = time.perf_counter() - t0
    graph = record.program.graph
    loss, preds = methods.evaluate(lambda x: ir_evaluate(graph, [x])[0], windows, batch)
    row: dict[str, Any] = {"bpb": loss / LN2, "agreement": (preds == ref_preds).double().mean().item(),
                           "compile_s": round(seconds, 1)}
    names = [r.name for r in record.trace.records]
    if "kv_cache" in names:
        kv = record.trace.record("kv_cache").stats
        row["kv_bytes_per_token"], row["kv_bytes_per_token_fp16"] = kv["bytes_per_token"], kv["bytes_per_token_fp16"]
    if "ksort" in names:
        layers = record.trace.record("ksort").stats.get("layers", {})
        heads = [h for layer in layers.values() for h in layer.get("heads", {}).values()]
        row["ksort_kept"] = f"{sum(h['kept'] for h in heads)}/{len(heads)}"
        row["ksort_error"] = {"off": sum(h["error_off"] for h in heads), "on": sum(h["error_on"] for h in heads)}
    return row


def run_model(name: str, model, windows, calib, args, mx: bool, save) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    loss, ref_preds = methods.evaluate(lambda x: model(x, use_cache=False).logits, windows, args.batch)
    rows["fp32"] = {"bpb": loss / LN2, "agreement": 1.0}
    captured = methods.capture(model, windows[:args.batch, :-1])
    todo = [(f"kv {f} b{b} ksort={k}", {"kv_cache": f, "kv_block": int(b), "k_sort": k})
            for f in args.formats.split(",") if f for b in args.blocks.split(",") for k in args.ksort.split(",")]
    if mx:
        how = {"auto": {}, "rtn": {"quantize_method": "rtn"}}[args.mx_method]
        todo += [(f"{s} (W+A, {args.mx_method})", {"quantize": s, **how}) for s in args.mx.split(",")]
    for label, options in todo:
        print(f"{name}: {label} ...", flush=True)
        try:
            rows[label] = run_row(captured, options, windows, calib, args.batch, ref_preds)
        except Exception as e:  # in the table, not hidden
            rows[label] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print("   ", rows[label], flush=True)
        save(rows)
    return rows


def markdown(res: dict[str, Any]) -> str:
    out = [f"# Block formats: KV-cache formats, K-sort, MX/NVFP4 schemes ({res['date']})", "",
           f"Eval: {res['windows']} held-out windows x {res['length']} bytes; calibration {res['calibration']} train windows. "
           "bpb: bits per byte; Δ%: relative to fp32's bpb; agreement: next-byte argmax equal to fp32's. "
           "KV B/tok: bytes per token of the K+V cache over all layers, measured from the stored format (fp16: "
           f"{res.get('kv_fp16', '?')}). Reference executor, teacher-forced.", ""]
    for model, rows in res["models"].items():
        base = rows["fp32"]["bpb"]
        out += [f"## {model}", "", "| row | bpb | Δ% | agreement | KV B/tok | K-sort kept | calibrated logit err off→on |",
                "|---|---:|---:|---:|---:|---:|---|"]
        for row, r in rows.items():
            if "error" in r:
                out.append(f"| {row} | {r['error']} | | | | | |")
                continue
            err = r.get("ksort_error")
            err_s = f"{err['off']:.4f} → {err['on']:.4f}" if err else ""
            out.append(f"| {row} | {r['bpb']:.4f} | {100 * (r['bpb'] / base - 1):+.2f} | {r['agreement']:.4f} | "
                       f"{r.get('kv_bytes_per_token', '')} | {r.get('ksort_kept', '')} | {err_s} |")
        out.append("")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--calibration", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--formats", default="bfp4,bfp8,fp8,int8")
    ap.add_argument("--blocks", default="16,32,64")
    ap.add_argument("--models", default="stdlib-llama,stdlib-llama-kplanted")
    ap.add_argument("--ksort", default="off,auto")
    ap.add_argument("--no-mx", action="store_true")
    ap.add_argument("--mx", default=",".join(MX_SCHEMES))
    ap.add_argument("--mx-method", default="auto", choices=("auto", "rtn"), help="auto: the defaults (GPTQ with calibration)")
    ap.add_argument("--out", type=Path, default=perplexity.RESULTS)
    ap.add_argument("--tag", default="", help="suffix of the results file name (runs split over processes)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from fxforge.testing import plant_k_outliers

    base = perplexity.load_fixture(perplexity.FIXTURE)
    models = {"stdlib-llama": base, "stdlib-llama-kplanted": plant_k_outliers(copy.deepcopy(base))}
    windows = data.heldout_windows(args.windows, args.length)
    calib = data.calibration_windows(args.calibration, args.length)
    with torch.no_grad():
        x = windows[:4, :-1]
        diff = (models["stdlib-llama-kplanted"](x).logits - base(x).logits).abs().max().item()
    print(f"planted model vs fixture: max |Δlogit| {diff:.2e}")
    cfg = base.config
    res = {"date": dt.date.today().isoformat(), "windows": args.windows, "length": args.length,
           "calibration": args.calibration, "planted_model_max_abs_logit_diff": diff,
           "kv_fp16": 2 * 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim, "models": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"block-formats-{res['date']}{'-' + args.tag if args.tag else ''}"

    def save(name: str, rows: dict[str, Any]) -> None:
        res["models"][name] = rows
        stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(res))

    for name in args.models.split(","):
        save(name, run_model(name, models[name], windows, calib, args, mx=not args.no_mx and name == "stdlib-llama",
                             save=lambda rows, name=name: save(name, rows)))
    print(markdown(res))


if __name__ == "__main__":
    main()
