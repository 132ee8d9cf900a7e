"""FFN skipping's decode form (`ffn_skip_mode`, `skip_keep` + `row_keep`): through `compile_decoder`'s
`generate()` it gives the host-compaction path's tokens and counters, counts skipping in decode, runs
no host synchronisation for the gate (no data-dependent op, no nonzero / item in the step's run), and
its dense GEMM kernels read the keep flags (early exit) and build for sm_80/sm_90 without spills."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fxforge
from fxforge import testing as zoo
from fxforge.codegen.buildcheck import check_kernels
from fxforge.errors import ConfigError
from fxforge.ir.skip_ops import DATA_DEPENDENT

pytest.importorskip("transformers")
LAYERS, PROMPT, NEW = 4, 6, 6
SYNCS = ("nonzero", "_local_scalar_dense", "item", "masked_select", "index_select", "index_add")


def model():
    torch.manual_seed(0)
    return zoo.llama(hidden=64, layers=LAYERS, heads=4, kv_heads=2, intermediate=128)


def decoder(mode: str, executor: str = "reference"):
    cal = [torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    return fxforge.compile_decoder(model(), max_length=16, executor=executor, ffn_skip=0.4, ffn_skip_warmup=2,
                                   ffn_skip_mode=mode, calibration=cal)


def prompt():
    return torch.randint(3, 256, (1, PROMPT), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def masked():
    return decoder("auto")


@pytest.fixture(scope="module")
def compact():
    return decoder("compact")


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_same_tokens_and_counts_as_compaction(masked, compact):
    assert compact.record.trace.record("ffn_skip").stats["form"] == "compact"
    assert masked.record.trace.record("ffn_skip").stats["form"] == "mask"  # auto: a decode step takes the flags
    a, b = compact.generate(prompt(), max_new_tokens=NEW), masked.generate(prompt(), max_new_tokens=NEW)
    assert torch.equal(a, b)
    ca, cb = compact.fxforge_report.ffn_skip, masked.fxforge_report.ffn_skip
    assert ca == cb and cb["rows"] == LAYERS * (PROMPT + NEW - 1)
    assert cb["per_layer"]["model.model.layers.0.mlp"]["skipped"] == 0 and cb["skipped"] > 0


def test_decode_step_has_no_host_sync(masked):
    g = masked.graph
    assert not [op.opcode for op in g.ops if DATA_DEPENDENT in op.opdef.tags]
    assert {"skip_keep", "row_keep"} <= {op.opcode for op in g.ops}
    masked.generate(prompt(), max_new_tokens=2)  # the prefill fills the cache
    before = masked.fxforge_report.ffn_skip
    ids, pos = torch.tensor([[5]]), torch.tensor([PROMPT + 1])
    with _Ops() as seen, torch.no_grad():
        masked(ids, pos, masked._kv_cache.tensors)
    assert not [n for n in seen.names if n.split(".")[0] in SYNCS], sorted(set(seen.names))
    after = masked.fxforge_report.ffn_skip  # one decode row per layer, counted from the flags
    assert after["rows"] - before["rows"] == LAYERS
    assert after["skipped"] - before["skipped"] == 2  # both gated layers skip this token (its gates' flags)


def test_compaction_does_sync(compact):
    """The check above can fail: the compaction path's step runs nonzero (a host sync on a GPU)."""
    c = compact
    c.generate(prompt(), max_new_tokens=2)
    with _Ops() as seen, torch.no_grad():
        c(torch.tensor([[5]]), torch.tensor([PROMPT + 1]), c._kv_cache.tensors)
    assert "nonzero" in {n.split(".")[0] for n in seen.names}


@pytest.mark.slow
def test_interpret_kernels_read_the_flags_and_build(masked):
    itp = decoder("auto", "interpret")
    before = masked.fxforge_report.ffn_skip
    assert torch.equal(itp.generate(prompt(), max_new_tokens=NEW), masked.generate(prompt(), max_new_tokens=NEW))
    after = masked.fxforge_report.ffn_skip
    got = itp.fxforge_report.ffn_skip
    assert (got["rows"], got["skipped"]) == (after["rows"] - before["rows"], after["skipped"] - before["skipped"])
    src = itp.record.program.executor.module.source
    assert src.count("keep=") == 3 * 2  # gate, up and down of the two gated layers read the flags
    check = check_kernels(itp, (torch.tensor([[5]]), torch.tensor([PROMPT + 1]), itp._kv_cache.tensors))
    for arch in ("sm_90", "sm_80"):
        rows = [r for r in check.stats[arch] if "keep" in r.get("label", "")]
        assert rows and all(r.get("spills") == 0 for r in rows), rows


def test_bad_mode():
    with pytest.raises(ConfigError, match="ffn_skip_mode"):
        fxforge.CompileConfig(ffn_skip=0.2, ffn_skip_mode="device")


@pytest.mark.slow
def test_bad_calibration():
    with pytest.raises(ConfigError, match="token ids"):
        fxforge.compile_decoder(model(), max_length=16, executor="reference", ffn_skip=0.2, calibration=["text"])


def test_ir_text_round_trips(masked):
    from fxforge.ir.parser import parse_graph
    from fxforge.ir.printer import print_graph

    text = print_graph(masked.graph)
    assert "skip_keep(" in text and "row_keep(" in text
    assert print_graph(parse_graph(text, dict(masked.graph.weights))) == text


@pytest.mark.slow
def test_quantized_decode_kernels_read_the_flags():
    """W8A8 + FFN skipping through compile_decoder: the qlinear kernels take the flags, the interpreter's
    tokens and counts are the reference's."""
    cal = [torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    opts = dict(max_length=16, ffn_skip=0.4, ffn_skip_warmup=2, quantize="w8a8-int8", quantize_method="rtn",
                calibration=cal)
    ref = fxforge.compile_decoder(model(), executor="reference", **opts)
    itp = fxforge.compile_decoder(model(), executor="interpret", **opts)
    assert torch.equal(itp.generate(prompt(), max_new_tokens=NEW), ref.generate(prompt(), max_new_tokens=NEW))
    assert itp.fxforge_report.ffn_skip == ref.fxforge_report.ffn_skip and ref.fxforge_report.ffn_skip["skipped"] > 0
    src = itp.record.program.executor.module.source
    assert src.count("keep=") == 3 * 2 and "_qlinear(" in src


def test_export_refuses_the_decode_gate():
    from fxforge.errors import ExportError
    from fxforge.export.layers import linear_layers
    from fxforge.ir.parser import parse_graph

    text = ("graph @f(%x: f32[4, 8], %p: i64[4]) {\n"
            "  %k = skip_keep(%x, %x, %p) {kind=\"carry\", threshold=0.5} : f32[4, 1]\n"
            "  %0 = row_keep(%x, %k) : f32[4, 8]\n  return %0\n}")
    with pytest.raises(ExportError, match="FFN skipping"):
        linear_layers(parse_graph(text, {}), [], ["w8a8-int8"])
