"""Split-K for the decode GEMVs (issue #13, item 4): the K loop of one output tile runs as SPLIT_K
programs (grid axis 1), and the tile's last program sums the fp32 partials and runs the epilogue.

`blocks.decode_gemm_blocks` asks for splits when an M <= 16 GEMM has too few output tiles to put two
CTAs on every SM even at BLOCK_N = 16 (o_proj and down_proj of a Llama-3.2-1B shape: N = 2048, 128
tiles for 132 SMs): `gemm_kernel` with SPLIT_K > 1 stores its partial in part[SPLIT_K, M, N] (scratch
from the pool's workspace), counts its arrival on the tile's counter, and the program that arrives last
sums the SPLIT_K partials in split order and runs the epilogue (bias, activation, mul, residual, cast).

Decisions:
- Deterministic: the partials are summed by one program in the fixed order s = 0..SPLIT_K-1, whichever
  program arrives last (fp32 atomics on the output would add in arrival order: results that vary from
  run to run, and no place for a nonlinear epilogue).
- One launch, not a GEMM plus a reduce kernel: the "last program reduces" fixup (CUDA's
  threadFenceReduction pattern: store, barrier, an acq_rel atomic on the tile's counter, the last one
  reads with .cg loads). The launch budget per decoder layer holds on every executor.
- The counters are zero before each launch and the last program re-arms its tile's to zero, so a
  CUDA graph replays the kernel with no memset node (`pool.Workspace.counters`).
- The RMSNorm prologue computes each row's 1/rms over the whole K in every split (A is M <= 16 rows:
  a few KB from L2); SwiGLU never splits (SiLU needs the whole gate sum; `blocks.swiglu_blocks`).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def split_range(n_k, per):
    """This program's K steps [k_lo, k_hi) of the tile's n_k (`per` steps per split)."""
    k_lo = tl.program_id(1) * per
    return k_lo, tl.minimum(k_lo + per, n_k)


@triton.jit
def split_sum(acc, part_ptr, lock_ptr, offs_m, offs_n, mask_m, mask_n, M, N, SPLIT_K: tl.constexpr):
    """Stores this split's partial; returns (is this the tile's last split, the sum of all its partials
    in split order: meaningful only for the last)."""
    tile = tl.program_id(0)
    mask = mask_m[:, None] & mask_n[None, :]
    p_ptrs = part_ptr + offs_m[:, None] * N + offs_n[None, :]
    tl.store(p_ptrs + tl.program_id(1) * M * N, acc, mask=mask)
    tl.debug_barrier()  # every thread's partial is stored before the arrival is counted
    count = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
    last = count == SPLIT_K - 1
    total = tl.zeros_like(acc)
    if last:
        for s in range(SPLIT_K):
            total += tl.load(p_ptrs + s * M * N, mask=mask, other=0.0, cache_modifier=".cg")
        tl.atomic_xchg(lock_ptr + tile, 0)  # re-armed for the next launch
    return last, total
