"""Every quantization scheme x accuracy method (rtn, smooth, rotate, gptq, defaults) on two models.

    .venv/bin/python benchmarks/accuracy/methods.py [--windows 32] [--only w8a8]

Models (both from the checked-in byte-level fixture, nothing downloaded):
  stdlib-llama           the perplexity fixture (benchmarks/fixtures/stdlib-llama) as trained
  stdlib-llama-outliers  the same function with activation outliers BUILT in, exactly: in every layer
                         OUTLIER_CHANNELS input channels of q/k/v and gate/up get their RMSNorm weight
                         multiplied by OUTLIER_SCALE and the linears' matching columns divided by it,
                         and as many up_proj rows are multiplied (down_proj columns divided), so
                         down_proj's input has outlier channels too. fp32 outputs are unchanged (checked),
                         but the activations the quantizers see have the fixed-channel outliers of large
                         LLMs (LLM.int8, SmoothQuant), which the trained fixture (3 M params, 500 steps)
                         does not develop.
Rows: fp32, then for each scheme: rtn, smooth, rotate, auto (the scheme's defaults, `quant_methods.DEFAULTS`),
and torchao's CPU configs (int8 dyn-act + int8 weight, intx int4 g128) on the same windows.
Metrics: held-out perplexity, next-token (argmax) agreement with fp32 over every position, compile
time including calibration (the pass pipeline on one shared torch.export capture). Calibration: 8
windows of train text (1,024 tokens); eval: 16 held-out windows (2,048 positions). Writes
benchmarks/results/methods-<date>.{json,md}.
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
import perplexity  # noqa: E402

OUTLIER_CHANNELS, OUTLIER_SCALE = 4, 30.0
SCHEMES = ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp")
METHODS: dict[str, dict[str, Any]] = {
    "rtn": {"quantize_method": "rtn"},
    "smooth": {"quantize_method": "rtn", "smooth": True},
    "rotate": {"quantize_method": "rtn", "rotate": True},
    "gptq": {"quantize_method": "rtn", "gptq": True},
    "smooth+gptq": {"quantize_method": "rtn", "smooth": True, "gptq": True},
    "rotate+gptq": {"quantize_method": "rtn", "rotate": True, "gptq": True},
    "auto": {},
}


@torch.no_grad()
def inject_outliers(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy computing the same function with fixed-channel activation outliers (module docstring)."""
    m = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for layer in m.model.layers:
        for norm, readers in ((layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)),
                              (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj))):
            ch = torch.randperm(norm.weight.numel(), generator=gen)[:OUTLIER_CHANNELS]
            norm.weight[ch] *= OUTLIER_SCALE
            for lin in readers:
                lin.weight[:, ch] /= OUTLIER_SCALE
        ch = torch.randperm(layer.mlp.up_proj.weight.shape[0], generator=gen)[:OUTLIER_CHANNELS]
        layer.mlp.up_proj.weight[ch] *= OUTLIER_SCALE
        layer.mlp.down_proj.weight[:, ch] /= OUTLIER_SCALE
    return m


def gptq_available() -> bool:
    from fxforge.passes.quant_methods import available_methods

    return "gptq" in available_methods()


@torch.no_grad()
def evaluate(fn, windows: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    nll, preds = [], []
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        logits = fn(w[:, :-1]).float()
        nll.append(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                                                     reduction="none").double())
        preds.append(logits.argmax(-1).reshape(-1))
    return torch.cat(nll).mean().item(), torch.cat(preds)


def capture(model, example: torch.Tensor):
    """One torch.export capture per model (30 s on a busy CPU); every row compiles a copy of it."""
    from fxforge.frontend.export import capture_export

    return capture_export(model.eval(), (example,), None, dynamic=True)


def run_row(captured, options, windows, calib, batch, ref_preds) -> dict[str, Any]:
    from fxforge.config import CompileConfig
    from fxforge.ir import evaluate as ir_evaluate

    try:
        from fxforge.pipeline import compile_lowered
    except ImportError:  # before the pipeline module landed
        from fxforge.compiler import compile_lowered

    from fxforge.ir.graph import Weight
    from fxforge.ir.parser import parse_graph
    from fxforge.ir.printer import print_graph

    g0 = captured.lowered.graph
    lowered = copy.copy(captured.lowered)
    lowered.graph = parse_graph(print_graph(g0), {k: Weight(w.data.clone()) for k, w in g0.weights.items()})
    t0 = time.perf_counter()
    calibration = [[w[None, :-1]] for w in calib] if options.get("quantize") else None  # nothing reads it otherwise
    record = compile_lowered(lowered, CompileConfig(executor="reference", **options), 0.0, 0, calibration=calibration)
    t1 = time.perf_counter()
    graph = record.program.graph
    loss, preds = evaluate(lambda x: ir_evaluate(graph, [x])[0], windows, batch)
    trace = record.trace
    plan = {r.name: r.stats.get("plan") for r in trace.records if r.name in ("rotate", "smooth")}
    return {"ppl": math.exp(loss), "agreement": (preds == ref_preds).double().mean().item(),
            "compile_s": round(t1 - t0, 1), "plan": plan}


