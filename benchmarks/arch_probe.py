"""GQA decoder architectures of the installed `transformers` through `compile_decoder(executor="interpret")`
(issue #13's CPU done-when on an architecture outside the test zoo).

For each architecture, built from a small config with random weights (hidden 64, 4 heads, 2 KV heads,
vocab 256; `fxforge.testing.GQA_DECODERS`, norm weights with noise), in a fresh subprocess:
- tokens: greedy `compile_decoder(model, executor="interpret").generate(ids, 8)` vs eager HF
  `model.generate(do_sample=False)` (2 layers);
- launches of one T=1 decode step, counted from outside fxforge (`fxforge.testing.counting_launches`):
  per layer = (2n-layer count - n-layer count) / n, rest = n-layer count - n * per layer (budget 6 + 4),
  n = 1, or the layers of one period of the config's layer kinds (`testing.layer_period`: Gemma2's sliding / full,
  Llama 4's layer without RoPE every fourth; session 15, before: the first layers holding every kind of 2n layers,
  which missed kinds first seen past layer 2): a 1-layer model lacks the second kind's shared kernels (its mask),
  which 2 - 1 would count per layer;
- the same launches for `quantize="w4a16-int4"` (an fp16 model, `--quant-dtype bfloat16`: bf16; group 32), whose
  tokens are compared with the reference executor's on the same quantized graph;
- extern ops and host ops left in the step graph (anything not a kernel).

    OMP_NUM_THREADS=1 python benchmarks/arch_probe.py [--archs mistral qwen3 ...] [--no-quant] [--dtype float16] [--quant-dtype bfloat16]
        [--quant-archs llama qwen3 ...] [--out benchmarks/results/arch_probe-<date>.md]
"""

from __future__ import annotations

import time

from probe_children import child_row, probe_parser, run_children, write_results

DTYPE = "float32"  # --dtype: the models' dtype
QUANT_DTYPE = "float16"  # --quant-dtype: the quantized columns' model dtype (the 4-bit decode GEMM: fp16 or bf16)
SCHEME = "w4a16-int4"  # --scheme: the quantized columns' scheme (w4a8-fp: the FP8-MMA decode kernel's layout)


def build(arch: str, layers: int):
    import torch

    from fxforge.testing import gqa_decoder

    return gqa_decoder(arch, layers).to(getattr(torch, DTYPE))


def config(arch: str, layers: int):
    """`build`'s config without its weights (config_probe swaps both)."""
    from fxforge.testing import gqa_config

    return gqa_config(arch, layers)


def period(arch: str) -> int:
    """n: the layers of one period of the config's layer kinds (`testing.layer_period`, this probe's `config`)."""
    from fxforge.testing import layer_period

    return layer_period(arch, config)


def counts(one: list[str], two: list[str], n: int) -> dict:
    """Per layer and rest from the n- and 2n-layer launches (a fraction when kinds of a period differ)."""
    per = (len(two) - len(one)) / n
    per = int(per) if per == int(per) else round(per, 2)
    return dict(per_layer=per, rest=round(len(one) - n * per, 2))


def step_launches(model, **options) -> tuple[list[str], list[str], object]:
    """Launches of one T=1 step after a 4-token prefill; externs and host ops of the graph; the compiled step."""
    import torch

    import fxforge
    from fxforge.runtime.generate import StaticKVCache
    from fxforge.testing import counting_launches

    dec = fxforge.compile_decoder(model, max_length=24, executor="interpret", **options)
    cache = StaticKVCache.for_step(dec.graph)
    ids = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(0))
    dec(ids, torch.arange(4), cache.tensors)
    with counting_launches() as names:
        dec(ids[:, :1], torch.tensor([4]), cache.tensors)
    host = dec.graph.partition.host
    odd = [f"extern {op.attrs.get('target', '?')}" for op in dec.graph.ops if op.opcode == "extern"]
    odd += [f"host {op.opcode}" for op in dec.graph.ops if id(op) in host and op.opcode in ("cache_write", "kv_load")]
    return list(names), odd, dec


