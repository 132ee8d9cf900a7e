"""SASS instructions per weight in the K loop of the quantized decode GEMMs (issue #13 item 5), on a CPU.

    PYTHONPATH=$PWD python benchmarks/qdecode_sass.py [--out benchmarks/results/qdecode_sass-DATE.md]

Builds each 4-bit scheme's qlinear kernel at a decode shape (M=1 and M=16, N=K=4096, fp16 activations)
for sm_90 and sm_80 with the installed Triton, and prints a markdown table: main-loop instructions,
weights per thread per iteration, instructions per weight, registers, spills.
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
    from fxforge.codegen.templates.qlinear_decode import decode_kwidth, w4_decode_spec

    for arch in (90, 80):  # the decode kernel (issue #13 item 5): int4 in the "i4w128" layout, group 128
        spec = w4_decode_spec(4096, 4096, 128, 128, kw=decode_kwidth(arch))
        (b,) = build_in_subprocess([spec], arch)
        rows.append(f"| w4_decode {spec['label'].split()[-1]} | 1-16 | sm_{arch} | {b.loop_instructions} | "
                    f"{weights_per_thread(spec):.0f} | {per_weight(spec, b):.2f} | {b.registers} | {b.spills} |")
    text = "\n".join(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
