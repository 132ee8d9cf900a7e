"""`make demo`: compile a small transformer with fxforge and show what the compiler did.

A Llama-style causal LM (grouped-query attention) from a small config with random weights is
compiled twice: ahead of time (torch.export, dynamic batch and sequence) and just in time (as a
torch.compile backend, then used for greedy generation with its KV cache). The outputs are
compared with PyTorch eager.
"""

from __future__ import annotations

import tempfile

import torch

import fxforge
from fxforge import testing as zoo


def main() -> None:
    model = zoo.build("llama")
    example = zoo.example_input("llama", batch=2, seq=16)

    print("== AOT: torch.export -> fxforge IR -> passes -> reference executor")
    aot = fxforge.compile_aot(model, (example,))
    print(aot.fxforge_report)
    print("\n" + aot.record.trace.summary())
    with torch.no_grad():
        for batch, seq in [(2, 16), (1, 5), (3, 40)]:
            x = zoo.example_input("llama", batch=batch, seq=seq, seed=seq)
            diff = (aot(x).logits - model(x, use_cache=False).logits).abs().max().item()
            print(f"  input {batch}x{seq}: max |fxforge - eager| = {diff:.2e}  ({'match' if diff <= 1e-5 else 'MISMATCH'})")
    lines = [ln for ln in str(aot.graph).splitlines() if " = const @" not in ln]
    start = next(i for i, ln in enumerate(lines) if "rms_norm(" in ln)
    print("\nthe final IR, first decoder layer (weights elided):")
    print("\n".join(lines[start:start + 14]) + "\n  ...")

    with tempfile.TemporaryDirectory() as out:
        aot.save(out)
        loaded = fxforge.load(out)
        x = zoo.example_input("llama", batch=1, seq=9)
        same = torch.equal(loaded(x).logits, aot(x).logits)
        print(f"\nsaved to an artifact and loaded back without the model's source: outputs identical = {same}")

    print("\n== JIT: fxforge.compile(model) as a torch.compile backend, greedy generate() with the KV cache")
    prompt = zoo.example_input("llama", batch=1, seq=8)
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False)
        jit = fxforge.compile(model)
        got = jit.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    print(jit.fxforge_report)
    print(f"  16 new tokens, identical to eager: {torch.equal(got, expected)}")


if __name__ == "__main__":
    main()
