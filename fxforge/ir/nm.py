"""The N:M sparse weight codec: what an `#nm<...>` weight means and how it is packed.

`NM(n, m, dtype, scheme, group)` on a 2-D [out, in] weight: in every block of m consecutive input
columns at most n values are nonzero; columns past the last full block (in % m of them, the "tail")
are stored dense. Payload:
    "index"   uint8 [out, ceil(K * b / 8)]: the position (0 .. m-1) of each kept value inside its block,
              b = ceil(log2 m) bits each, ascending within a block, packed as one little-endian bit
              stream per row (value i occupies bits i*b .. i*b+b-1), K = (in // m) * n kept values
    plain (scheme None):   "values" [out, K + tail] in 16 bits (f16; bf16 for a bf16 weight): the kept
              values of each row in order, then the tail columns
    quantized (scheme set): the `#quantized` payload (`fxforge.ir.lowp_ops`: "codes", "scale", ...)
              of that same [out, K + tail] matrix under the scheme, groups of `group` kept values
So 2:4 with fp16 values costs 16/2 + 2/2 = 9 bits per original weight and 2:4 + int4 4/2 + 2/2 = 3
bits + scales; `Weight.nbytes()` is exactly that (up to each row's last partial byte of index).

`dtype` is the logical dtype of the decoded weight (the `const`'s dtype); decoding
(`decode_nm`, registered as `WEIGHT_DECODERS["nm"]`) rebuilds the dense [out, in] tensor with zeros
in the pruned places, so `linear` and `qlinear` read an NM weight with their usual reference
semantics. The Triton sparse template reads the packed form directly.

Decisions:
- Every full block keeps exactly n entries (the mask's), even if a kept value happens to be 0, so the
  index layout is fixed-size and a kernel needs no counts.
- Plain values are 16-bit whatever the logical dtype (an fp32 model's kept weights are rounded to
  fp16, ~5e-4 relative, far below the pruning error): that is the format the issue's byte counts
  and sparse tensor cores assume.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from fxforge.ir.dtypes import DType
from fxforge.ir.evaluate import WEIGHT_DECODERS
from fxforge.ir.graph import Weight
from fxforge.ir.lowp_ops import decode_weight, get_scheme, weight_from_codes
from fxforge.ir.types import NM, Quantized

MAX_M = 16

# The sparsity options' vocabulary lives with the encoding, so CompileConfig (which may import only the IR)
# and the sparsify pass check them with one function.
SPARSITY_METHODS = ("magnitude", "wanda", "sparsegpt")
_SPEC = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def nm_pattern(spec: Any) -> tuple[int, int] | None:
    """"2:4" -> (2, 4); None for malformed text, N >= M, N < 1 or M > MAX_M."""
    match = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        return None
    n, m = int(match[1]), int(match[2])
    return (n, m) if 1 <= n < m <= MAX_M else None


def sparsity_options_problem(sparsity: Any, overrides: Any, method: Any) -> str | None:
    """What is wrong with the sparsity options, or None."""
    if overrides is not None and not isinstance(overrides, dict):
        return f"sparsity_overrides must be a dict {{layer glob: 'N:M' or None}}, got {type(overrides).__name__}"
    for spec in [sparsity, *(overrides or {}).values()]:
        if spec is not None and nm_pattern(spec) is None:
            return (f"sparsity={spec!r} is not an N:M pattern with 1 <= N < M <= {MAX_M} (keep N of every M weights); "
                    "write it like '2:4'")
    if method is not None and method not in SPARSITY_METHODS:
        return f"sparsity_method={method!r} is not one of {SPARSITY_METHODS} (None: the best the calibration allows)"
    return None


def index_bits(m: int) -> int:
    """Bits of one kept value's position inside an m-block: ceil(log2 m)."""
    return max(1, math.ceil(math.log2(m)))


def pack_bits(idx: Tensor, bits: int) -> Tensor:
    """[rows, K] integers < 2^bits -> uint8 [rows, ceil(K * bits / 8)], one little-endian bit stream per row."""
    rows, k = idx.shape
    shifts = torch.arange(bits, dtype=torch.int64)
    stream = ((idx.to(torch.int64).unsqueeze(-1) >> shifts) & 1).reshape(rows, k * bits)
    pad = (-stream.shape[1]) % 8
    stream = torch.nn.functional.pad(stream, (0, pad)).reshape(rows, -1, 8)
    return (stream << torch.arange(8, dtype=torch.int64)).sum(-1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, k: int) -> Tensor:
    """Inverse of `pack_bits`: int64 [rows, k]."""
    rows = packed.shape[0]
    stream = ((packed.to(torch.int64).unsqueeze(-1) >> torch.arange(8, dtype=torch.int64)) & 1).reshape(rows, -1)
    vals = stream[:, : k * bits].reshape(rows, k, bits)
    return (vals << torch.arange(bits, dtype=torch.int64)).sum(-1)


