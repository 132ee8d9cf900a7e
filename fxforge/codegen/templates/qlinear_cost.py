"""SASS instructions per weight of the quantized decode GEMMs: the figure issue #13 item 5 sets a target for.

`weights_per_thread(spec)` is how many weights one thread consumes per K-loop iteration of a qlinear
build spec (`qlinear_specs.qlinear_spec`): BLOCK_N * BLOCK_K / (32 * num_warps); `per_weight(spec, build)`
divides the build's main-loop instruction count (`KernelBuild.loop_instructions`, parsed by
`fxforge.codegen.sass`) by it; `decode_per_weight(scheme, M, N, K, archs)` builds the decode-shaped
kernel of a scheme for each arch (subprocesses, no GPU) and returns {arch: (per weight, build)}.

Decisions:
- Counted per thread: a Marlin-class kernel spends ~1 instruction per weight of the thread's share
  (dequantization of 8 nibbles in ~9 instructions, one mma per 4-8 weights), which is the bar the
  issue sets (<= 2); the loop body is the steady-state pipelined loop (prologue/epilogue excluded).
"""

from __future__ import annotations

from fxforge.codegen.build import KernelBuild, build_in_subprocess
from fxforge.codegen.templates.qlinear_specs import qlinear_spec


def weights_per_thread(spec: dict) -> float:
    """Weights one thread decodes per K-loop iteration of a qlinear build spec."""
    c = spec["constexprs"]
    return c["BLOCK_N"] * c.get("BLOCK_K", 128) * c.get("UNROLL", 1) / (32 * spec["num_warps"])


def per_weight(spec: dict, build: KernelBuild) -> float:
    """Main-loop SASS instructions per weight (0.0 when the build failed or found no loop)."""
    if not build.ok or not build.loop_instructions:
        return 0.0
    return build.loop_instructions / weights_per_thread(spec)


def decode_per_weight(scheme: str, M: int = 16, N: int = 4096, K: int = 4096, archs: tuple[int, ...] = (90, 80),
                      **spec_kwargs) -> dict[int, tuple[float, KernelBuild]]:
    """{arch: (instructions per weight, build)} of the scheme's kernel at M x N x K (fp16 activations)."""
    spec = qlinear_spec(scheme, M, N, K, bias=False, **spec_kwargs)
    out = {}
    for arch in archs:
        (build,) = build_in_subprocess([spec], arch)
        out[arch] = (per_weight(spec, build), build)
    return out
