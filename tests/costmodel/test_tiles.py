"""Tile ranking: limits are constraints (never ranked past), and the ranking follows the shape."""

from fxforge.codegen.build import SHARED_LIMITS
from fxforge.costmodel.tiles import ACC_REGS, feasible, rank_gemm_tiles


def test_constraints_exclude_configs_over_the_limits():
    big = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4}
    assert not feasible(big, 4096, 4096, 4096, 2, 80)  # 384 KiB of shared memory, 128x256 fp32 acc on 4 warps
    assert not feasible({**big, "BLOCK_M": 64}, 16, 4096, 4096, 2, 90)  # tile taller than the padded problem
    for arch in (80, 90):
        for r in rank_gemm_tiles(512, 1024, 1024, "float16", arch, model=None, top=50):
            assert r["shared"] <= SHARED_LIMITS[arch]
            assert r["BLOCK_M"] * r["BLOCK_N"] / (32 * r["num_warps"]) <= ACC_REGS


def test_decode_ranks_thin_tiles_and_prefill_wide_ones():
    decode = rank_gemm_tiles(1, 4096, 4096, "float16", 90, model=None)[0]
    prefill = rank_gemm_tiles(4096, 4096, 4096, "float16", 90, model=None)[0]
    assert decode["BLOCK_M"] == 16
    assert prefill["BLOCK_M"] * prefill["BLOCK_N"] > decode["BLOCK_M"] * decode["BLOCK_N"]
    assert prefill["time_us"] > decode["time_us"]
