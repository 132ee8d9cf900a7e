"""Programs (CTAs) per decode GEMM of a Llama-3.2-1B-shaped layer, from the one decode table
(`fxforge.codegen.blocks.gemm_blocks`, split-K included), beside the same table without split-K.

No GPU needed: it reads the configs the GEMM launcher picks on sm_90 (132 SMs) and sm_80 (108 SMs) for
M = 1 and 8 (bf16). The goal is >= 2 CTAs per SM; before split-K, o_proj and down_proj (N = 2048) had
128 tiles at BLOCK_N = 16, under one per SM on an H100/H200.

    .venv/bin/python benchmarks/decode_gemm_ctas.py [--out benchmarks/results/decode_gemm_ctas-<date>.md]
"""

from __future__ import annotations

import argparse
import datetime

from fxforge.codegen.blocks import SM_COUNT, gemm_blocks, swiglu_blocks

LAYER = {"qkv": (3072, 2048, False), "o_proj": (2048, 2048, False), "gate/up (SwiGLU)": (8192, 2048, True),
         "down_proj": (2048, 8192, False), "lm_head": (128256, 2048, False)}


def rows() -> list[str]:
    out = ["| arch | GEMM | N x K | M | BLOCK_N | SPLIT_K | CTAs (no split) | CTAs | CTAs per SM |",
           "|---|---|---|---|---|---|---|---|---|"]
    for arch in (90, 80):
        for name, (N, K, swiglu) in LAYER.items():
            for M in (1, 8):
                cfg = gemm_blocks(M, N, K, "bfloat16", arch)
                cfg = swiglu_blocks(cfg) if swiglu else cfg
                tiles = -(-N // cfg["BLOCK_N"]) * -(-M // cfg["BLOCK_M"])
                ctas = tiles * cfg["SPLIT_K"]
                out.append(f"| sm_{arch} | {name} | {N} x {K} | {M} | {cfg['BLOCK_N']} | {cfg['SPLIT_K']} | {tiles} "
                           f"| {ctas} | {ctas / SM_COUNT[arch]:.1f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=f"benchmarks/results/decode_gemm_ctas-{datetime.date.today()}.md")
    args = parser.parse_args()
    text = "\n".join(["# Decode GEMM programs per SM (Llama-3.2-1B layer shapes, bf16)", "",
                      "From `fxforge.codegen.blocks.gemm_blocks` (the decode table); made by "
                      "`benchmarks/decode_gemm_ctas.py`.", "", *rows(), ""])
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
