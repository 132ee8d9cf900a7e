"""SASS instructions per weight in the K loop of the quantized decode GEMMs (issue #13 item 5), on a CPU.

    PYTHONPATH=$PWD python benchmarks/qdecode_sass.py [--out benchmarks/results/qdecode_sass-DATE.md]

Builds each 4-bit scheme's qlinear kernel at a decode shape (M=1 and M=16 (the decode kernel also 4 and 8),
N=K=4096, fp16 activations) for sm_90 and sm_80 with the installed Triton, then the decode kernel
(`templates/qlinear_decode.py`) on int4 and FP4 decode layouts (and FP4 group 32 at batch 16 at Llama-3.2-1B's
shapes on sm_80), then the FP8-MMA decode kernel (`templates/qlinear_decode_f8.py`, sm_90), and prints a markdown
table: main-loop instructions, weights per thread per iteration, instructions per weight, registers, spills.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)


def main() -> None:
    import triton

    from fxforge.codegen.templates.qlinear_cost import decode_per_weight, weights_per_thread
    from fxforge.codegen.templates.qlinear_specs import qlinear_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [f"Triton {triton.__version__}", "",
            "| kernel | M | arch | loop instr | weights/thread/iter | instr/weight | regs | spills |", "|---|---|---|---|---|---|---|---|"]
    for scheme in ("w4a16-int4", "w4a8-fp"):
        for M in (1, 16):
            spec = qlinear_spec(scheme, M, 4096, 4096, bias=False)
            for arch, (pw, b) in decode_per_weight(scheme, M, 4096, 4096).items():
                rows.append(f"| {scheme} {spec['label'].split()[-1]} | {M} | sm_{arch} | {b.loop_instructions} | "
                            f"{weights_per_thread(spec):.0f} | {pw:.2f} | {b.registers} | {b.spills} |")
    from fxforge.codegen.build import build_in_subprocess
    from fxforge.codegen.templates.qlinear_cost import per_weight
    from fxforge.codegen.templates.qlinear_decode import decode_operand, w4_decode_spec

    # the decode kernel (issue #13 item 5): int4 "i4w128" (group 128), FP4 "f4w128" (w4a8-fp at group 128, and at
    # its default group 32: the group factors multiply the decoded weights); the layout variant decode_operand picks
    cases = [("w4_decode int4 g128", dict(group=128, bk=128)), ("w4_decode fp4 g128", dict(group=128, bk=128, fp4=True)),
             ("w4_decode fp4 g32", dict(group=32, bk=128, fp4=True))]
    for arch in (90, 80):
        kw, xperm = decode_operand(arch)
        for M in (1, 4, 8, 16):  # batch <= 8 takes an 8-column x tile where that is cheaper (`decode_blocks`)
            specs = [w4_decode_spec(4096, 4096, kw=kw, xperm=xperm, M=M, arch=arch, **case) for _, case in cases]
            for (name, _), spec, b in zip(cases, specs, build_in_subprocess(specs, arch)):
                c = spec["constexprs"]
                tile = f"x tile {c['BLOCK_M']}{' packed' if c['PACK'] else ' block MMAs' if c['BLOCK_DOTS'] else ''}"
                rows.append(f"| {name} {spec['label'].split()[-1]} | {M} ({tile}) | "
                            f"sm_{arch} | {b.loop_instructions} | {weights_per_thread(spec):.0f} | "
                            f"{per_weight(spec, b):.2f} | {b.registers} | {b.spills} |")
    # w4a8-fp's group 32 at batch 16 on sm_80 at Llama-3.2-1B's GEMV shapes (qkv, o, [gate; up], down): the K
    # splits there decide how many K tiles an iteration runs (`decode_blocks`), 2 where a split has only 2
    kw, xperm = decode_operand(80)
    shapes = [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192)]
    specs = [w4_decode_spec(n, k, 32, 128, kw=kw, xperm=xperm, fp4=True, M=16, arch=80) for n, k in shapes]
    for (n, k), spec, b in zip(shapes, specs, build_in_subprocess(specs, 80)):
        c = spec["constexprs"]
        rows.append(f"| w4_decode fp4 g32 {n}x{k} {spec['label'].split()[-1]} | 16 ({c['UNROLL']} tiles an iteration, "
                    f"{c['SPLIT_K']} splits) | sm_80 | {b.loop_instructions} | {weights_per_thread(spec):.0f} | "
                    f"{per_weight(spec, b):.2f} | {b.registers} | {b.spills} |")
    # the FP8-MMA decode kernel (`templates/qlinear_decode_f8.py`, layout "f4w128e": w4a8-fp on sm_90, where the
    # decode_layout pass picks it); one config serves batch 1-16
    from fxforge.codegen.templates.qlinear_decode_f8 import w4_f8_decode_spec

    f8 = [(M, g, w4_f8_decode_spec(4096, 4096, g, M=M, arch=90)) for g in (128, 32) for M in (1, 4, 8, 16)]
    for (M, g, spec), b in zip(f8, build_in_subprocess([s for *_, s in f8], 90)):
        rows.append(f"| w4_f8_decode fp4 g{g} f4w128e | {M} (x tile {spec['constexprs']['BLOCK_M']}) | sm_90 | "
                    f"{b.loop_instructions} | {weights_per_thread(spec):.0f} | {per_weight(spec, b):.2f} | "
                    f"{b.registers} | {b.spills} |")
    text = "\n".join(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
