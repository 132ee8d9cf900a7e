"""FFN skipping (the `ffn_skip` pass): share of FFN token-rows skipped vs bits per byte and next-token
agreement with the unskipped model, for each gate (linear, carry) beside the oracle, on two byte-level
Llamas trained on the stdlib's sources: the checked-in 4-layer fixture and a deeper 8-layer one trained
briefly and cached outside git (`deep_fixture.py`).

    .venv/bin/python benchmarks/accuracy/ffn_skip.py [--targets 0.08 0.12 0.16 0.2 0.25] [--models fixture deep]

Everything runs through `fxforge.compile_aot(model, ffn_skip=target, ffn_skip_gate=gate, calibration=...)`
on the reference executor, teacher forced (use_cache=False); the share skipped is read from the run-time
counters (`compiled.fxforge_report.ffn_skip`), never estimated. Calibration: 8 windows x 128 bytes of
TRAIN text; evaluation: 32 held-out windows x 128 bytes. Default options: first and last FFN protected,
warm-up 4 tokens. Writes benchmarks/results/ffn_skip-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
import deep_fixture  # noqa: E402
from perplexity import FIXTURE, RESULTS, load_fixture  # noqa: E402

GATES = ("linear", "quadratic", "carry", "oracle")


@torch.no_grad()
def evaluate(fn, windows: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    """Mean next-byte NLL (nats) and the argmax predictions of every position."""
    total, n, preds = 0.0, 0, []
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        logits = fn(w[:, :-1]).float()
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
        total += ce.item()
        n += w[:, 1:].numel()
        preds.append(logits.argmax(-1))
    return total / n, torch.cat(preds)


def run_row(model, gate: str, target: float, windows, calib, batch: int) -> dict[str, Any]:
    import fxforge

    t0 = time.perf_counter()
    c = fxforge.compile_aot(model, (windows[:2, :-1],), {"use_cache": False}, ffn_skip=target, ffn_skip_gate=gate,
                            calibration=[{"input_ids": w[None, :-1]} for w in calib], executor="reference")
    t1 = time.perf_counter()
    loss, preds = evaluate(lambda x: c(x, use_cache=False).logits, windows, batch)
    counters = c.fxforge_report.ffn_skip
    st = c.record.trace.record("ffn_skip").stats
    layers = {k: {"threshold": v.get("threshold"), "calib_share": v.get("calib_share"), "fit_r2": v.get("fit_r2"),
                  "gated": v.get("gated"), "quality": v.get("quality")} for k, v in st["layers"].items()}
    return {"gate": gate, "target": target, "nll": loss, "bpb": loss / math.log(2), "_preds": preds,
            "share_skipped": counters["share"], "rows": counters["rows"], "skipped": counters["skipped"],
            "per_layer": counters["per_layer"], "calibration": st["calibration"], "layers": layers,
            "compile_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1)}


def run_model(name: str, path: Path, targets: list[float], args) -> dict[str, Any]:
    model = load_fixture(path)
    meta = json.loads((path / "metadata.json").read_text())
    windows = data.heldout_windows(args.windows, args.length)
    calib = data.calibration_windows(args.calibration, args.length)
    base, base_preds = evaluate(lambda x: model(x, use_cache=False).logits, windows, args.batch)
    rows = []
    for gate in args.gates:
        for target in targets:
            print(f"{name} {gate} {target} ...", flush=True)
            r = run_row(model, gate, target, windows, calib, args.batch)
            r["agreement"] = float((r.pop("_preds") == base_preds).float().mean())
            r["bpb_increase"] = r["bpb"] / (base / math.log(2)) - 1
            print(f"  skipped {r['share_skipped']:.3f}  bpb {r['bpb']:.4f} ({100 * r['bpb_increase']:+.2f}%)  "
                  f"agreement {r['agreement']:.3f}", flush=True)
            rows.append(r)
    cfg = model.config
    return {"path": str(path), "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
            "intermediate": cfg.intermediate_size, "parameters": meta["parameters"], "steps": meta["steps"],
            "heldout_loss_at_training": meta["heldout_loss"], "base_bpb": base / math.log(2), "rows": rows}


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"# FFN skipping: share skipped vs bits per byte ({res['date']})", "",
             f"Machine: {m['platform']}, {m['threads']} threads, torch {m['torch']}, transformers {m['transformers']}. "
             f"Eval: {res['eval']['windows']} held-out windows x {res['eval']['length']} bytes, teacher forced; calibration "
             f"{res['eval']['calibration_windows']} windows of train text. Options: first and last FFN protected, "
             "warm-up 4 tokens. Share skipped = run-time counters over all FFN token-rows (protected blocks and "
             "warm-up rows included). Agreement = argmax next byte equal to the unskipped model's.", ""]
    for name, mod in res["models"].items():
        lines += [f"## {name}: {mod['layers']} layers, hidden {mod['hidden']}, {mod['parameters']:,} params, "
                  f"{mod['steps']} training steps; unskipped {mod['base_bpb']:.4f} bits/byte", "",
                  "| gate | target | skipped (counters) | bits/byte | Δ bpb | agreement | calib share | calib agreement |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mod["rows"]:
            cal = r["calibration"]
            lines.append(f"| {r['gate']} | {r['target']:.2f} | {r['share_skipped']:.3f} | {r['bpb']:.4f} | "
                         f"{100 * r['bpb_increase']:+.2f}% | {r['agreement']:.3f} | {cal['share_skipped']:.3f} | "
                         f"{cal.get('next_token_agreement', float('nan')):.3f} |")
        lines.append("")
    lines += ["## Findings", ""] + [f"- {f}" for f in res["findings"]]
    return "\n".join(lines) + "\n"


def findings(res: dict[str, Any]) -> list[str]:
    out = []
    for name, mod in res["models"].items():
        by = {(r["gate"], r["target"]): r for r in mod["rows"]}
        for t in sorted({r["target"] for r in mod["rows"]}):
            cells = [f"{g} {by[(g, t)]['share_skipped']:.3f} skipped at {100 * by[(g, t)]['bpb_increase']:+.2f}% bpb "
                     f"(agreement {by[(g, t)]['agreement']:.3f})" for g in GATES if (g, t) in by]
            out.append(f"{name}, target {t:.2f}: " + "; ".join(cells) + ".")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.08, 0.12, 0.16, 0.2, 0.25])
    ap.add_argument("--models", nargs="+", default=["fixture", "deep"])
    ap.add_argument("--gates", nargs="+", default=list(GATES), choices=GATES)
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--calibration", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)  # 2 threads on 2 busy cores spin: 50x slower
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="", help="suffix of the results file name (one run per model: ffn_skip-<date>-<tag>)")
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(args.threads)
    paths = {"fixture": FIXTURE, "deep": None}
    models = {}
    for name in args.models:
        path = paths[name] or deep_fixture.ensure()
        models[name] = run_model(name, path, args.targets, args)
    import transformers

    now = dt.datetime.now()
    res = {"date": now.strftime("%Y-%m-%d"), "timestamp": now.isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__,
                       "transformers": transformers.__version__},
           "eval": {"windows": args.windows, "length": args.length, "calibration_windows": args.calibration},
           "models": models}
    res["findings"] = findings(res)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (f"ffn_skip-{res['date']}" + (f"-{args.tag}" if args.tag else ""))
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
