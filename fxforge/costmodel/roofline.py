"""The analytic baseline: predicted kernel time per arch from bytes moved, FLOPs and occupancy.

    t = kernel_time(features, figures, arch=90)     # seconds; figures: registers / shared (measured or predicted)
    occupancy(registers=128, shared=32768, warps=4, arch=90) -> 0.25

time = launch + max(bytes / (bandwidth * u_mem), flops / (peak[dtype] * u_compute)), where the utilisations
come from occupancy (resident warps per SM from registers and shared memory, against the SM's limits)
and from the share of SMs the grid fills in its last wave.

Decisions:
- Peaks are the data-sheet dense figures (H100 SXM for sm_90, A100 SXM for sm_80): tensor-core peak for
  16-bit and 8-bit operands, FMA peak for fp32 (fxforge's fp32 dots are exact fp32, no tf32).
- The learned model supplies registers and shared memory for kernels not built, so "the cost model turns
  predicted figures into predicted time per arch" through this one formula; with no model at all,
  registers default to 64 and shared memory to the tile's operand bytes (the roofline fallback).
- The baselines of the other targets (for eval's `roofline_spearman`): registers ~ accumulator tile per
  thread + 32, instructions ~ ops x tile elements per thread; simple, and what a hand model would say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    sms: int
    bandwidth: float  # bytes/s
    peak16: float  # FLOP/s, 16-bit tensor core
    peak8: float  # FLOP/s, 8-bit (int8 / fp8) tensor core
    peak32: float  # FLOP/s, fp32 FMA
    regs_per_sm: int = 65536
    shared_per_sm: int = 228 * 1024
    max_warps: int = 64
    launch: float = 3e-6


ARCHS: dict[int, Arch] = {
    90: Arch(132, 3.35e12, 989e12, 1979e12, 67e12, shared_per_sm=228 * 1024),
    80: Arch(108, 2.04e12, 312e12, 624e12, 19.5e12, shared_per_sm=164 * 1024),
}


def _raw(features: dict[str, float], key: str) -> float:
    return 2.0 ** features.get(key, 0.0) - 1.0


def occupancy(registers: float, shared: float, warps: float, arch: int) -> float:
    """Resident warps per SM / the SM's maximum (0..1), from registers per thread and shared memory per block."""
    a = ARCHS[arch]
    threads = 32 * max(1.0, warps)
    by_regs = a.regs_per_sm // max(1.0, math.ceil(max(registers, 1.0) / 8) * 8 * threads)
    by_shared = a.shared_per_sm // shared if shared > 0 else 32
    blocks = max(1, min(by_regs, by_shared, 32, a.max_warps // max(1, int(warps))))
    return min(1.0, blocks * warps / a.max_warps)


def programs(features: dict[str, float]) -> float:
    """Grid size estimate: output tiles for GEMMs, output elements / block for the rest."""
    m, n = _raw(features, "log_M"), _raw(features, "log_N")
    bm, bn = _raw(features, "log_BLOCK_M"), _raw(features, "log_BLOCK_N")
    if m and bm and bn:
        return math.ceil(m / bm) * math.ceil(max(n, 1.0) / bn)
    block = max(_raw(features, k) for k in ("log_BLOCK", "log_BLOCK_SIZE", "log_XBLOCK", "log_BLOCK_M", "log_tile"))
    return max(1.0, math.ceil(_raw(features, "log_out_numel") / max(block, 1.0)))


def kernel_time(features: dict[str, float], figures: dict[str, float] | None, arch: int) -> float:
    """Predicted seconds of one launch of this kernel on sm_`arch`."""
    a = ARCHS[arch]
    figures = figures or {}
    warps = features.get("num_warps", 4.0)
    tile_bytes = _raw(features, "log_tile") * 2
    occ = occupancy(figures.get("registers", 64.0), figures.get("shared", tile_bytes), warps, arch)
    grid = programs(features)
    waves = grid / (a.sms * max(1.0, occ * a.max_warps / warps))
    fill = min(1.0, grid / a.sms) * (waves / math.ceil(waves) if waves > 1 else 1.0)
    bits = features.get("min_bits", 32.0)
    peak = a.peak8 if bits <= 8 and features.get("kind=gemm") else a.peak16 if bits <= 16 else a.peak32
    if not (features.get("kind=gemm") or features.get("kind=attention")):
        peak = a.peak32  # no dot: CUDA-core math
    u = max(0.05, fill * min(1.0, 4 * occ))
    return a.launch + max(_raw(features, "log_bytes") / (a.bandwidth * u), _raw(features, "log_flops") / (peak * u))


def baseline(features: dict[str, float], target: str, arch: int) -> float:
    """The analytic estimate of a figure (eval's `roofline_spearman`)."""
    threads = 32 * features.get("num_warps", 4.0)
    tile = _raw(features, "log_BLOCK_M") * max(1.0, _raw(features, "log_BLOCK_N")) or _raw(features, "log_tile")
    if target == "registers":
        return 32 + tile / threads
    if target == "instructions":
        return features.get("n_ops", 1.0) * max(1.0, tile / threads)
    if target == "time":
        return kernel_time(features, None, arch)
    return _raw(features, "log_tile") * 2
