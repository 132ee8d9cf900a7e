"""LoRC (low-rank compensation, ZeroQuant-V2 / ZeroQuant-FP): a rank-r correction of a quantized weight.

From the SVD of the quantization error E = W - Ŵ = U Σ Vᵀ, keep U_r Σ_r^½ ([out, r]) and V_r Σ_r^½
([in, r]); the layer then computes x Ŵᵀ + (x V') U'ᵀ, i.e. it uses Ŵ + U' V'ᵀ, the best rank-r
correction in Frobenius norm (Eckart-Young), so the weight error falls monotonically with r.

Decisions:
- The factors are stored in fp16 (`LORC_DTYPE`): they carry a correction that is already small
  (~10% of W for 4-bit weights), so fp16's 2^-11 relative rounding of it is ~1e-4 of W, invisible
  next to the quantization error, and it halves their bytes against fp32. The reference computes in f32.
- The SVD runs in float64 on the CPU (exact enough that the monotonicity is not spoiled by noise).
- The rank is capped at min(out, in).
"""

from __future__ import annotations

import torch
from torch import Tensor

LORC_DTYPE = torch.float16


def lorc_factors(w: Tensor, w_hat: Tensor, rank: int, dtype: torch.dtype = LORC_DTYPE) -> tuple[Tensor, Tensor]:
    """(U_r Σ_r^½ [out, r], V_r Σ_r^½ [in, r]) of the error W - Ŵ, in `dtype`."""
    if w.shape != w_hat.shape or w.dim() != 2:
        raise ValueError(f"lorc_factors takes two 2-D weights of one shape, got {list(w.shape)} and {list(w_hat.shape)}")
    rank = min(int(rank), *w.shape)
    if rank <= 0:
        raise ValueError(f"LoRC rank must be positive, got {rank}")
    err = (w.detach().to(torch.float64) - w_hat.detach().to(torch.float64)).cpu()
    u, s, vh = torch.linalg.svd(err, full_matrices=False)
    root = s[:rank].sqrt()
    u_r = u[:, :rank] * root
    v_r = vh[:rank].T * root
    return u_r.to(dtype).to(w.device), v_r.to(dtype).to(w.device)


def lorc_weight(w_hat: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """The effective weight Ŵ + U Vᵀ (f32), what the corrected layer multiplies by."""
    return w_hat.to(torch.float32) + u.to(torch.float32) @ v.to(torch.float32).T
