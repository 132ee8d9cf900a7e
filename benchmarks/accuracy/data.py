"""Deterministic byte-level text from the Python standard library's own `.py` sources.

No download: the corpus is the `.py` files under `sysconfig.get_paths()["stdlib"]` (sorted by relative
path; test directories, site-packages, idlelib's tests and `__pycache__` excluded). Tokens are raw bytes
(vocab 256). Files are split by sorted order: every 10th file (index % 10 == 9) is held out for
perplexity, the rest is training text. The text depends on the Python version, so the version and byte
counts are recorded (see `describe()`) alongside anything built from it.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}
HOLDOUT_EVERY = 10
SEPARATOR = b"\n\x00\n"  # between files; byte 0 never occurs in the sources


@dataclass(frozen=True)
class Corpus:
    train: bytes
    heldout: bytes
    train_files: tuple[str, ...]
    heldout_files: tuple[str, ...]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path | None = None) -> list[str]:
    """Sorted relative paths of the stdlib's `.py` files, test directories excluded."""
    root = root or stdlib_root()
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("test_"):
            continue
        out.append(rel.as_posix())
    return sorted(out)


@lru_cache(maxsize=1)
def load() -> Corpus:
    root = stdlib_root()
    files = source_files(root)
    train, heldout = [], []
    for i, rel in enumerate(files):
        (heldout if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else train).append(rel)

    def join(names: list[str]) -> bytes:
        return SEPARATOR.join((root / n).read_bytes() for n in names)

    return Corpus(join(train), join(heldout), tuple(train), tuple(heldout))


def tokens(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.long)


def fixed_windows(data: bytes, count: int, length: int, offset: int = 0) -> torch.Tensor:
    """`count` windows of `length` + 1 bytes (inputs + next-byte targets), evenly spaced over `data`
    starting at `offset`: [count, length + 1] int64. Fully determined by the text."""
    ids = tokens(data)
    span = len(ids) - offset - (length + 1)
    if span <= 0:
        raise ValueError("text too short for the windows asked for")
    stride = span // max(count - 1, 1)
    starts = [offset + i * stride for i in range(count)]
    return torch.stack([ids[s:s + length + 1] for s in starts])


def heldout_windows(count: int = 64, length: int = 128) -> torch.Tensor:
    return fixed_windows(load().heldout, count, length)


def calibration_windows(count: int = 8, length: int = 128) -> torch.Tensor:
    """Calibration comes from TRAIN text (never the held-out files); offset so the windows are not the
    first bytes of the corpus."""
    return fixed_windows(load().train, count, length, offset=4097)


def describe() -> dict:
    c = load()
    return {
        "source": "CPython standard library .py sources (sysconfig stdlib path), byte-level tokens, vocab 256",
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "note": "the text depends on the Python version: other versions give other bytes and other perplexities",
        "excluded_dirs": sorted(EXCLUDED_DIRS),
        "excluded_files": "test_*.py",
        "split": f"sorted relative paths; index % {HOLDOUT_EVERY} == {HOLDOUT_EVERY - 1} held out",
        "train_files": len(c.train_files),
        "heldout_files": len(c.heldout_files),
        "train_bytes": len(c.train),
        "heldout_bytes": len(c.heldout),
        "train_sha256": hashlib.sha256(c.train).hexdigest(),
        "heldout_sha256": hashlib.sha256(c.heldout).hexdigest(),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(describe(), indent=2))
