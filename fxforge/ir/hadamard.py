"""The `hadamard` op: an orthonormal (block-)Hadamard transform of the last dim, and its matrices.

    hadamard(x) {block=0} -> y, same shape and dtype: the last dim (n) is cut into blocks of `block`
    elements (0: one block of n) and each block row-vector v becomes v @ H_b / sqrt(b).

H_b for b = 2^k * m, m in {1, 12, 20, 28} (`hadamard_sizes`), is the Kronecker product
H_m (x) S_{2^k}, with S the Sylvester (Walsh-Hadamard) matrix and H_m a Paley matrix: m=12 and
m=20 by Paley I (q = 11, 19), m=28 by Paley II (q = 13). So a block of b elements, viewed as an
[m, 2^k] matrix X, maps to H_m^T @ FWHT_rows(X) / sqrt(b): the Triton kernel's form
(`codegen/templates/hadamard.py`): a fast Walsh-Hadamard transform of each row, then one small
dot with H_m^T (skipped for m = 1).

The transform is orthogonal (H_b H_b^T = b I), so `linear(x, W) == linear(hadamard(x), hadamard(W))`
for the same block: the rotate pass folds the weight side offline and keeps x's side as this op.

Decisions: the reference computes in float64 and casts back to x's dtype (it is the ground truth the
kernels are checked against); matrices are cached per size; a size that is not 2^k * {1, 12, 20, 28}
is a ShapeError that names the nearest valid block sizes (use a block that divides n).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from fxforge.ir.errors import ShapeError
from fxforge.ir.ops import OpDef, register
from fxforge.ir.types import TensorType

BASES = (1, 12, 20, 28)  # the non-power-of-two factors a Hadamard block may have


def _legendre(a: int, q: int) -> int:
    a %= q
    if a == 0:
        return 0
    return 1 if pow(a, (q - 1) // 2, q) == 1 else -1


def _jacobsthal(q: int) -> Tensor:
    idx = torch.arange(q)
    diff = (idx[None, :] - idx[:, None]) % q
    table = torch.tensor([_legendre(a, q) for a in range(q)], dtype=torch.float64)
    return table[diff]


@functools.cache
def base_matrix(m: int) -> Tensor:
    """The unnormalised m x m Hadamard matrix for m in BASES (float64, entries +-1)."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if m in (12, 20):  # Paley I, q = m - 1 = 3 mod 4
        q = m - 1
        s = torch.zeros(m, m, dtype=torch.float64)
        s[0, 1:] = 1
        s[1:, 0] = -1
        s[1:, 1:] = _jacobsthal(q)
        return torch.eye(m, dtype=torch.float64) + s
    if m == 28:  # Paley II, q = 13 = 1 mod 4: conference matrix C (14 x 14) -> 28
        q = 13
        c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        c[0, 1:] = 1
        c[1:, 0] = 1
        c[1:, 1:] = _jacobsthal(q)
        one = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        eye_part = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        return torch.kron(c, one) + torch.kron(torch.eye(q + 1, dtype=torch.float64), eye_part)
    raise ShapeError(f"no Hadamard base matrix of order {m}; bases: {BASES}")


def factor(n: int) -> tuple[int, int] | None:
    """(m, 2^k) with n = m * 2^k and m in BASES, or None when n has no Hadamard matrix here."""
    if n <= 0:
        return None
    for m in BASES:
        if n % m == 0:
            p = n // m
            if p & (p - 1) == 0:
                return m, p
    return None


def is_hadamard_size(n: int) -> bool:
    return factor(n) is not None


def hadamard_sizes(limit: int) -> list[int]:
    """Every valid block size up to `limit`."""
    return [n for n in range(1, limit + 1) if is_hadamard_size(n)]


def largest_block(n: int, cap: int | None = None) -> int:
    """The largest valid block size that divides n (and is <= cap): 1 at worst."""
    for b in range(min(n, cap or n), 0, -1):
        if n % b == 0 and is_hadamard_size(b):
            return b
    return 1


@functools.cache
def hadamard_matrix(b: int) -> Tensor:
    """The orthonormal b x b matrix M (float64) with hadamard(x) = x @ M for one block."""
    f = factor(b)
    if f is None:
        raise ShapeError(f"hadamard: block size {b} is not 2^k * one of {BASES}; valid sizes near it: "
                         f"{[s for s in hadamard_sizes(2 * b) if b // 2 <= s <= 2 * b][:6]}")
    m, p = f
    s = torch.ones(1, 1, dtype=torch.float64)
    while s.shape[0] < p:
        s = torch.cat([torch.cat([s, s], 1), torch.cat([s, -s], 1)], 0)
    return torch.kron(base_matrix(m), s) / math.sqrt(b)


def effective_block(n: int, block: int) -> int:
    b = block or n
    if n % b:
        raise ShapeError(f"hadamard: block {b} does not divide the last dim {n}")
    return b


def hadamard_ref(x: Tensor, *, block: int = 0) -> Tensor:
    """x @ blockdiag(H_b) along the last dim, in float64, cast back to x's dtype."""
    n = x.shape[-1]
    b = effective_block(n, block)
    mat = hadamard_matrix(b).to(x.device)
    y = x.to(torch.float64).reshape(*x.shape[:-1], n // b, b) @ mat
    return y.reshape(x.shape).to(x.dtype)


def _infer(types: list[TensorType], attrs: dict) -> list[TensorType]:
    (x,) = types
    if x.rank == 0:
        raise ShapeError("hadamard: needs at least one dim")
    n, block = x.shape[-1], attrs["block"]
    if not isinstance(block, int) or block < 0:
        raise ShapeError(f"hadamard: block must be an int >= 0, got {block!r}")
    if isinstance(n, int):
        hadamard_matrix(effective_block(n, block))  # raises on a size without a Hadamard matrix
    elif block == 0:
        raise ShapeError("hadamard: a symbolic last dim needs an explicit block size")
    else:
        hadamard_matrix(block)
    if not x.dtype.is_float:
        raise ShapeError(f"hadamard: takes a float tensor, got {x.dtype}")
    return [x]


register(OpDef("hadamard", (1, 1), {"block": 0}, _infer, hadamard_ref, "composite",
               "hadamard(x) {block}: x @ blockdiag(H_block) / sqrt(block) along the last dim (orthonormal)",
               kernel="template"))
