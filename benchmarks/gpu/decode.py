"""Decode speed on one GPU (issue #13, item 7): tok/s and ms/token of a Llama-3.2-1B-shaped model
(random weights; hidden 2048, intermediate 8192, 16 layers, 32/8 heads, head dim 64, vocab 128256) at
batch 1 and 8, context 1k and 8k, for eager, torch.compile(mode="max-autotune"), fxforge bf16,
W8A8-FP8, W4A16 and W4A8, each beside its HBM floor ((weight + KV bytes) / measured copy bandwidth);
plus bf16 and FP8 GEMM at 4096^3 against cuBLAS (torch.matmul, torch._scaled_mm).

    python benchmarks/gpu/decode.py --out $OUT            # on the GPU (run_all.sh calls it)
    python benchmarks/gpu/decode.py --dry-run --out DIR   # tiny model on the CPU: the same code paths
    python benchmarks/gpu/decode.py --model mixtral --variants eager "fxforge bf16" "fxforge w4a16-int4" --out $OUT
                                                          # a Mixtral-shaped MoE (the moe op's kernels; int4 experts)

fxforge's steps replay a CUDA graph as `generate()` does (--no-cuda-graph: uncaptured; torch.compile's
max-autotune mode uses CUDA graphs too; eager does not).
A decode step is timed at cache length = context - 1 (the static caches are filled with random K/V:
what a step reads does not depend on how the cache was filled), after warm-up, median of CUDA-event
timed steps; every variant's first-step logits are compared with eager's (max abs diff in the table).
A global time budget (--budget-s, default 420 s) skips what no longer fits and says so in the table.
Writes `decode-<date>.md` (the table) and `.json` to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

import fxforge
from fxforge import testing as zoo
from fxforge.frontend.kv_capture import _step_module
from fxforge.runtime.generate import StaticKVCache

FULL = dict(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, vocab=128256)
TINY = dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=256)
# --model mixtral: a Mixtral-shaped MoE decoder (8 experts, top-2) at the Llama-1B's attention shape, 16 layers
# (9.5 GB of bf16 weights, 1.6 GB of them read per token at batch 1: the chosen experts' only)
MOE_FULL = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                vocab_size=32000, num_local_experts=8, num_experts_per_tok=2)
VARIANTS = ("eager", "torch.compile max-autotune", "fxforge bf16", "fxforge w8a8-fp8", "fxforge w4a16-int4",
            "fxforge w4a8-fp")
PRIORITY = ("eager", "fxforge bf16", "torch.compile max-autotune", "fxforge w4a16-int4", "fxforge w8a8-fp8",
            "fxforge w4a8-fp")
COMPILE_MIN_LEFT_S = 150.0  # a max-autotune compile of the 1B model takes minutes: not started on less
SCHEME = {"fxforge bf16": None, "fxforge w8a8-fp8": "w8a8-fp8", "fxforge w4a16-int4": "w4a16-int4",
          "fxforge w4a8-fp": "w4a8-fp"}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def timer(device: str) -> Callable[[Callable[[], object], int], float]:
    """ms per call: CUDA events on a GPU, perf_counter on the CPU; median after 3 warm-up calls."""

    def run(fn: Callable[[], object], reps: int) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    return run


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Measured device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = timer(device)(lambda: dst.copy_(src), 10)
    return 2 * src.numel() * 2 / (ms / 1e3)


def weight_bytes(module: object, model: torch.nn.Module) -> int:
    graph = getattr(module, "graph", None)
    if graph is not None:
        return sum(w.nbytes() for w in graph.weights.values())
    return sum(p.numel() * p.element_size() for p in model.parameters())


def make_step(variant: str, model: torch.nn.Module, batch: int, context: int, executor: str) -> tuple[Callable, object]:
    """(step(ids, pos, kv) -> logits, the compiled object) for one variant."""
    if variant == "eager":
        step = _step_module(model)
        return step, step
    if variant.startswith("torch.compile"):
        step = torch.compile(_step_module(model), mode="max-autotune", fullgraph=True)
        return step, step
    dec = fxforge.compile_decoder(model, max_length=context, batch=batch, executor=executor, quantize=SCHEME[variant])
    return dec, dec


def bench_variant(variant: str, model, batch: int, context: int, args, budget: Budget) -> dict:
    row: dict = {"variant": variant, "batch": batch, "context": context}
    if args.dry_run and variant.startswith("torch.compile"):
        return {**row, "skipped": "dry run (inductor on the CPU is slow)"}
    if budget.left() < (COMPILE_MIN_LEFT_S if variant.startswith("torch.compile") else args.min_left_s):
        return {**row, "skipped": f"time budget ({budget.left():.0f} s left)"}
    device = args.device
    t = time.perf_counter()
    step, compiled = make_step(variant, model, batch, context, args.executor)
    cache = StaticKVCache.for_step(compiled.graph, device) if hasattr(compiled, "graph") else None
    kv = cache.tensors if cache else tuple(torch.randn(batch, model.config.num_key_value_heads, context,
                                                       model.config.hidden_size // model.config.num_attention_heads,
                                                       dtype=model.dtype, device=device) for _ in range(2 * model.config.num_hidden_layers))
    gen = torch.Generator(device="cpu").manual_seed(0)
    for t_ in kv:
        t_.copy_(torch.randn(t_.shape, generator=gen).to(t_.dtype))
    ids = torch.randint(3, model.config.vocab_size, (batch, 1), generator=gen).to(device)  # the same for every variant
    pos = torch.tensor([context - 1], device=device)
    with torch.no_grad():
        row["first_logits"] = step(ids, pos, kv).float()
        if device == "cuda" and variant.startswith("fxforge") and args.cuda_graph:  # as generate() runs it
            from fxforge.runtime.cuda_graph import GraphedStep

            try:
                step = GraphedStep(step, kv, batch)
                row["cuda_graph"] = True
            except RuntimeError as e:  # timed uncaptured, and the table says why
                row["note"] = f"uncaptured: {str(e)[:80]}"
        row["compile_s"] = time.perf_counter() - t
        ms = timer(device)(lambda: step(ids, pos, kv), args.reps)
    row.update(ms_per_token=ms, tok_per_s=batch * 1e3 / ms, weight_bytes=weight_bytes(compiled, model),
               kv_bytes=sum(x.numel() * x.element_size() for x in kv))
    return row


def gemm_rows(args) -> list[dict]:
    """bf16 and FP8 4096^3 GEMM: fxforge's templates against cuBLAS (GPU only)."""
    if args.device != "cuda":
        return [{"gemm": name, "skipped": "needs a GPU"} for name in ("bf16 4096^3", "fp8 4096^3")]
    from fxforge.codegen.templates.gemm import linear as fx_linear

    n = 4096
    run = timer("cuda")
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    flops = 2 * n**3
    rows = [{"gemm": "bf16 4096^3", "fxforge_ms": run(lambda: fx_linear(a, w), 20), "cublas_ms": run(lambda: a @ w.T, 20)}]
    from fxforge.codegen.templates.qlinear import qlinear
    from fxforge.ir.lowp_ops import encode_weight

    a8, w8 = a.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
    one = torch.ones((), device="cuda")
    w_enc = encode_weight(w.float().cpu(), "w8a8-fp8")
    w_enc = type(w_enc)(w_enc.data, w_enc.encoding, {k: t.cuda() for k, t in w_enc.payload.items()})
    row = {"gemm": "fp8 4096^3 (fxforge: W8A8-FP8 qlinear incl. activation quantization)",
           "cublas_ms": run(lambda: torch._scaled_mm(a8, w8.T, one, one, out_dtype=torch.bfloat16), 20),
           "fxforge_ms": run(lambda: qlinear(a, w_enc, "w8a8-fp8"), 20)}
    rows.append(row)
    for r in rows:
        r["cublas_tflops"] = flops / (r["cublas_ms"] / 1e3) / 1e12
        r["fxforge_tflops"] = flops / (r["fxforge_ms"] / 1e3) / 1e12 if r.get("fxforge_ms") else None
    return rows


