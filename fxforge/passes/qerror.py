"""The error of one linear layer under a quantization scheme, on given input rows: what smoothing and
rotation search on and report (before/after each method), measured the same way as the quantize pass
(`||y_q - y|| / ||y||`, round-to-nearest weights, the scheme's per-token activation quantization)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fxforge.ir.lowp_ops import decode_weight, encode_weight, fake_quant_act, get_scheme


def fake_quant_weight(w: Tensor, scheme: str, group: int | None = None) -> Tensor:
    """The dequantized round-to-nearest weight of a scheme (what `quantize` would store)."""
    sc = get_scheme(scheme)
    return decode_weight(encode_weight(w, scheme, group if sc.group else None))


def layer_error(x: Tensor, w: Tensor, scheme: str, group: int | None = None, *,
                w_hat: Tensor | None = None, y: Tensor | None = None) -> float:
    """Relative output error of the quantized layer on rows x [n, in] (bias left out: it cancels)."""
    sc = get_scheme(scheme)
    if y is None:
        y = F.linear(x, w.float())
    w_hat = fake_quant_weight(w, scheme, group) if w_hat is None else w_hat
    y_q = F.linear(fake_quant_act(x, sc.act_format), w_hat)
    denom = y.norm().item()
    err = (y_q - y).norm().item()
    return err / denom if denom > 0 else err


def rows_for(samples: Tensor, n: int = 512) -> Tensor:
    """At most n rows (the first ones: calibration samples are deterministic)."""
    return samples[:n].to(torch.float32)


def report_inputs(calibration: list, rows: int = 512) -> list:
    """The first calibration inputs holding at least `rows` token rows (by their first tensor's leading
    dims): enough for a per-layer error report, without evaluating the whole calibration set again."""
    out, seen = [], 0
    for args in calibration:
        out.append(args)
        first = next((t for t in args if isinstance(t, torch.Tensor)), None)
        seen += first.numel() if first is not None and first.dim() <= 2 else (first[..., 0].numel() if first is not None else 1)
        if seen >= rows:
            break
    return out