def probe(arch: str, quant: bool) -> dict:
    import torch

    import fxforge

    row: dict = {"arch": arch}
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    m2 = build(arch, 2)
    m2.generation_config.eos_token_id = None  # 8 tokens whatever they are (min_new_tokens would mask eos instead)
    with torch.no_grad():
        want = m2.generate(ids, max_new_tokens=8, do_sample=False)
    n = period(arch)
    one, _, _ = step_launches(build(arch, n))
    two, odd, dec = step_launches(m2 if n == 1 else build(arch, 2 * n))
    got = (dec if n == 1 else step_launches(m2)[2]).generate(ids, max_new_tokens=8)
    row.update(tokens=bool(torch.equal(got, want)), **counts(one, two, n), layers=(n, 2 * n),
               layer_kernels=sorted(two[len(one) - (len(two) - len(one)):len(one)]), odd=sorted(set(odd)))
    if not row["tokens"]:
        row["got"], row["want"] = got.tolist(), want.tolist()
    if quant:
        opts = dict(quantize=SCHEME, quantize_group=32)
        qbuild = lambda layers: build(arch, layers).to(getattr(torch, QUANT_DTYPE))  # noqa: E731
        q1, _, _ = step_launches(qbuild(n), **opts)
        q2, qodd, qdec = step_launches(qbuild(2 * n), **opts)
        if n != 1:
            qdec = step_launches(qbuild(2), **opts)[2]
        ref = fxforge.compile_decoder(qbuild(2), max_length=24, executor="reference", **opts)
        q = counts(q1, q2, n)
        row.update(q_tokens=bool(torch.equal(qdec.generate(ids, max_new_tokens=8), ref.generate(ids, max_new_tokens=8))),
                   q_per_layer=q["per_layer"], q_rest=q["rest"], q_odd=sorted(set(qodd)))
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def child(arch: str, quant: bool) -> None:
    child_row(probe, arch, quant)


def table(rows: list[dict], quant: bool) -> str:
    w4 = SCHEME.split("-")[0]
    head = f"| arch | tokens equal | launches/layer | rest | {w4} tokens = ref | {w4} /layer | {w4} rest | notes |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | ERROR | | | | | | {r['error'].replace('|', '/')} |")
            continue
        notes = ", ".join(r.get("odd", []) + [f"w4: {x}" for x in r.get("q_odd", [])])
        n = r.get("layers", (1, 2))[0]
        if n != 1:  # alternating layer kinds: counted over one period
            notes = (notes + "; " if notes else "") + f"({r['layers'][1]} - {n} layers) / {n}"
        if r["per_layer"] > 6:
            notes = (notes + "; " if notes else "") + ("layer: " if n == 1 else f"{n} layers: ") + " ".join(r["layer_kernels"])
        q = [str(r.get(k, "-")) for k in ("q_tokens", "q_per_layer", "q_rest")]
        lines.append(f"| {r['arch']} | {r['tokens']} | {r['per_layer']} | {r['rest']} | {' | '.join(q)} | {notes} |")
    return "\n".join(lines)


def main() -> None:
    ap = probe_parser()
    ap.add_argument("--no-quant", action="store_true")
    ap.add_argument("--quant-archs", nargs="*", help="the w4a16 columns only for these (default: every arch)")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                    help="the models' dtype (tokens then compared with eager's in it)")
    ap.add_argument("--scheme", choices=("w4a16-int4", "w4a8-fp"), default="w4a16-int4",
                    help="the quantized columns' scheme (group 32)")
    ap.add_argument("--quant-dtype", choices=("float16", "bfloat16"), default="float16",
                    help="the quantized columns' model dtype")
    args = ap.parse_args()
    global DTYPE, SCHEME, QUANT_DTYPE
    DTYPE, SCHEME, QUANT_DTYPE = args.dtype, args.scheme, args.quant_dtype
    if args.child:
        return child(args.child, not args.no_quant)
    rows = run_children(__file__, args.archs, lambda arch: ["--dtype", args.dtype, "--scheme", args.scheme,
                                                            "--quant-dtype", args.quant_dtype] + ([] if not args.no_quant and (
        args.quant_archs is None or arch in args.quant_archs) else ["--no-quant"]), args.timeout)
    report(rows, not args.no_quant, "arch_probe", args.out)


def report(rows: list[dict], quant: bool, title: str, out: str | None) -> None:
    """Print the rows' table; write it (and the rows) to `out` when given (arch_probe, config_probe, mla_probe)."""
    text = table(rows, quant)
    print(text)
    if out:
        write_results(out, title, text, rows)


if __name__ == "__main__":
    main()
