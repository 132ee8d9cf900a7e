"""A deeper byte-level Llama for the FFN-skipping benchmark (saturation grows with depth), trained briefly
with `train_fixture.py`'s deterministic loop and cached OUTSIDE git (default ~/.cache/fxforge/stdlib-llama-deep,
or $FXFORGE_FIXTURE_CACHE).

    .venv/bin/python benchmarks/accuracy/deep_fixture.py            # ~3-6 min on 2 busy cores

Config: 8 layers, hidden 128, intermediate 384, 4 heads / 2 kv heads, vocab 256; 900 steps, seq 128, batch 8, lr 3e-3, 1 thread
(sized for a 2-core machine shared by several people: minutes, not an hour).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_fixture  # noqa: E402

DEEP = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=8)
STEPS, WARMUP, MAX_SECONDS, BATCH, SEQ = 900, 50, 1500.0, 8, 128


def cache_dir() -> Path:
    root = os.environ.get("FXFORGE_FIXTURE_CACHE") or Path.home() / ".cache" / "fxforge"
    return Path(root) / "stdlib-llama-deep"


def ensure() -> Path:
    """The cached deep fixture's directory, training it first if it is not there."""
    out = cache_dir()
    if not (out / "model.safetensors").exists():
        train(out)
    return out


def train(out: Path) -> None:
    train_fixture.CONFIG.update(DEEP)
    argv = sys.argv
    sys.argv = [argv[0], "--steps", str(STEPS), "--warmup", str(WARMUP), "--max-seconds", str(MAX_SECONDS),
                "--batch", str(BATCH), "--seq", str(SEQ), "--lr", "3e-3", "--log-every", "10", "--threads", "1", "--out", str(out)]
    try:
        train_fixture.main()
    finally:
        sys.argv = argv


if __name__ == "__main__":
    print(ensure())
