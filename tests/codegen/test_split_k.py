"""Split-K in the dense GEMM template (issue #13, item 4): the decode table splits K for M <= 16 GEMVs
whose output tiles cannot put two CTAs on every SM at BLOCK_N = 16, and the split kernel agrees with
torch (the interpreter keeps one split, so the tests force splits, as decode_attention's `splits=`).

Kernels run under the Triton interpreter (TRITON_INTERPRET=1 before triton is imported)."""

from __future__ import annotations

import importlib
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from fxforge.codegen.blocks import SM_COUNT, gemm_blocks, split_steps, swiglu_blocks  # noqa: E402
from fxforge.codegen.pool import Workspace  # noqa: E402
from fxforge.codegen.templates import gemm  # noqa: E402
from fxforge.errors import ShapeError  # noqa: E402

if not isinstance(gemm.gemm_kernel, InterpretedFunction):
    gemm = importlib.reload(gemm)  # imported earlier without the interpreter

# max abs error over max |reference|: fp32 exact dots; 16-bit outputs round once (bf16 2^-8, fp16 2^-11)
REL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


@pytest.mark.parametrize("arch", [90, 80])
def test_decode_table_splits_k_where_block_n_16_is_not_enough(arch):
    ctas = 2 * SM_COUNT[arch]
    for M, N, K in [(1, 2048, 8192), (1, 2048, 2048), (16, 512, 8192), (8, 3072, 2048)]:  # down, o_proj, ...
        cfg = gemm_blocks(M, N, K, torch.bfloat16, arch)
        tiles = -(-N // cfg["BLOCK_N"])
        steps = -(-K // cfg["BLOCK_K"])
        assert cfg["BLOCK_N"] == 16 and cfg["SPLIT_K"] > 1, (M, N, K, cfg)
        assert tiles * cfg["SPLIT_K"] >= ctas, (M, N, K, cfg)  # >= 2 CTAs per SM
        assert split_steps(steps, cfg["SPLIT_K"])[1] == cfg["SPLIT_K"]  # the launcher launches that many
    assert gemm_blocks(1, 8192, 2048, torch.float16, arch)["SPLIT_K"] == 1  # gate/up: enough tiles
    assert gemm_blocks(1, 2048, 64, torch.float16, arch)["SPLIT_K"] == 1  # K too short to split
    assert gemm_blocks(32, 2048, 8192, torch.float16, arch)["SPLIT_K"] == 1  # the M <= 64 bucket: no split
    assert swiglu_blocks(gemm_blocks(1, 2048, 8192, torch.float16, arch))["SPLIT_K"] == 1
    assert gemm_blocks(1, 2048, 8192, torch.float32, arch)["SPLIT_K"] == 1  # fp32 keeps the general rule
    assert gemm_blocks(1, 2048, 8192, torch.float16)["SPLIT_K"] == 1  # no arch: the interpreter


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("splits", [2, 3])
def test_split_k_matches_torch_with_bias_and_residual(dtype, splits):
    M, N, K = 3, 40, 448  # 7 K steps of 64 under the interpreter: splits of 4 + 3, and 3 + 3 + 1
    x, w = _randn(M, K, dtype=dtype, seed=1), _randn(N, K, dtype=dtype, seed=2, scale=1 / 16)
    b, r = _randn(N, dtype=dtype, seed=3), _randn(M, N, dtype=dtype, seed=4)
    ws = Workspace()
    y = gemm.linear(x, w, b, activation="gelu", residual=r, split_k=splits, ws=ws)
    ref = F.gelu(x.float() @ w.float().T + b.float()) + r.float()
    assert y.dtype == dtype and (y.float() - ref).abs().max() <= REL[dtype] * ref.abs().max()
    assert torch.equal(y, gemm.linear(x, w, b, activation="gelu", residual=r, split_k=splits, ws=ws))  # deterministic
    assert ws.locks is not None and int(ws.locks.abs().sum()) == 0  # every tile's counter re-armed
    assert ws.grows == 1


def test_split_k_with_norm_prologue_and_keep_rows():
    M, N, K = 4, 24, 256
    x, w = _randn(M, K, dtype=torch.float16, seed=5), _randn(N, K, dtype=torch.float16, seed=6, scale=1 / 8)
    g = _randn(K, dtype=torch.float16, seed=7)
    keep = torch.tensor([[1.0], [0.0], [1.0], [0.0]], dtype=torch.float16)
    x = x * keep  # skipped rows are zero (row_keep)
    out = torch.empty(M, N, dtype=torch.float16)
    y = gemm.linear(x, w, norm=(g, 1e-6), keep=keep, split_k=4, out=out)
    ref = F.rms_norm(x.float(), (K,), g.float(), 1e-6).half().float() @ w.float().T
    assert y.data_ptr() == out.data_ptr()
    assert (y.float() - ref).abs().max() <= REL[torch.float16] * ref.abs().max()
    with pytest.raises(ShapeError, match="swiglu does not split"):
        gemm.linear(x, torch.cat([w, w]), swiglu=True, split_k=2)