def run_model(name: str, model, windows, calib, batch: int, only: str, torchao: bool,
              schemes: tuple[str, ...] = SCHEMES, wanted: tuple[str, ...] = tuple(METHODS), save=None) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    save = save or (lambda rows: None)
    loss, ref_preds = evaluate(lambda x: model(x, use_cache=False).logits, windows, batch)
    rows["fp32"] = {"ppl": math.exp(loss), "agreement": 1.0, "compile_s": 0.0}
    captured = capture(model, windows[:batch, :-1])
    rows["fxforge fp32"] = run_row(captured, {}, windows, calib, batch, ref_preds)
    methods = {k: v for k, v in METHODS.items() if k in wanted and ("gptq" not in k or gptq_available())}
    for scheme in schemes:
        for method, opts in methods.items():
            row = f"{scheme} {method}"
            if only and only not in row:
                continue
            print(f"{name}: {row} ...", flush=True)
            try:
                rows[row] = run_row(captured, {"quantize": scheme, **opts}, windows, calib, batch, ref_preds)
            except Exception as e:  # in the table, not hidden
                rows[row] = {"error": f"{type(e).__name__}: {e}"[:300]}
            print("   ", rows[row], flush=True)
            save(rows)  # partial results survive an interrupted run
    if torchao:
        for label, make in perplexity.torchao_configs():
            if label not in ("torchao int8 dyn-act + int8 weight", "torchao intx int4 weight-only asym g128"):
                continue
            try:
                from torchao.quantization import quantize_

                m = copy.deepcopy(model)
                t0 = time.perf_counter()
                quantize_(m, make(), filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and "lm_head" not in fqn)
                t1 = time.perf_counter()
                loss, preds = evaluate(lambda x: m(x, use_cache=False).logits, windows, batch)
                rows[label] = {"ppl": math.exp(loss), "agreement": (preds == ref_preds).double().mean().item(),
                               "compile_s": round(t1 - t0, 1)}
            except Exception as e:
                rows[label] = {"error": f"does not run on CPU: {type(e).__name__}: {e}"[:300]}
    return rows


def markdown(res: dict[str, Any]) -> str:
    out = [f"# Accuracy methods: every scheme x method ({res['date']})", "",
           f"Eval: {res['windows']} held-out windows x {res['length']} bytes ({res['positions']} next-byte positions); "
           f"calibration: {res['calibration']} train windows. Agreement: fraction of positions whose argmax equals fp32's. "
           "Time: compile incl. calibration and every method (reference executor, 2 shared cores).", ""]
    for model, rows in res["models"].items():
        out += [f"## {model}", "", "| row | ppl | Δppl | next-token agreement | compile s | plan |", "|---|---:|---:|---:|---:|---|"]
        base = rows["fp32"]["ppl"]
        for row, r in rows.items():
            if "error" in r:
                out.append(f"| {row} | {r['error']} | | | | |")
                continue
            plan = "; ".join(f"{k}: {v}" for k, v in (r.get("plan") or {}).items())
            out.append(f"| {row} | {r['ppl']:.4f} | {r['ppl'] - base:+.4f} | {r['agreement']:.4f} | {r['compile_s']} | {plan} |")
        out.append("")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--calibration", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--only", default="")
    ap.add_argument("--models", default="stdlib-llama,stdlib-llama-outliers")
    ap.add_argument("--no-torchao", action="store_true")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tag", default="", help="suffix of the results file name (runs split over processes)")
    ap.add_argument("--out", type=Path, default=perplexity.RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    base = perplexity.load_fixture(perplexity.FIXTURE)
    windows = data.heldout_windows(args.windows, args.length)
    calib = data.calibration_windows(args.calibration, args.length)
    models = {"stdlib-llama": base, "stdlib-llama-outliers": inject_outliers(base)}
    with torch.no_grad():
        x = windows[:4, :-1]
        diff = (models["stdlib-llama-outliers"](x).logits - base(x).logits).abs().max().item()
    print(f"outlier model vs fixture: max |Δlogit| {diff:.2e}")
    res = {"date": dt.date.today().isoformat(), "windows": args.windows, "length": args.length,
           "positions": args.windows * args.length, "calibration": args.calibration,
           "outlier_model_max_abs_logit_diff": diff, "models": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"methods-{res['date']}{'-' + args.tag if args.tag else ''}"

    def save(name: str, rows: dict[str, Any]) -> None:
        res["models"][name] = rows
        stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(res))

    for name in args.models.split(","):
        save(name, run_model(name, models[name], windows, calib, args.batch, args.only, not args.no_torchao,
                             tuple(args.schemes.split(",")), tuple(args.methods.split(",")),
                             save=lambda rows, name=name: save(name, rows)))
    print(markdown(res))


if __name__ == "__main__":
    main()
