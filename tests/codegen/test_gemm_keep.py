"""The dense GEMM template's keep flags (FFN skipping's decode form, `ir/skip_ops.row_keep`): rows that
are off are not read, a tile whose rows are all off skips its K loop, and the result is the reference's
linear(x * keep) with the whole epilogue either way."""

from __future__ import annotations

import importlib
import os

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from fxforge.codegen.templates import gemm  # noqa: E402

if not isinstance(gemm.gemm_kernel, InterpretedFunction):
    gemm = importlib.reload(gemm)  # imported earlier without the interpreter


def test_keep_flags_skip_rows_and_whole_tiles():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 1, 64), torch.randn(32, 64), torch.randn(32)
    keep = torch.tensor([1.0, 0.0, 1.0]).reshape(3, 1, 1)
    x_off = torch.where(keep > 0, x, torch.nan)  # skipped rows hold garbage: never read
    got = gemm.linear(x_off, w, b, activation="silu", keep=keep)
    torch.testing.assert_close(got, F.silu(F.linear(x * keep, w, b)))
    w_nan = w.clone()
    w_nan[0, 0] = torch.nan  # read by any tile that runs its K loop
    off = torch.zeros(3, 1, 1)
    got = gemm.linear(x_off, w_nan, b, keep=off)
    torch.testing.assert_close(got, b.expand(3, 1, 32))  # every row off: no K loop, the epilogue of zeros


def test_qlinear_keep_flags():
    """The qlinear kernels with keep flags give what they give on the zeroed rows without them."""
    from fxforge.codegen.templates import qlinear as ql
    from fxforge.ir.lowp_ops import encode_weight

    if not isinstance(ql.qlinear_w8a8_int8_kernel, InterpretedFunction):
        ql = importlib.reload(ql)
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 1, 64), torch.randn(32, 64), torch.randn(32)
    keep = torch.tensor([0.0, 1.0, 0.0]).reshape(3, 1, 1)
    for scheme in ("w8a8-int8", "w4a16-int4"):
        weight = encode_weight(w, scheme)
        plain = ql.qlinear(x * keep, weight, scheme, b, activation="silu")
        torch.testing.assert_close(ql.qlinear(x * keep, weight, scheme, b, activation="silu", keep=keep), plain)
        torch.testing.assert_close(ql.qlinear(x * 0, weight, scheme, b, keep=keep * 0), b.expand(3, 1, 32))