def check_mask(kept: Tensor, n: int, m: int) -> None:
    full = (kept.shape[1] // m) * m
    counts = kept[:, :full].reshape(kept.shape[0], -1, m).sum(-1)
    if counts.numel() and not bool((counts == n).all()):
        raise ValueError(f"an N:M mask must keep exactly {n} of every {m} columns (full blocks)")


def compress(x: Tensor, kept: Tensor, n: int, m: int) -> tuple[Tensor, Tensor]:
    """(kept values then tail [out, K + tail], block positions int64 [out, K]) of `x` [out, in]."""
    check_mask(kept, n, m)
    out_f, in_f = x.shape
    full = (in_f // m) * m
    blocks = kept[:, :full].reshape(out_f, -1, m)
    # positions of the kept entries, ascending: sort keys put kept ones first, in column order
    order = torch.argsort((~blocks).to(torch.int64) * m + torch.arange(m), dim=-1)[..., :n]
    vals = torch.gather(x[:, :full].reshape(out_f, -1, m), -1, order).reshape(out_f, -1)
    return torch.cat([vals, x[:, full:]], dim=1), order.reshape(out_f, -1)


def expand(values: Tensor, pos: Tensor, n: int, m: int, in_f: int) -> Tensor:
    """Dense [out, in] from compressed values and block positions (inverse of `compress`)."""
    out_f = values.shape[0]
    k = pos.shape[1]
    dense = torch.zeros(out_f, k // n if n else 0, m, dtype=values.dtype)
    dense.scatter_(-1, pos.reshape(out_f, -1, n), values[:, :k].reshape(out_f, -1, n))
    return torch.cat([dense.reshape(out_f, -1), values[:, k:]], dim=1)[:, :in_f]


def _placeholder(shape: tuple[int, int], dtype: DType) -> Tensor:
    return torch.zeros((), dtype=dtype.torch).expand(*shape)


def encode_nm(w: Tensor, kept: Tensor, n: int, m: int, dtype: DType | None = None) -> Weight:
    """Plain N:M weight: the kept entries of `w` [out, in] (mask `kept`) in 16 bits, plus the index."""
    dtype = dtype or DType.from_torch(w.dtype)
    vals, pos = compress(w.detach(), kept, n, m)
    store = torch.bfloat16 if dtype == DType.bf16 else torch.float16
    payload = {"values": vals.to(store).contiguous(), "index": pack_bits(pos, index_bits(m))}
    return Weight(_placeholder(tuple(w.shape), dtype), NM(n, m, dtype), payload)


def encode_nm_quantized(codes: Tensor, kept: Tensor, n: int, m: int, scheme: str, group: int,
                        params: dict[str, Tensor]) -> Weight:
    """Quantized N:M weight from unpacked codes [out, in] (pruned places ignored) and the scheme's
    params for the compressed matrix's groups (`group` kept values each)."""
    if codes.dtype.is_floating_point:  # fp8 codes: move them as bytes (gather has no fp8 kernel)
        codes = codes.view(torch.uint8)
    vals, pos = compress(codes, kept, n, m)
    inner = weight_from_codes(vals, scheme, group, params)
    payload = {**inner.payload, "index": pack_bits(pos, index_bits(m))}
    return Weight(_placeholder(tuple(codes.shape), DType.f32), NM(n, m, DType.f32, scheme, group), payload)


def inner_weight(weight: Weight) -> Weight:
    """The `#quantized` weight of a quantized NM weight's compressed [out, K + tail] matrix."""
    enc = weight.encoding
    sc = get_scheme(enc.scheme)
    p = {k: v for k, v in weight.payload.items() if k != "index"}
    qenc = Quantized(sc.weight_format, axis=1, group=enc.group, scale_dtype=DType.from_torch(p["scale"].dtype),
                     zero_point=sc.zero_point)
    out_f, in_f = weight.data.shape
    k = (in_f // enc.m) * enc.n + in_f % enc.m
    return Weight(torch.zeros((), dtype=torch.float32).expand(out_f, k), qenc, p)


def decode_nm(weight: Weight) -> Tensor:
    """The dense [out, in] tensor (logical dtype) an NM weight stands for."""
    enc = weight.encoding
    if not isinstance(enc, NM):
        raise ValueError(f"decode_nm takes an #nm weight, got encoding {enc!r}")
    out_f, in_f = weight.data.shape
    k = (in_f // enc.m) * enc.n
    pos = unpack_bits(weight.payload["index"], index_bits(enc.m), k)
    values = decode_weight(inner_weight(weight)) if enc.scheme else weight.payload["values"]
    return expand(values, pos, enc.n, enc.m, in_f).to(enc.dtype.torch)


WEIGHT_DECODERS["nm"] = decode_nm
