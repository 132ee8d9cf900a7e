"""Ranking GEMM tile configs per (shape, arch): constraints first, then the cost model.

    ranked = rank_gemm_tiles(M=16, N=4096, K=4096, dtype="float16", arch=90)   # best first
    ranked[0] -> {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3,
                  "registers": 96.0, "shared": 24576, "time_us": 41.2}

Decisions:
- As in FlashRNN's tiling, the hardware limits are constraints solved before any ranking: a config whose
  operand tiles need more shared memory than the arch allows (stages x (BM*BK + BK*BN) x itemsize), or
  whose fp32 accumulator alone needs more than the register budget per thread (BM*BN / threads > 128
  of the 255 registers), or a tile larger than the padded problem, is never ranked.
- The rest are ranked by the roofline time (bytes = the operand traffic the tile causes: A re-read per
  column of tiles, W per row of tiles, no L2 credit) of the kernel with the learned model's registers and shared
  memory (the same features the profile records for `gemm_kernel`); a config the model predicts to spill
  is dropped. Without a model file the roofline ranks with its defaults.
- `codegen/blocks.py` keeps its measured heuristics (codegen may not import the cost model); this ranking
  is what a tuner or a later default would consult, and `tests/costmodel` checks it against those rules.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from fxforge.codegen.blocks import next_pow2
from fxforge.codegen.build import SHARED_LIMITS
from fxforge.costmodel.features import group_features, launch_features, log2p
from fxforge.costmodel.models import CostModel, shipped_model
from fxforge.costmodel.roofline import kernel_time
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph
from fxforge.ir.partition import KernelGroup
from fxforge.ir.types import TensorType

SIZES_M = (16, 32, 64, 128)
SIZES_N = (16, 32, 64, 128, 256)
SIZES_K = (16, 32, 64, 128)
WARPS = (4, 8)
STAGES = (2, 3, 4)
ACC_REGS = 128  # accumulator registers per thread allowed (of 255): the rest hold operands and addresses


def _group(m: int, n: int, k: int, dtype: str) -> tuple[Graph, KernelGroup]:
    g = Graph("tile")
    dt = DType.from_torch(getattr(torch, dtype))
    x = g.add_input("x", TensorType((m, k), dt))
    g.add_weight("w", torch.zeros(n, k, dtype=getattr(torch, dtype)))
    w = g.add_op("const", [], {"weight": "w"}).result
    op = g.add_op("linear", [x, w])
    return g, KernelGroup("gemm", [op], [x, w], [op.result], "tile ranking")


def feasible(cfg: dict[str, int], m: int, n: int, k: int, itemsize: int, arch: int) -> bool:
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    if bm > max(16, next_pow2(m)) or bn > max(16, next_pow2(n)) or bk > max(16, next_pow2(k)):
        return False
    shared = cfg["num_stages"] * (bm * bk + bk * bn) * itemsize
    return shared <= SHARED_LIMITS.get(arch, 99 * 1024) and bm * bn / (32 * cfg["num_warps"]) <= ACC_REGS


def rank_gemm_tiles(M: int, N: int, K: int, dtype: str = "float16", arch: int = 90,
                    model: CostModel | None | str = "shipped", top: int = 8) -> list[dict[str, Any]]:
    """The `top` feasible tile configs of an M x N x K GEMM on sm_`arch`, fastest predicted first."""
    model = shipped_model() if model == "shipped" else model
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    graph, group = _group(M, N, K, dtype)
    base = {**group_features(graph, group), "arch": float(arch)}
    ranked = []
    for bm, bn, bk, warps, stages in itertools.product(SIZES_M, SIZES_N, SIZES_K, WARPS, STAGES):
        cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}
        if not feasible(cfg, M, N, K, itemsize, arch):
            continue
        spec = {"constexprs": {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                "signature": {"a": f"*fp{8 * itemsize}", "w": f"*fp{8 * itemsize}", "out": f"*fp{8 * itemsize}"},
                "num_warps": warps, "num_stages": stages}
        # operand traffic with this tile: A is read once per column of tiles, W once per row of tiles
        traffic = itemsize * (M * K * -(-N // bn) + N * K * -(-M // bm) + M * N)
        feats = {**base, **launch_features(spec), "log_bytes": log2p(traffic)}
        figures = model.predict(feats) if isinstance(model, CostModel) else None
        if figures is not None and (figures["spills"] >= 1 or figures["registers"] > 255):
            continue
        shared = stages * (bm * bk + bk * bn) * itemsize
        figs = {"registers": figures["registers"] if figures else 64.0, "shared": float(shared)}
        ranked.append({**cfg, **figs, "time_us": kernel_time(feats, figs, arch) * 1e6})
    ranked.sort(key=lambda r: (round(r["time_us"], 3), r["registers"], r["shared"]))
    return ranked[:top]
