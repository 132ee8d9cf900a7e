"""Compile time of sparsity (2:4, and 2:4 + W8A8-INT8) on a MiniLM-sized BERT encoder (hidden 384, 6 layers,
12 heads, intermediate 1536, random weights) with ~100 calibration sentences of 32-64 tokens, each its own
example (mixed lengths, as a tokenizer without padding gives them): the shape of the sentence-embedding check
of issue #10. Prints the wall and CPU seconds of the compile and the sparsify pass's refine stats.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy/sparsity_compile_time.py [--sentences 100] [--quantize w8a8-int8]
"""

from __future__ import annotations

import argparse
import time

import torch

import fxforge
from fxforge import testing as zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=100)
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--refine", type=int, default=None, help="sparsity_refine (default: fxforge's)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = zoo.build("bert", hidden=384, layers=6, heads=12, intermediate=1536)
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(32, 65, (args.sentences,), generator=gen).tolist()
    calib = [(torch.randint(3, 256, (1, n), generator=gen),) for n in lengths]
    x = torch.randint(3, 256, (2, 48), generator=gen)
    opts = {"quantize": args.quantize} if args.quantize else {}
    t0, c0 = time.perf_counter(), time.process_time()
    compiled = fxforge.compile_aot(model, (x,), sparsity="2:4", calibration=calib, sparsity_refine=args.refine, **opts)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    st = compiled.record.trace.record("sparsify").stats
    spans = {r.name: round(r.seconds, 1) for r in compiled.record.trace.records if r.seconds > 1}
    print(f"compile {seconds:.1f} s wall, {cpu:.1f} s CPU (this process; on a shared machine the wall time is inflated); passes over 1 s: {spans}")
    print("refine:", {k: v for k, v in st.get("refine", {}).items() if k != "blocks"})
    for k, b in st.get("refine", {}).get("blocks", {}).items():
        print(" ", k, {n: (round(v, 5) if isinstance(v, float) else v) for n, v in b.items()})
    with torch.no_grad():
        want = model(x).last_hidden_state.mean(1)
        got = compiled(x).last_hidden_state.mean(1)
    print("embedding cosine (random weights, one input):", torch.nn.functional.cosine_similarity(got, want).mean().item())


if __name__ == "__main__":
    main()
