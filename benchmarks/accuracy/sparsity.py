"""N:M sparsity (and sparsity + quantization) on the stdlib-llama fixture: next-token agreement with
fp32, held-out perplexity, logits cosine, pruned-weight bytes and compile time per row; with `--model bert`,
a BERT-like encoder of fxforge.testing (hidden 128, 4 layers, random weights) on the same byte-level text:
the mean-pooled embedding's cosine with the dense model's.

    .venv/bin/python benchmarks/accuracy/sparsity.py                # every row, ~10 min on 2 busy cores
    .venv/bin/python benchmarks/accuracy/sparsity.py --only 2:4     # rows whose name contains "2:4"
    .venv/bin/python benchmarks/accuracy/sparsity.py --model bert --only "2:4 sparsegpt"

One-shot rows set `sparsity_refine=0`; "+ refine" rows run the block-output reconstruction
(`fxforge.passes.sparsify_refine`, the default with calibration); with a scheme ("2:4 sparsegpt + refine +
w8a8-int8"), the refined kept values are then quantized by GPTQ with the mask fixed (`sparsify_quant`),
while "2:4 sparsegpt + w8a8-int8" prunes and quantizes in one solve.

Every linear but lm_head is pruned (fxforge's default; the embedding is not a linear). Calibration:
`--calibration` windows of TRAIN text (16 x 128 bytes = 2048 tokens, more than the widest layer's 768
inputs, so H is full rank). Writes benchmarks/results/sparsity-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
from perplexity import FIXTURE, RESULTS, load_fixture  # noqa: E402

SCHEMES = ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp")


def rows() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for pattern in ("2:4", "4:8", "2:8"):
        for method in ("magnitude", "wanda", "sparsegpt"):
            out.append((f"{pattern} {method}", {"sparsity": pattern, "sparsity_method": method, "sparsity_refine": 0}))
        for method in ("wanda", "sparsegpt"):
            out.append((f"{pattern} {method} + refine", {"sparsity": pattern, "sparsity_method": method}))
    out.append(("2:4 sparsegpt (layer target)", {"sparsity": "2:4", "sparsity_method": "sparsegpt", "solver_target": "layer",
                                                 "sparsity_refine": 0}))
    for scheme in SCHEMES:  # one-shot: pruned and quantized in one solve; refined: prune, refine, masked GPTQ
        base = {"sparsity": "2:4", "sparsity_method": "sparsegpt", "quantize": scheme}
        out.append((f"2:4 sparsegpt + {scheme}", {**base, "sparsity_refine": 0}))
        out.append((f"2:4 sparsegpt + refine + {scheme}", base))
    out.append(("2:4 magnitude + w8a8-int8 (no calibration)", {"sparsity": "2:4", "quantize": "w8a8-int8", "_no_calib": True}))
    return out


def bert_model() -> torch.nn.Module:
    from fxforge import testing as zoo

    return zoo.build("bert", hidden=128, layers=4, heads=4, intermediate=512)


@torch.no_grad()
def embed_eval(fn, windows: torch.Tensor, ref: list[torch.Tensor] | None, batch: int) -> dict[str, Any]:
    """Mean-pooled last hidden states; with `ref`, their mean cosine with the reference embeddings, raw and
    centered (the dense embeddings' mean over the windows subtracted from both: a random-weight encoder's
    embeddings share a large common direction that makes the raw cosine ~1 for any pruning)."""
    outs = [fn(windows[i:i + batch]).float().mean(1) for i in range(0, len(windows), batch)]
    res: dict[str, Any] = {"_logits": outs}
    if ref is not None:
        emb, dense = torch.cat(outs), torch.cat(ref)
        center = dense.mean(0)
        cos = torch.nn.functional.cosine_similarity
        res["embedding_cosine"] = cos(emb, dense, dim=-1).mean().item()
        res["centered_cosine"] = cos(emb - center, dense - center, dim=-1).mean().item()
    return res


@torch.no_grad()
def evaluate(fn, windows: torch.Tensor, ref_logits: list[torch.Tensor] | None, batch: int) -> dict[str, Any]:
    total, n, agree, cos, outs = 0.0, 0, 0.0, 0.0, []
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        logits = fn(w[:, :-1]).float()
        outs.append(logits)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
        total += ce.item()
        n += w[:, 1:].numel()
        if ref_logits is not None:
            ref = ref_logits[len(outs) - 1]
            agree += (logits.argmax(-1) == ref.argmax(-1)).sum().item()
            cos += torch.nn.functional.cosine_similarity(logits, ref, dim=-1).sum().item()
    res = {"nll": total / n, "ppl": math.exp(total / n), "_logits": outs}
    if ref_logits is not None:
        res.update({"next_token_agreement": agree / n, "logits_cosine": cos / n})
    return res


def run_row(model, options: dict[str, Any], windows, calib, ref, batch, encoder: bool = False) -> dict[str, Any]:
    import fxforge

    opts = {k: v for k, v in options.items() if not k.startswith("_")}
    if not options.get("_no_calib"):
        opts["calibration"] = [(w[None, :-1],) for w in calib]
    t0 = time.perf_counter()
    compiled = fxforge.compile_aot(model, (windows[:batch, :-1],), **opts)
    t1 = time.perf_counter()
    if encoder:
        res = embed_eval(lambda x: compiled(x[:, :-1]).last_hidden_state, windows, ref, batch)
    else:
        res = evaluate(lambda x: compiled(x).logits, windows, ref, batch)
    st = compiled.record.trace.record("sparsify").stats
    pruned = sum(model.get_submodule(k).weight.numel() for k in st["layers"])
    res.update({"compile_s": round(t1 - t0, 1), "method": st["method"], "layers_pruned": len(st["layers"]),
                "skipped": sorted(st["skipped"]), "bytes_fp16": st["summary"]["bytes_fp16_before"],
                "bytes_after": st["summary"]["bytes_after"], "bits_per_weight": 8 * st["summary"]["bytes_after"] / pruned,
                "mean_layer_rel_error": st["summary"]["mean_rel_error"]})
    if "refine" in st:
        res["refine_blocks"] = {k: [round(v["loss_before"], 5), round(v["loss_after"], 5)] for k, v in st["refine"]["blocks"].items()}
    return res


def markdown(res: dict[str, Any]) -> str:
    if res.get("model") == "bert":
        return markdown_bert(res)
    lines = [f"# Sparsity on the stdlib-llama fixture ({res['date']})", "",
             f"{res['eval']['windows']} held-out windows x {res['eval']['length']} bytes; calibration "
             f"{res['eval']['calibration']} train windows; machine {res['machine']}. Agreement = next-token "
             "argmax equal to fp32's; bits/weight of the pruned linears (values + index + scales).", "",
             "| row | next-token agreement | logits cosine | ppl | bits/weight | compile s |", "|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | |")
            continue
        lines.append(f"| {name} | {r.get('next_token_agreement', 1.0):.4f} | {r.get('logits_cosine', 1.0):.4f} | "
                     f"{r['ppl']:.3f} | {r.get('bits_per_weight', 32):.2f} | {r.get('compile_s', '')} |")
    return "\n".join(lines) + "\n"


def markdown_bert(res: dict[str, Any]) -> str:
    lines = [f"# Sparsity on a BERT-like encoder ({res['date']})", "",
             "fxforge.testing's bert (hidden 128, 4 layers, intermediate 512, random weights) on the byte-level text: "
             f"{res['eval']['windows']} held-out windows x {res['eval']['length']} bytes, calibration "
             f"{res['eval']['calibration']} train windows; cosine of the mean-pooled last hidden state with dense's, "
             "raw and centered (dense's mean embedding subtracted from both).", "",
             "| row | embedding cosine | centered cosine | bits/weight | compile s |", "|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {name} | {r.get('embedding_cosine', 1.0):.5f} | {r.get('centered_cosine', 1.0):.4f} | "
                     f"{r.get('bits_per_weight', 32):.2f} | {r.get('compile_s', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", type=Path, default=FIXTURE)
    ap.add_argument("--model", choices=("fixture", "bert"), default="fixture")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings: run the rows whose name contains one")
    ap.add_argument("--rows", default="", help="comma-separated exact row names (instead of --only)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    encoder = args.model == "bert"
    model = bert_model() if encoder else load_fixture(args.fixture)
    windows = data.heldout_windows(args.windows, args.length)
    calib = data.calibration_windows(args.calibration, args.length)
    if encoder:
        dense = embed_eval(lambda x: model(x[:, :-1]).last_hidden_state, windows, None, args.batch)
    else:
        dense = evaluate(lambda x: model(x, use_cache=False).logits, windows, None, args.batch)
    ref = dense.pop("_logits")
    results: dict[str, Any] = {"fp32 dense": dense}
    print(f"fp32 dense {'' if encoder else dense['ppl']}", flush=True)
    for name, options in rows():
        if args.rows and name not in args.rows.split(","):
            continue
        if args.only and not any(o in name for o in args.only.split(",")):
            continue
        try:
            r = run_row(model, options, windows, calib, ref, args.batch, encoder)
            r.pop("_logits")
        except Exception as e:  # reported in the table, not hidden
            r = {"error": f"{type(e).__name__}: {e}"[:300]}
        results[name] = r
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "skipped"}, flush=True)
    date = datetime.date.today().isoformat()
    res = {"date": date, "model": args.model, "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}".strip(),
           "eval": {"windows": args.windows, "length": args.length, "calibration": args.calibration}, "rows": results}
    args.out.mkdir(parents=True, exist_ok=True)
    picked = args.rows or args.only
    suffix = ("-bert" if encoder else "") + ("-partial" if picked else "")
    (args.out / f"sparsity-{date}{suffix}.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / f"sparsity-{date}{suffix}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
