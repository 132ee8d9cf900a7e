"""Device functions of pointwise ops with no portable `tl` form (libdevice does not run under the interpreter):
`tanh` (the templates' copy of codegen's `expr.PRELUDE` `_tanh`: the GEMM epilogue's activation, attention's logit
soft-cap), `expm1`, `softplus` and the xIELU activation (`xielu`, Apertus' MLP: HF's `XIELUActivation`), shared by the dense
GEMM epilogue (`gemm.gemm_epilogue`, ACTIVATION "xielu") and the pointwise kernels the expression printer writes
(`expr_ops`: `_expm1(x)`, `_softplus(x, beta, threshold)`, `_xielu(x, alpha_p, alpha_n, beta, eps)`).

Decisions:
- `exp(x) - 1` loses every digit near 0 (xIELU takes expm1 at x <= eps = -1e-6, where the result is ~x), and
  libdevice's expm1 does not run under the interpreter: |x| < 0.5 takes the degree-8 Taylor polynomial (its
  truncation error is below 2e-8 relative there), beyond exp(x) - 1 cancels at most 1.5 ulp (|expm1| >= 0.39).
- xIELU is computed as the python path writes it, in fp32, op for op; its four scalars (already softplus'ed:
  alpha_p = softplus(a_p), alpha_n = beta + softplus(a_n)) are run-time arguments, so every layer runs one kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """1 - 2 / (exp(2x) + 1): exact limits at +-inf, no libdevice (as generated modules' `_tanh`)."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def expm1(x):
    """exp(x) - 1, accurate near 0 (see the module's decisions); exact limits: -1 at -inf, inf at inf, NaN."""
    p = 1.0 / 40320.0
    p = p * x + 1.0 / 5040.0
    p = p * x + 1.0 / 720.0
    p = p * x + 1.0 / 120.0
    p = p * x + 1.0 / 24.0
    p = p * x + 1.0 / 6.0
    p = p * x + 0.5
    p = (p * x + 1.0) * x
    return tl.where(tl.abs(x) < 0.5, p, tl.exp(x) - 1.0)


@triton.jit
def softplus(x, beta, threshold):
    """torch's softplus: x where beta*x > threshold, else log1p(exp(beta*x)) / beta (log1p by Kahan's
    log(u) * e / (u - 1), u = 1 + e: exact to a few ulp where 1 + e rounds, e itself where u is 1)."""
    bx = beta * x
    e = tl.exp(bx)
    u = 1.0 + e
    d = u - 1.0
    log1p = tl.where(u == 1.0, e, tl.log(u) * tl.where(d == e, 1.0, e / d))  # d == e: also e = inf
    return tl.where(bx > threshold, x, log1p / beta)


@triton.jit
def xielu(x, alpha_p, alpha_n, beta, eps):
    """where(x > 0, alpha_p*x*x + beta*x, (expm1(min(x, eps)) - x)*alpha_n + beta*x) on an fp32 tile."""
    bx = beta * x
    return tl.where(x > 0, alpha_p * x * x + bx, (expm1(tl.minimum(x, eps)) - x) * alpha_n + bx)
