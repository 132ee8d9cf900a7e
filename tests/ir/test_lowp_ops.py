"""Low-precision ops: qlinear's reference against an independent torch computation per scheme, the
ZeroQuant-FP power-of-two constraint, W4A8 error bounds, LoRC, quantize/dequantize, text round trip."""

import pytest
import torch
import torch.nn.functional as F

from fxforge.ir import DType, Graph, ShapeError, TensorType, evaluate, print_graph, sym, verify
from fxforge.ir.lowp_ops import MAX_SHIFT, SCHEMES, decode_weight, encode_weight
from fxforge.ir.parser import parse_graph
from fxforge.passes.lorc import lorc_factors, lorc_weight

FP4_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def rand_weight(out=48, inp=256, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.05


def fp4_round(x):
    """Nearest FP4-E2M1 value by brute force over the grid (ties are measure-zero on random data)."""
    mag = x.abs().clamp(max=6.0)
    idx = (mag.unsqueeze(-1) - FP4_GRID).abs().argmin(-1)
    return torch.sign(x) * FP4_GRID[idx]


def independent_weight(w, scheme, group):
    """Dequantized weight written from the definitions with plain torch (no fxforge code)."""
    out, inp = w.shape
    if scheme == "w8a8-int8":
        s = w.abs().amax(1, keepdim=True) / 127
        return torch.round(w / s).clamp(-127, 127) * s
    if scheme == "w8a8-fp8":
        s = w.abs().amax(1, keepdim=True) / 448
        return (w / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s
    wg = w.reshape(out, inp // group, group)
    if scheme == "w4a16-int4":
        lo, hi = wg.amin(-1, keepdim=True).clamp(max=0), wg.amax(-1, keepdim=True).clamp(min=0)
        s = ((hi - lo) / 15).half().float()
        zp = torch.round(-lo / s).clamp(0, 15)
        q = (torch.round(wg / s) + zp).clamp(0, 15)
        return ((q - zp) * s).reshape(out, inp)
    s_i = wg.abs().amax(-1, keepdim=True) / 6
    s_max = s_i.amax(1, keepdim=True)
    k = torch.floor(torch.log2(s_max / s_i)).clamp(0, MAX_SHIFT)
    s = s_max * 2.0**-k
    return (fp4_round(wg / s) * s).reshape(out, inp)


def independent_act(x, fmt):
    if fmt is None:
        return x
    amax = x.abs().amax(-1, keepdim=True)
    if fmt == "i8":
        s = amax / 127
        return torch.round(x / s).clamp(-127, 127) * s
    s = amax / 448
    return (x / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s


def qlinear_graph(weight, bias=None, lorc=None, scheme="w8a8-int8"):
    g = Graph()
    x = g.add_input("x", TensorType((sym("s0"), 7, 256), DType.f32))
    g.add_weight("w.q", weight)
    ops = [x, g.add_op("const", [], {"weight": "w.q"}).result]
    if bias is not None:
        g.add_weight("b", bias)
        ops.append(g.add_op("const", [], {"weight": "b"}).result)
    rank = 0
    if lorc is not None:
        for n, t in zip(("u", "v"), lorc):
            g.add_weight(n, t)
            ops.append(g.add_op("const", [], {"weight": n}).result)
        rank = lorc[0].shape[1]
    sc = SCHEMES[scheme]
    y = g.add_op("qlinear", ops, {"scheme": scheme, "act_format": sc.act_format,
                                  "group": weight.encoding.group, "lorc_rank": rank}).result
    g.set_outputs([y])
    verify(g)
    return g


CASES = [("w8a8-int8", None), ("w8a8-fp8", None), ("w4a16-int4", 128), ("w4a16-int4", 32), ("w4a8-fp", 32)]


@pytest.mark.parametrize("scheme,group", CASES)
def test_qlinear_reference_matches_independent_torch(scheme, group):
    w = rand_weight()
    bias = torch.randn(48)
    enc = encode_weight(w, scheme, group)
    w_ind = independent_weight(w, scheme, group or 256)
    torch.testing.assert_close(decode_weight(enc), w_ind, rtol=1e-6, atol=1e-7)
    x = torch.randn(3, 7, 256, generator=torch.Generator().manual_seed(1))
    (y,) = evaluate(qlinear_graph(enc, bias, scheme=scheme), [x])
    want = F.linear(independent_act(x, SCHEMES[scheme].act_format), w_ind, bias)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme,group", CASES)
def test_plain_const_of_encoded_weight_evaluates_dequantized(scheme, group):
    enc = encode_weight(rand_weight(), scheme, group)
    g = Graph()
    g.add_weight("w.q", enc)
    c = g.add_op("const", [], {"weight": "w.q"}).result
    g.set_outputs([c])
    assert c.type.dtype == DType[SCHEMES[scheme].weight_format] and c.type.encoding == enc.encoding
    (out,) = evaluate(g, [])
    torch.testing.assert_close(out, decode_weight(enc))


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
def test_power_of_two_constraint_is_exact(rounding):
    w = rand_weight(64, 512) * torch.logspace(-3, 0, 512)  # groups of very different magnitudes
    enc = encode_weight(w, "w4a8-fp", 32, pow2_round=rounding)
    s_max, k = enc.payload["scale"], enc.payload["shift"]
    assert s_max.shape == (64, 1) and k.shape == (64, 16) and k.dtype == torch.uint8
    assert int(k.min()) == 0 and int(k.max()) <= MAX_SHIFT  # the row's largest group keeps s_max
    scale = torch.ldexp(s_max.expand(64, 16), -k.float())
    assert torch.equal(scale / s_max, 2.0 ** -k.float())  # every group scale = s_max * 2^-k exactly
    s_i = w.reshape(64, 16, 32).abs().amax(-1) / 6
    free = k < MAX_SHIFT
    if rounding == "floor":
        assert (scale[free] >= s_i[free]).all() and (scale[free] < 2 * s_i[free]).all()
    else:
        assert (scale[free] <= s_i[free]).all() and (scale[free] > s_i[free] / 2).all()
    # FP4 value * 2^-k is exactly an E4M3 value: the FP4 -> FP8 cast is an exponent shift
    deq = decode_weight(enc).reshape(64, 16, 32) / s_max.unsqueeze(-1)
    assert torch.equal(deq.to(torch.float8_e4m3fn).float(), deq)


def test_w4a8_weight_error_bounded():
    w = rand_weight(64, 512, seed=3)
    enc = encode_weight(w, "w4a8-fp", 32)
    err = (decode_weight(enc) - w).reshape(64, 16, 32)
    scale = torch.ldexp(enc.payload["scale"].expand(64, 16), -enc.payload["shift"].float())
    # FP4's widest step is 2 (between 4 and 6): round-to-nearest errs by at most 1 step-unit * scale
    assert (err.abs() <= scale.unsqueeze(-1) * (1 + 1e-6)).all()
    assert err.norm() / w.norm() < 0.13


def test_lorc_reduces_weight_error_monotonically():
    w = rand_weight(96, 128, seed=4)
    w_hat = decode_weight(encode_weight(w, "w4a8-fp", 32))
    errors = [(w - w_hat).norm().item()]
    for r in (1, 2, 4, 8, 16, 32, 64):
        u, v = lorc_factors(w, w_hat, r)
        assert u.shape == (96, r) and v.shape == (128, r) and u.dtype == torch.float16
        errors.append((w - lorc_weight(w_hat, u, v)).norm().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    u, v = lorc_factors(w, w_hat, 96)
    assert (w - lorc_weight(w_hat, u, v)).norm() < 1e-3 * w.norm()  # full rank: only fp16 rounding left


def test_qlinear_with_lorc_matches_effective_weight():
    w = rand_weight()
    enc = encode_weight(w, "w4a8-fp", 32)
    u, v = lorc_factors(w, decode_weight(enc), 8)
    x = torch.randn(2, 7, 256)
    (y,) = evaluate(qlinear_graph(enc, lorc=(u, v), scheme="w4a8-fp"), [x])
    want = F.linear(independent_act(x, "f8e4m3"), lorc_weight(decode_weight(enc), u, v))
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    (y0,) = evaluate(qlinear_graph(enc, scheme="w4a8-fp"), [x])
    exact = F.linear(x, w)
    assert (y - exact).norm() < (y0 - exact).norm()


def test_qlinear_text_round_trip_and_shape_checks():
    enc = encode_weight(rand_weight(), "w4a16-int4", 32)
    g = qlinear_graph(enc, torch.randn(48))
    text = print_graph(g)
    assert "#quantized<format=\"i4\"" in text and "qlinear(" in text
    g2 = parse_graph(text, dict(g.weights))
    verify(g2)
    assert print_graph(g2) == text
    bad = Graph()
    x = bad.add_input("x", TensorType((4, 256), DType.f32))
    bad.add_weight("w", rand_weight())
    c = bad.add_op("const", [], {"weight": "w"}).result
    with pytest.raises(ShapeError, match="#quantized"):
        bad.add_op("qlinear", [x, c], {"scheme": "w8a8-int8"})
    bad.add_weight("w.q", encode_weight(rand_weight(), "w8a8-int8"))
    cq = bad.add_op("const", [], {"weight": "w.q"}).result
    with pytest.raises(ShapeError, match="lorc_rank"):
        bad.add_op("qlinear", [x, cq, x], {"scheme": "w8a8-int8", "lorc_rank": 4})


@pytest.mark.parametrize("fmt,tol", [("i8", 0.01), ("f8e4m3", 0.04), ("f8e5m2", 0.08), ("i4", 0.2), ("f4e2m1", 0.15)])
def test_quantize_dequantize_ops(fmt, tol):
    g = Graph()
    x = g.add_input("x", TensorType((sym("s0"), 64), DType.f32))
    q = g.add_op("quantize", [x], {"format": fmt, "group": 32})
    assert q.results[0].type.dtype == DType[fmt] and list(q.results[1].type.shape) == [sym("s0"), 2]
    y = g.add_op("dequantize", list(q.results), {"format": fmt, "group": 32}).result
    g.set_outputs([y, q.results[1]])
    verify(g)
    xs = torch.randn(5, 64)
    out, scale = evaluate(g, [xs])
    amax = xs.reshape(5, 2, 32).abs().amax(-1)
    from fxforge.ir.formats import get_format

    torch.testing.assert_close(scale, amax / get_format(fmt).max_value)
    assert (out - xs).norm() / xs.norm() < tol
