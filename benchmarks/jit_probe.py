"""The JIT path on the GQA decoder architectures: `fxforge.compile(model).generate(ids, max_new_tokens=8)` (HF
`generate` through the compiled forward: dynamo captures each step's graph) against eager
`model.generate(do_sample=False)`, EOS off, for each `fxforge.testing.GQA_DECODERS` model (hidden 64, 4 heads,
2 KV heads, vocab 256, 2 layers, fp32, random weights), each in a fresh subprocess.

Per architecture: tokens equal, the graphs fxforge compiled (one per dynamo capture), the externs they still run
through torch (after the passes), seconds,
and on a mismatch the first position where the tokens differ; an exception is reported as the row's error.

    OMP_NUM_THREADS=1 python benchmarks/jit_probe.py [--archs llama gemma ...] [--executor interpret]
        [--out benchmarks/results/jit_probe-<date>.md]
"""

from __future__ import annotations

import time

from probe_children import child_row, probe_parser, run_children, write_results


def probe(arch: str, executor: str, new_tokens: int = 8) -> dict:
    import torch

    import fxforge
    from fxforge.testing import gqa_decoder

    model = gqa_decoder(arch, 2)
    model.generation_config.eos_token_id = None  # new_tokens tokens whatever they are
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    start = time.perf_counter()
    compiled = fxforge.compile(model, executor=executor)
    with torch.no_grad():
        got = compiled.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    graphs = compiled.fxforge_report.graphs
    externs = sorted({target for g in graphs for target in g.externs})
    row = {
        "arch": arch,
        "tokens": bool(torch.equal(got, want)),
        "graphs": len(graphs),
        "externs": externs,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if not row["tokens"]:
        g, w = got[0].tolist(), want[0].tolist()
        row["first_diff"] = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
        row["got"], row["want"] = g, w
    return row


def child(arch: str, executor: str) -> None:
    child_row(probe, arch, executor)


def table(rows: list[dict]) -> str:
    lines = ["| arch | tokens equal | graphs | seconds | notes |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | ERROR | | | {r['error'].replace('|', '/')} |")
            continue
        notes = ", ".join(f"extern {t}" for t in r["externs"])
        if not r["tokens"]:
            notes = (notes + "; " if notes else "") + f"first differing position {r['first_diff']}"
        lines.append(f"| {r['arch']} | {r['tokens']} | {r['graphs']} | {r['seconds']} | {notes} |")
    return "\n".join(lines)


def main() -> None:
    ap = probe_parser()
    ap.add_argument("--executor", default="interpret")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.executor)
    rows = run_children(__file__, args.archs, lambda arch: ["--executor", args.executor], args.timeout)
    text = table(rows)
    print(text)
    if args.out:
        write_results(args.out, "jit_probe", text, rows)


if __name__ == "__main__":
    main()
