"""Held-out perplexity of the stdlib-llama fixture under fxforge's quantization schemes, beside torchao.

    .venv/bin/pip install -r benchmarks/accuracy/requirements.txt   # torchao, for the comparison rows
    .venv/bin/python benchmarks/accuracy/perplexity.py

Everything is measured in one run on the same 64 fixed held-out windows of 128 bytes (data.heldout_windows,
use_cache=False); calibration is 8 windows of TRAIN text (data.calibration_windows). Writes
benchmarks/results/accuracy-<date>.json and .md. Rows:
  fp32 eager, fp32 through fxforge (must equal eager), fxforge w8a8-int8, w8a8-fp8, w4a16-int4 g128 / g32,
  w4a8-fp g32 (power-of-two group scales), w4a8-fp g32 + LoRC rank 8 / 16, and torchao's int8 weight-only,
  int8 dynamic activation + int8 weight, int4 weight-only (g128 / g32), where they run on a CPU.
lm_head stays high precision everywhere (fxforge's default; torchao is given the same filter).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "benchmarks" / "fixtures" / "stdlib-llama"
RESULTS = ROOT / "benchmarks" / "results"

# (row name, fxforge options)
FXFORGE_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("fxforge w8a8-int8", {"quantize": "w8a8-int8"}),
    ("fxforge w8a8-fp8", {"quantize": "w8a8-fp8"}),
    ("fxforge w4a16-int4 g128", {"quantize": "w4a16-int4", "quantize_group": 128}),
    ("fxforge w4a16-int4 g32", {"quantize": "w4a16-int4", "quantize_group": 32}),
    ("fxforge w4a8-fp g32", {"quantize": "w4a8-fp", "quantize_group": 32}),
    ("fxforge w4a8-fp g32 + LoRC r8", {"quantize": "w4a8-fp", "quantize_group": 32, "lorc_rank": 8}),
    ("fxforge w4a8-fp g32 + LoRC r16", {"quantize": "w4a8-fp", "quantize_group": 32, "lorc_rank": 16}),
]


def load_fixture(path: Path) -> torch.nn.Module:
    import transformers
    from safetensors.torch import load_file

    cfg = transformers.LlamaConfig.from_json_file(str(path / "config.json"))
    model = transformers.LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"fixture does not match the config: missing {missing}, unexpected {unexpected}")
    return model.float().eval()


@torch.no_grad()
def nll(fn, windows: torch.Tensor, batch: int) -> tuple[float, torch.Tensor, list[float]]:
    """Mean next-byte NLL (nats) over all windows, the logits of the first batch (for comparisons) and
    each window's mean NLL (for paired comparisons between rows)."""
    total, n, first, per_window = 0.0, 0, None, []
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        logits = fn(w[:, :-1]).float()
        if first is None:
            first = logits
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="none")
        ce = ce.view(w.shape[0], -1).double()
        total += ce.sum().item()
        n += ce.numel()
        per_window += [round(v, 6) for v in ce.mean(1).tolist()]
    return total / n, first, per_window


def paired(rows: dict[str, Any], a: str, b: str) -> str:
    """Paired comparison of two rows over the windows: mean NLL difference a - b ± its standard error,
    and on how many windows a is worse."""
    wa, wb = rows[a]["window_nll"], rows[b]["window_nll"]
    d = torch.tensor(wa, dtype=torch.float64) - torch.tensor(wb, dtype=torch.float64)
    se = d.std().item() / math.sqrt(len(d))
    sig = "significant at 2 s.e." if abs(d.mean().item()) > 2 * se else "NOT significant at 2 s.e."
    return f"Δnll {d.mean().item():+.5f} ± {se:.5f} (paired s.e., {sig}), worse on {(d > 0).sum().item()}/{len(d)} windows"


def theory_bits(scheme: str, group: int, lorc_rank: int, out_f: int, in_f: int) -> float:
    """Bits per weight of the format as documented in fxforge.ir.lowp_ops (scales and metadata included)."""
    if scheme in ("w8a8-int8", "w8a8-fp8"):
        bits = 8 + 32 / in_f  # one f32 scale per output row
    elif scheme == "w4a16-int4":
        bits = 4 + (16 + 8) / group  # f16 scale + uint8 zero point per group
    elif scheme == "w4a8-fp":
        bits = 4 + 8 / group + 32 / in_f  # uint8 power-of-two shift per group + f32 s_max per row
    else:
        raise ValueError(scheme)
    return bits + 16 * lorc_rank * (out_f + in_f) / (out_f * in_f)  # fp16 LoRC factors


