"""How closely a compressed-tensors checkpoint written by `fxforge export` reproduces fxforge's compiled
model when transformers + compressed-tensors load it on the CPU (issue #16's acceptance check).

    PYTHONPATH=$PWD python benchmarks/accuracy/export_agreement.py            # the trained stdlib-llama fixture
    PYTHONPATH=$PWD python benchmarks/accuracy/export_agreement.py --random [--hidden 256 --layers 4]

For each scheme: compile the model (the trained byte-level fixture on held-out text windows, or a
random-weight HF Llama on random tokens) with fxforge (reference executor), export it, load the
checkpoint, and print the relative logit difference, the share of positions with the same argmax, and
fxforge's own error against the float model. Asymmetric int4 does not load through transformers'
`from_pretrained` with compressed-tensors 0.20 (its loader allocates unpacked zero points; its compressor
and vLLM use packed ones: llm-compressor#1618/#1704), so that checkpoint is read with compressed-tensors'
own decompressors into the same HF model class.

compressed-tensors quantizes int8 activations on the CPU with scale amax / 127.5 (its symmetric range is
[-128, 127]); fxforge (and vLLM's dynamic per-token int8 kernel) use amax / 127. For the int8 schemes a
second row loads the same checkpoint with compressed-tensors' range made symmetric [-127, 127], i.e. the
convention of the runtime the checkpoint is for: it isolates what the difference comes from.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

import fxforge
from fxforge import testing

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
from perplexity import FIXTURE, load_fixture  # noqa: E402

SCHEMES = {"w8a8-int8": {"quantize": "w8a8-int8"}, "w8a8-fp8": {"quantize": "w8a8-fp8"},
           "w4a16-int4": {"quantize": "w4a16-int4"}, "2:4": {"sparsity": "2:4"},
           "w8a8-int8+2:4": {"quantize": "w8a8-int8", "sparsity": "2:4"},
           "w8a8-fp8+2:4": {"quantize": "w8a8-fp8", "sparsity": "2:4"},
           "w4a16-int4+2:4": {"quantize": "w4a16-int4", "sparsity": "2:4"}}


def ct_decompressed(directory: str) -> torch.nn.Module:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    config = transformers.AutoConfig.from_pretrained(directory)
    qconfig = QuantizationConfig.model_validate(config.quantization_config)
    config.quantization_config = None
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    schemes = transformers.AutoModelForCausalLM.from_config(config)
    apply_quantization_config(schemes, qconfig)
    state = load_file(f"{directory}/model.safetensors")
    plain = {k: v for k, v in state.items() if k.endswith(".weight")}
    for name, module in schemes.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is not None:
            local = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(f"{name}.weight_")}
            fmt = getattr(scheme.format, "value", scheme.format)
            plain[f"{name}.weight"] = BaseCompressor.get_value_from_registry(fmt).decompress(local, scheme)["weight"]
    model.load_state_dict(plain, strict=False)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--random", action="store_true", help="a random-weight Llama instead of the trained fixture")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.random:
        model = testing.llama(hidden=a.hidden, layers=a.layers, heads=4, kv_heads=2, intermediate=2 * a.hidden)
        x, what = testing.example_input("llama", batch=a.batch, seq=a.seq), f"random Llama hidden={a.hidden} layers={a.layers}"
    else:
        model, x, what = load_fixture(FIXTURE), data.heldout_windows(a.batch, a.seq), "trained stdlib-llama fixture, held-out text"
    with torch.no_grad():
        ref = model(x).logits
    print(f"{what}, {a.batch}x{a.seq} tokens; transformers "
          f"{transformers.__version__}, compressed-tensors {__import__('compressed_tensors').__version__}")
    print(f"{'scheme':20} {'rel diff':>10} {'argmax same':>12} {'fxforge vs float':>17}")
    for name, options in SCHEMES.items():
        compiled = fxforge.compile_aot(model, (x,), executor="reference", **options)
        ours = compiled(x).logits
        with tempfile.TemporaryDirectory() as d:
            compiled.export(d)
            rows = [(name, load_logits(d, name, x))]
            if "int8" in name:
                with symmetric_int8_range():
                    rows.append((f"{name} @127", load_logits(d, name, x)))
        own = ((ours - ref).norm() / ref.norm()).item()
        for label, theirs in rows:
            rel = ((theirs - ours).norm() / ours.norm()).item()
            same = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
            print(f"{label:20} {rel:10.2e} {same:12.4f} {own:17.3e}", flush=True)


def load_logits(directory: str, name: str, x: torch.Tensor) -> torch.Tensor:
    loaded = ct_decompressed(directory) if "int4" in name else transformers.AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        return loaded.eval()(x).logits


@contextlib.contextmanager
def symmetric_int8_range():
    """compressed-tensors' int range made [-2^(b-1)+1, 2^(b-1)-1]: activation scale amax / 127 (diagnostic)."""
    import compressed_tensors.quantization.utils.helpers as helpers

    original = helpers._calculate_range

    def symmetric(qtype, num_bits, device):
        lo, hi = original(qtype, num_bits, device)
        return (-hi if str(getattr(qtype, "value", qtype)) == "int" else lo), hi

    helpers._calculate_range = symmetric
    try:
        yield
    finally:
        helpers._calculate_range = original


if __name__ == "__main__":
    main()