def table(rows: list[dict], bandwidth: float, gemms: list[dict]) -> str:
    out = [f"HBM floor = (weight + KV bytes) / {bandwidth / 1e9:.0f} GB/s (measured copy bandwidth)", "",
           "| variant | batch | context | ms/token | tok/s | HBM floor ms | x floor | max abs diff vs eager | note |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r or "error" in r:
            out.append(f"| {r['variant']} | {r['batch']} | {r['context']} | | | | | | {r.get('skipped') or r['error']} |")
            continue
        floor = (r["weight_bytes"] + r["kv_bytes"]) / bandwidth * 1e3
        out.append(f"| {r['variant']} | {r['batch']} | {r['context']} | {r['ms_per_token']:.3f} | {r['tok_per_s']:.1f} | "
                   f"{floor:.3f} | {r['ms_per_token'] / floor:.2f} | {r.get('diff', 0.0):.2e} | "
                   f"{r.get('note', 'CUDA graph' if r.get('cuda_graph') else '')} |")
    out += ["", "| GEMM | fxforge ms | cuBLAS ms | fxforge TFLOP/s | cuBLAS TFLOP/s | note |", "|---|---|---|---|---|---|"]
    for g in gemms:
        f = lambda k: f"{g[k]:.3f}" if g.get(k) is not None else ""  # noqa: E731
        out.append(f"| {g['gemm']} | {f('fxforge_ms')} | {f('cublas_ms')} | {f('fxforge_tflops')} | {f('cublas_tflops')} | "
                   f"{g.get('skipped', '')} |")
    return "\n".join(out) + "\n"


def run_all(args, write: Callable[[list[dict], float, list[dict]], None]) -> tuple[list[dict], float, list[dict]]:
    """Every row, in priority order (eager, fxforge bf16, torch.compile, then the quantized schemes);
    `write` gets the rows so far after each one (a run killed by its timeout still leaves its table)."""
    budget = Budget(args.budget_s)
    torch.manual_seed(0)
    with torch.device(args.device):  # initialise on the device: a 1B model's CPU init is slow
        model = build_model(args).to(args.dtype).eval()
    model.config.max_position_embeddings = max(args.contexts) + 1
    bandwidth = copy_bandwidth(args.device, 1 << (24 if args.dry_run else 30))
    rows: list[dict] = []
    eager: dict[tuple[int, int], torch.Tensor] = {}
    order = sorted(args.variants, key=PRIORITY.index)
    for variant in order:
        for batch in args.batches:
            for context in args.contexts:
                try:
                    row = bench_variant(variant, model, batch, context, args, budget)
                except Exception as e:  # one variant failing must not lose the others' figures
                    row = {"variant": variant, "batch": batch, "context": context, "error": f"{type(e).__name__}: {e}"[:200]}
                logits = row.pop("first_logits", None)
                if logits is not None and variant == "eager":
                    eager[batch, context] = logits
                if logits is not None and (batch, context) in eager:
                    row["diff"] = (logits - eager[batch, context]).abs().max().item()
                rows.append(row)
                print(json.dumps(row), flush=True)
                write(sorted(rows, key=_row_order), bandwidth, [])
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    rows.sort(key=_row_order)
    return rows, bandwidth, gemm_rows(args)


def build_model(args) -> torch.nn.Module:
    """The benchmarked decoder: Llama-3.2-1B-shaped, or (`--model mixtral`) the Mixtral-shaped MoE; tiny on a dry run."""
    if args.model == "mixtral":
        return zoo.gqa_decoder("mixtral", 2 if args.dry_run else 16, **({} if args.dry_run else MOE_FULL))
    return zoo.llama(**(TINY if args.dry_run else FULL))


def _row_order(r: dict) -> tuple:
    return r["batch"], r["context"], VARIANTS.index(r["variant"])


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--dry-run", action="store_true", help="tiny model on the CPU (reference executor), fast")
    ap.add_argument("--model", choices=("llama", "mixtral"), default="llama",
                    help="the Llama-3.2-1B-shaped model (the issue's table) or a Mixtral-shaped MoE (the moe op)")
    ap.add_argument("--batches", type=int, nargs="+")
    ap.add_argument("--contexts", type=int, nargs="+")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                    help="time fxforge's steps uncaptured (default: replayed CUDA graphs, as generate() runs them)")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--min-left-s", type=float, default=25.0, help="skip a variant when less than this is left")
    args = ap.parse_args(argv)
    args.device = "cpu" if args.dry_run else "cuda"
    args.dtype = torch.float32 if args.dry_run else torch.bfloat16
    args.executor = "reference" if args.dry_run else "triton"
    args.batches = args.batches or ([1, 2] if args.dry_run else [1, 8])
    args.contexts = args.contexts or ([16, 32] if args.dry_run else [1024, 8192])
    if args.dry_run:
        args.reps = min(args.reps, 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"decode-{'dryrun-' if args.dry_run else ''}{'' if args.model == 'llama' else args.model + '-'}{date.today()}"
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (dry run)"

    def write(rows: list[dict], bandwidth: float, gemms: list[dict]) -> str:
        import triton

        text = (f"# Decode benchmark ({args.model}-shaped), {device}, torch {torch.__version__}, triton {triton.__version__}\n\n"
                + table(rows, bandwidth, gemms))
        (out / f"{stem}.md").write_text(text)
        (out / f"{stem}.json").write_text(json.dumps({"device": device, "bandwidth": bandwidth, "rows": rows,
                                                      "gemm": gemms}, indent=1, default=str))
        return text

    print(write(*run_all(args, write)))
    return out / f"{stem}.md"


if __name__ == "__main__":
    main()