def byte_report(stats: dict, model: torch.nn.Module) -> dict[str, Any]:
    layers = stats["layers"]
    numel = theory_bytes = 0
    for name, st in layers.items():
        out_f, in_f = model.get_submodule(name).weight.shape
        numel += out_f * in_f
        theory_bytes += out_f * in_f * theory_bits(st["scheme"], st["group"], st["lorc_rank"], out_f, in_f) / 8
    s = stats["summary"]
    return {
        "layers_quantized": s["layers_quantized"], "layers_skipped": sorted(stats["skipped"]),
        "weights_quantized": numel, "bytes_fp16": s["bytes_fp16_before"], "bytes_after": s["bytes_after"],
        "bytes_theory": round(theory_bytes), "bits_per_weight": 8 * s["bytes_after"] / numel,
        "bits_per_weight_theory": 8 * theory_bytes / numel, "ratio_vs_fp16": s["bytes_after"] / s["bytes_fp16_before"],
        "mean_layer_rel_error": s["mean_rel_error"], "max_layer_rel_error": s["max_rel_error"],
        "calib_output_rel_error": s.get("output_rel_error"),
        "groups": sorted({st["group"] for st in layers.values()}),
    }


def run_fxforge(model, options, windows, calib, batch) -> dict[str, Any]:
    import fxforge

    t0 = time.perf_counter()
    kwargs = dict(options)
    if kwargs.get("quantize"):
        kwargs["calibration"] = [(w[None, :-1],) for w in calib]
    compiled = fxforge.compile_aot(model, (windows[:batch, :-1],), **kwargs)
    t1 = time.perf_counter()
    loss, logits, per_window = nll(lambda x: compiled(x).logits, windows, batch)
    row = {"nll": loss, "window_nll": per_window, "compile_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1), "_logits": logits}
    if kwargs.get("quantize"):
        row["bytes"] = byte_report(compiled.record.trace.record("quantize").stats, model)
    return row


def torchao_configs() -> list[tuple[str, Any]]:
    import torchao.quantization as q
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType

    def intx4(group: int):
        return lambda: q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group), mapping_type=MappingType.ASYMMETRIC)

    tiled = "tile_packed_to_4d"
    return [
        ("torchao int8 weight-only", lambda: q.Int8WeightOnlyConfig()),
        ("torchao int8 dyn-act + int8 weight", lambda: q.Int8DynamicActivationInt8WeightConfig()),
        ("torchao int4 weight-only g128", lambda: q.Int4WeightOnlyConfig(group_size=128)),
        ("torchao int4 weight-only g128 (tile_packed_to_4d, bf16 model)",
         lambda: q.Int4WeightOnlyConfig(group_size=128, int4_packing_format=tiled)),
        ("torchao int4 weight-only g32 (tile_packed_to_4d, bf16 model)",
         lambda: q.Int4WeightOnlyConfig(group_size=32, int4_packing_format=tiled)),
        ("torchao intx int4 weight-only asym g128", intx4(128)),
        ("torchao intx int4 weight-only asym g32", intx4(32)),
    ]


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage of a (possibly torchao subclass) tensor: the sum of its inner tensors."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def run_torchao(model, make_config, windows, batch, dtype=torch.float32) -> dict[str, Any]:
    from torchao.quantization import quantize_

    m = copy.deepcopy(model).to(dtype)
    t0 = time.perf_counter()
    keep = lambda mod, fqn: isinstance(mod, torch.nn.Linear) and "lm_head" not in fqn
    names = [n for n, mod in m.named_modules() if keep(mod, n)]
    if make_config is not None:
        quantize_(m, make_config(), filter_fn=keep)
    t1 = time.perf_counter()
    loss, logits, per_window = nll(lambda x: m(x, use_cache=False).logits, windows, batch)
    weights = [m.get_submodule(n).weight for n in names]
    numel = sum(model.get_submodule(n).weight.numel() for n in names)
    quantized = [w for w in weights if hasattr(w, "__tensor_flatten__")]
    after = sum(tensor_bytes(w) for w in weights)
    b = {"layers_quantized": len(quantized), "weights_quantized": numel, "bytes_fp16": 2 * numel, "bytes_after": after,
         "bits_per_weight": 8 * after / numel, "bits_per_weight_theory": None, "ratio_vs_fp16": after / (2 * numel),
         "mean_layer_rel_error": None, "weight_types": sorted({type(w).__name__ for w in weights})}
    return {"nll": loss, "window_nll": per_window, "compile_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1),
            "_logits": logits, "bytes": b}


def fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def markdown(res: dict[str, Any]) -> str:
    m, fx = res["machine"], res["fixture"]
    lines = [
        f"# Accuracy: held-out perplexity of the stdlib-llama fixture ({res['date']})",
        "",
        f"Machine: {m['platform']} ({m['machine']}, {m['threads']} threads), Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, torchao {m['torchao']}, fxforge {m['fxforge']}.",
        f"Fixture: `{fx['path']}` ({fx['parameters']:,} params, {fx['weights_dtype']} weights, {fx['bytes']:,} bytes; "
        f"trained {fx['steps']} steps, held-out loss {fx['heldout_loss']:.4f} at training time). Text: CPython {fx['python']} "
        "stdlib sources, byte-level (vocab 256); the text and so every number here depends on the Python version.",
        f"Eval: {res['eval']['windows']} fixed held-out windows × {res['eval']['length']} bytes, use_cache=False; "
        f"calibration: {res['eval']['calibration_windows']} windows of train text. lm_head stays high precision in every row.",
        "",
        "| config | ppl | Δppl vs fp32 | Δ nats/byte | bits/weight (stats) | bits/weight (format) "
        "| quantized-linear bytes | × fp16 | mean layer rel err | calib logits rel err | time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = res["rows"]["fp32 eager"]["nll"]
    for name, r in res["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | | | | | | |")
            continue
        b = r.get("bytes")
        t = r.get("compile_s", 0) + r.get("eval_s", 0)
        lines.append(
            f"| {name} | {math.exp(r['nll']):.4f} | {math.exp(r['nll']) - math.exp(base):+.4f} | {r['nll'] - base:+.5f} | "
            f"{fmt(b and b['bits_per_weight'], '.3f')} | {fmt(b and b['bits_per_weight_theory'], '.3f')} | "
            f"{fmt(b and b['bytes_after'], ',')} | {fmt(b and b['ratio_vs_fp16'], '.3f')} | "
            f"{fmt(b and b['mean_layer_rel_error'], '.4f')} | {fmt(b and b.get('calib_output_rel_error'), '.4f')} | {t:.1f} |")
    lines += ["", f"fp16 bytes of the quantized linears: {res['fp16_linear_bytes']:,}. "
              "Format bits/weight: int8/fp8 8 + 32/in (f32 row scale); int4 4 + (16 + 8)/g (f16 scale + uint8 zero per group); "
              "w4a8-fp 4 + 8/g + 32/in (uint8 shift per group, f32 row s_max); LoRC adds fp16 factors 16·r·(out+in)/(out·in). "
              "torchao bytes: the storage of its weight tensor subclasses (IntxUnpackedToInt8Tensor keeps int4 values unpacked in int8). "
              "Mean layer rel err and calib logits rel err (||Δ|| / ||·|| of the logits on the 8 calibration windows) come from fxforge's "
              "quantize pass stats. On this CPU fxforge runs compiled graphs on its reference executor (torch, op by op).", "",
              f"fp32 through fxforge vs eager: max |Δlogit| {res['fxforge_fp32_vs_eager']['max_abs_logit_diff']:.3g}, "
              f"Δnll {res['fxforge_fp32_vs_eager']['nll_diff']:.3g} ({res['fxforge_fp32_vs_eager']['verdict']}).", "",
              "## Findings", ""]
    lines += [f"- {f}" for f in res["findings"]]
    return "\n".join(lines) + "\n"


def findings(rows: dict[str, Any]) -> list[str]:
    def ppl(name):
        r = rows.get(name)
        return None if r is None or "error" in r else math.exp(r["nll"])

    out = []
    base = ppl("fp32 eager")
    fp, i32, i128 = ppl("fxforge w4a8-fp g32"), ppl("fxforge w4a16-int4 g32"), ppl("fxforge w4a16-int4 g128")
    if fp and i32:
        verdict = "no more" if fp <= i32 else "MORE"
        out.append(f"W4A8-FP g32 loses {verdict} perplexity than INT4 weight-only g32 at the same group size: "
                   f"{fp - base:+.4f} vs {i32 - base:+.4f} ppl over fp32 ({base:.4f}); W4A8-FP also quantizes the "
                   f"activations to FP8 and constrains group scales to powers of two, INT4 g32 is asymmetric with f16 scales. "
                   f"W4A8-FP g32 vs INT4 g32: {paired(rows, 'fxforge w4a8-fp g32', 'fxforge w4a16-int4 g32')}.")
    tao = ppl("torchao intx int4 weight-only asym g32")
    if fp and tao:
        out.append(f"torchao's int4 weight-only g32 (asymmetric, runs on CPU as IntxWeightOnlyConfig): {tao - base:+.4f} ppl; "
                   f"W4A8-FP g32 vs it: {paired(rows, 'fxforge w4a8-fp g32', 'torchao intx int4 weight-only asym g32')}.")
    if fp and i128:
        out.append(f"Against INT4 weight-only g128 (the common default): W4A8-FP g32 {fp - base:+.4f} vs INT4 g128 {i128 - base:+.4f} ppl; "
                   f"{paired(rows, 'fxforge w4a8-fp g32', 'fxforge w4a16-int4 g128')}.")
    for r in (8, 16):
        lo = ppl(f"fxforge w4a8-fp g32 + LoRC r{r}")
        if fp and lo:
            gap = fp - base
            rec = (fp - lo) / gap if gap > 0 else float("nan")
            out.append(f"LoRC rank {r} on W4A8-FP g32: ppl {lo:.4f} vs {fp:.4f} without, recovering {100 * rec:.0f}% of the gap to fp32"
                       + (" (it does recover part of the gap)" if rec > 0 else " (it does NOT recover any of the gap)")
                       + f"; LoRC r{r} vs none: {paired(rows, f'fxforge w4a8-fp g32 + LoRC r{r}', 'fxforge w4a8-fp g32')}.")
    def oerr(name):
        r = rows.get(name) or {}
        return (r.get("bytes") or {}).get("calib_output_rel_error")

    names = ["fxforge w4a16-int4 g128", "fxforge w4a16-int4 g32", "fxforge w4a8-fp g32", "fxforge w4a8-fp g32 + LoRC r8",
             "fxforge w4a8-fp g32 + LoRC r16"]
    if all(oerr(n) is not None for n in names):
        out.append("Logit error on the calibration windows (a more sensitive, lower-noise measure than perplexity here): "
                   + ", ".join(f"{n.removeprefix('fxforge ')} {oerr(n):.4f}" for n in names) + ".")
    ppls = [ppl(n) for n in rows if n.startswith(("fxforge w4", "torchao intx")) and ppl(n)]
    if base and ppls:
        out.append(f"Resolution: the 4-bit rows span {min(ppls) - base:+.4f} to {max(ppls) - base:+.4f} ppl around fp32 {base:.4f}. "
                   "Where a gap to fp32 is this small, which way a given quantization's rounding happens to push the held-out loss "
                   "matters as much as how large the error is (some rows come out below fp32), so differences of a few 1e-3 ppl "
                   "between rows say little about the schemes; the paired s.e. covers only the choice of windows, not that.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", type=Path, default=FIXTURE)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--calibration", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-torchao", action="store_true")
    ap.add_argument("--render", type=Path, help="re-render the .md (and findings) of an existing results JSON, measure nothing")
    ap.add_argument("--only", default="", help="run only the rows whose name contains this (fp32 eager always runs)")
    args = ap.parse_args()

    if args.render:
        res = json.loads(args.render.read_text())
        res["findings"] = findings(res["rows"])
        args.render.write_text(json.dumps(res, indent=2) + "\n")
        args.render.with_suffix(".md").write_text(markdown(res))
        print(markdown(res))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    model = load_fixture(args.fixture)
    meta = json.loads((args.fixture / "metadata.json").read_text())
    windows = data.heldout_windows(args.windows, args.length)
    calib = data.calibration_windows(args.calibration, args.length)
    rows: dict[str, Any] = {}

    def record(name: str, fn) -> None:
        if args.only and args.only not in name and name != "fp32 eager":
            return
        print(f"{name} ...", flush=True)
        try:
            rows[name] = fn()
            r = rows[name]
            print(f"  ppl {math.exp(r['nll']):.4f}  ({r.get('compile_s', 0)}s + {r.get('eval_s', 0)}s)", flush=True)
        except Exception as e:  # reported in the table, not hidden
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            rows[name] = {"error": msg, "traceback": traceback.format_exc(limit=4)}
            print(f"  FAILED {msg}", flush=True)

    def eager():
        t0 = time.perf_counter()
        loss, logits, per_window = nll(lambda x: model(x, use_cache=False).logits, windows, args.batch)
        return {"nll": loss, "window_nll": per_window, "eval_s": round(time.perf_counter() - t0, 1), "_logits": logits}

    record("fp32 eager", eager)
    record("fxforge fp32", lambda: run_fxforge(model, {}, windows, calib, args.batch))
    for name, opts in FXFORGE_ROWS:
        record(name, lambda opts=opts: run_fxforge(model, opts, windows, calib, args.batch))
    torchao_version = None
    if not args.no_torchao:
        try:
            import torchao

            torchao_version = torchao.__version__
            for name, make in torchao_configs():
                dtype = torch.bfloat16 if "bf16" in name else torch.float32
                record(name, lambda make=make, dtype=dtype: run_torchao(model, make, windows, args.batch, dtype))
        except ImportError as e:
            rows["torchao"] = {"error": f"torchao not installed ({e}); pip install -r benchmarks/accuracy/requirements.txt"}
    for name, r in list(rows.items()):
        if "error" in r and name.startswith("torchao ") and not r["error"].startswith("does not run"):
            r["error"] = f"does not run on CPU: {r['error']}"

    e, f = rows["fp32 eager"], rows.get("fxforge fp32", {})
    if "error" in e:
        raise SystemExit(f"fp32 eager failed: {e['error']}")
    if "_logits" in f:
        diff = (f["_logits"] - e["_logits"]).abs().max().item()
        nd = f["nll"] - e["nll"]
        cmp = {"max_abs_logit_diff": diff, "nll_diff": nd,
               "verdict": "equal (within fp32 rounding)" if diff < 1e-3 and abs(nd) < 1e-5 else "NOT equal"}
    else:
        verdict = f"fxforge fp32 failed: {f['error']}" if f else "fxforge fp32 not run"
        cmp = {"max_abs_logit_diff": float("nan"), "nll_diff": float("nan"), "verdict": verdict}
    for r in rows.values():
        r.pop("_logits", None)
    fp16_bytes = next((r["bytes"]["bytes_fp16"] for r in rows.values() if "bytes" in r), 0)
    import transformers

    import fxforge

    now = dt.datetime.now()
    res = {
        "date": now.strftime("%Y-%m-%d"), "timestamp": now.isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
                    "threads": args.threads, "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "torchao": torchao_version,
                    "fxforge": getattr(fxforge, "__version__", "?")},
        "fixture": {"path": str(args.fixture.relative_to(ROOT)) if args.fixture.is_relative_to(ROOT) else str(args.fixture),
                    "parameters": meta["parameters"], "weights_dtype": meta["weights_dtype"], "bytes": meta["weights_bytes"],
                    "weights_sha256": meta["weights_sha256"], "steps": meta["steps"], "heldout_loss": meta["heldout_loss"],
                    "python": meta["data"]["python_version"], "heldout_sha256": meta["data"]["heldout_sha256"]},
        "eval": {"windows": args.windows, "length": args.length, "calibration_windows": args.calibration,
                 "calibration_source": "train text", "batch": args.batch, "use_cache": False},
        "rows": rows, "fxforge_fp32_vs_eager": cmp, "fp16_linear_bytes": fp16_bytes,
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    res["findings"] = findings(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"accuracy-{res['date']}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {stem}.json / .md in {res['seconds_total']:.0f}s")


if __name__ == "__main__":
    main()
