"""Artifacts: a directory that holds a compiled model, loadable without the model's source.

    out/
      manifest.json        versions, config, calling convention, weight table layout, hashes
      graph.fxir           the final IR text (parsed back on load)
      trace.json           the pass trace (IR before/after each pass), for `fxforge inspect`
      weights.safetensors  every weight once (tied weights are stored once and aliased);
                           encoded weights store their payload parts as `name::part`

Loading checks the format, the files and their hashes, and says what is wrong and how to fix it.

Decisions:
- Every file is covered by the integrity check: `manifest.json` holds the SHA-256 of each other file
  (graph, trace, weights) and, under `manifest_sha256`, the hash of its own body (the manifest
  without that key, as canonical JSON). An edited `alias_of`, output list or hash is an
  `ArtifactError` naming the file. (The hashes catch edits and corruption; they are not signatures.)
- The weights file (~all of the bytes) is hashed with xxh3_128 (`xxhash`, ~10 GB/s; SHA-256 is ~1.3
  GB/s even with SHA-NI and was a third of `fxforge.load` + first call): it catches every edit and
  corruption the SHA-256 did; a deliberate collision buys nothing, since the manifest is not signed and
  an editor can rehash it anyway. `hash_algorithms` names each file's hasher (a file it leaves out:
  sha256, so older artifacts load). The weights hash runs on a thread (mmap, GIL released) while the
  graph is read, and is checked before `load_artifact` returns or raises anything else.
- The graph text is read by `ir/reader.py` (no lark for the printer's own text, proved by printing
  back; anything else goes to lark), and lark's tables are located only if lark is needed.
- Loading never imports or runs anything an artifact names: pytree specs are rebuilt from an
  allow-list (`runtime/specs.py`), and every `extern` op must name a registered torch op.
- This module builds the parts of a loaded model (`LoadedArtifact`); `fxforge.load` makes the
  `CompiledModule` (so runtime.module imports this module, never the reverse).
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import mmap
import os
import platform
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils import _pytree as pytree

from fxforge.config import CompileConfig
from fxforge.errors import ArtifactError, FxforgeError, IRParseError
from fxforge.ir.calling import InputSlot
from fxforge.ir.graph import Graph, Weight
from fxforge.ir.optable import resolve_torch_op
from fxforge.ir.parser import use_parser_cache
from fxforge.ir.printer import print_dim, print_encoding, print_graph
from fxforge.ir.reader import read_dim, read_graph, read_type
from fxforge.ir.trace import Trace
from fxforge.runtime.executors import resolve_executor
from fxforge.runtime.program import Program
from fxforge.runtime.report import GraphRecord
from fxforge.runtime.specs import load_spec
from fxforge.version import __version__

FORMAT = "fxforge-artifact"
VERSION = 2  # 2: "f4w" decode layouts XOR-encode half of each word, and carry fp16 factors ("s16")
FILES = {"manifest": "manifest.json", "graph": "graph.fxir", "trace": "trace.json", "weights": "weights.safetensors"}
HASHED = ("graph", "trace", "weights")  # every file but the manifest, which hashes its own body
BACKGROUND = "weights"  # the one large file: hashed beside the rest of the load, checked before it returns
SELF_HASH = "manifest_sha256"


def _xxh3_128() -> Any:
    try:
        import xxhash
    except ImportError:
        raise ArtifactError("this artifact's weights are hashed with xxh3_128, which needs the `xxhash` package "
                            "(a dependency of fxforge): pip install xxhash") from None
    return xxhash.xxh3_128()


# How a file's hash is computed, by the name the manifest records under `hash_algorithms` (a file it
# does not name: sha256, as artifacts before the table were written).
HASHERS: dict[str, Callable[[], Any]] = {"sha256": hashlib.sha256, "xxh3_128": _xxh3_128}


def _weights_algorithm() -> str:
    """xxh3_128 (~10 GB/s) for the weights file when xxhash is here, else sha256 (~1.3 GB/s with SHA-NI)."""
    return "xxh3_128" if importlib.util.find_spec("xxhash") is not None else "sha256"


def _file_hash(path: Path, algorithm: str = "sha256") -> str:
    """The file's hash, read through a memory map (no copy; both hashers release the GIL while they hash)."""
    h = HASHERS[algorithm]()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                h.update(mm)
    return h.hexdigest()


def _algorithms(manifest: dict[str, Any], where: Path) -> dict[str, str]:
    algos = manifest.get("hash_algorithms") or {}
    bad = {k: v for k, v in algos.items() if k not in HASHED or v not in HASHERS}
    if not isinstance(algos, dict) or bad:
        raise ArtifactError(f"{where}: unknown hash_algorithms {bad or algos!r} (known: {sorted(HASHERS)}); compile "
                            "the artifact again")
    return {key: algos.get(key, "sha256") for key in HASHED}


class _PendingHash:
    """One file's hash computed on a thread, so that the load's Python work (reading the graph,
    rebuilding specs) runs meanwhile; `check()` waits for it and raises on a mismatch."""

    def __init__(self, path: Path, expected: Any, algorithm: str) -> None:
        self.path, self.expected, self.algorithm, self.got = path, expected, algorithm, None
        self.thread = threading.Thread(target=self._run, name="fxforge-artifact-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.got = _file_hash(self.path, self.algorithm)
        except OSError as e:
            self.got = f"unreadable: {e}"

    def check(self) -> None:
        self.thread.join()
        if self.expected is None or self.got != self.expected:
            raise ArtifactError(f"{self.path} does not match the hash in manifest.json: the file was changed "
                                "or is corrupt; compile the artifact again")


def _body_hash(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != SELF_HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def versions() -> dict[str, str]:
    out = {"fxforge": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    return out


# -- saving -----------------------------------------------------------------------------------------

def _weight_table(graph: Graph) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    by_storage: dict[tuple, str] = {}
    for name, w in graph.weights.items():
        entry: dict[str, Any] = {"encoding": print_encoding(w.encoding) if w.encoding else None,
                                 "parts": sorted(w.payload), "shape": list(w.data.shape)}
        if w.payload:  # an encoded weight: its payload is the data; `data` is a shape-only placeholder
            for part, t in w.payload.items():
                tensors[f"{name}::{part}"] = t.detach().contiguous().clone()
            layout[name] = entry
            continue
        key = (w.data.untyped_storage().data_ptr(), w.data.storage_offset(), tuple(w.data.shape), tuple(w.data.stride()), w.data.dtype)
        if key in by_storage:
            entry["alias_of"] = by_storage[key]
        else:
            by_storage[key] = name
            tensors[name] = w.data.detach().contiguous().clone()
        layout[name] = entry
    return tensors, layout


def _slot_json(slot: InputSlot) -> dict[str, Any]:
    return {"kind": slot.kind, "symbol": str(slot.symbol) if slot.symbol is not None else None,
            "value": slot.value if not isinstance(slot.value, torch.Tensor) else None}


def _output_json(out: Any) -> list[Any]:
    kind, item = out
    return [kind, print_dim(item) if kind == "symbol" else item]


def save_artifact(module: Any, path: str | Path) -> Path:
    """module: a `CompiledModule` (record, config, in/out spec, arg names, source)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    program = module.record.program
    (out / FILES["graph"]).write_text(print_graph(program.graph))
    trace = module.record.trace
    (out / FILES["trace"]).write_text(trace.to_json() if trace is not None else "[]")
    tensors, layout = _weight_table(program.graph)
    save_file(tensors, str(out / FILES["weights"]))
    algos = {"graph": "sha256", "trace": "sha256", "weights": _weights_algorithm()}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "versions": versions(),
        "source": module.source,
        "hf_config": getattr(module, "hf_config", None),
        "config": module.config.to_json(),
        "executor": program.executor_name,
        "arg_names": module.arg_names,
        "inputs": [_slot_json(s) for s in program.inputs],
        "outputs": [_output_json(o) for o in program.outputs],
        "in_spec": pytree.treespec_dumps(module.in_spec),
        "out_spec": pytree.treespec_dumps(module.out_spec),
        "weights": layout,
        "externs": module.record.externs,
        "notes": module.record.notes,
        "hash_algorithms": algos,
        "hashes": {key: _file_hash(out / FILES[key], algos[key]) for key in HASHED},
    }
    manifest = json.loads(json.dumps(manifest, default=str))  # the body exactly as it will read back
    manifest[SELF_HASH] = _body_hash(manifest)
    (out / FILES["manifest"]).write_text(json.dumps(manifest, indent=1))
    return out


# -- loading ----------------------------------------------------------------------------------------

def _read_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise ArtifactError(f"{root} is not an artifact directory; create one with `fxforge compile ... -o {root}`")
    missing = [f for f in FILES.values() if not (root / f).is_file()]
    if missing:
        raise ArtifactError(f"artifact {root} is incomplete: missing {', '.join(missing)}; compile it again")
    try:
        manifest = json.loads((root / FILES["manifest"]).read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{root / FILES['manifest']} is not valid JSON ({e}); the artifact is corrupt, compile it again") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ArtifactError(f"{root} is not a version-{VERSION} fxforge artifact (format={manifest.get('format')!r}, "
                            f"version={manifest.get('version')!r}); compile it again with this fxforge")
    if not isinstance(manifest, dict) or manifest.get(SELF_HASH) != _body_hash(manifest):
        raise ArtifactError(f"{root / FILES['manifest']} does not match its own hash ({SELF_HASH}): the file was "
                            "edited or is corrupt; compile the artifact again")
    return manifest


def _start_hashes(root: Path, manifest: dict[str, Any]) -> _PendingHash:
    """Check the small files' hashes now; start the weights' (checked by the caller before it returns)."""
    hashes = manifest.get("hashes") or {}
    algos = _algorithms(manifest, root / FILES["manifest"])
    for key in HASHED:
        if key != BACKGROUND and (hashes.get(key) is None or _file_hash(root / FILES[key], algos[key]) != hashes[key]):
            raise ArtifactError(f"{root / FILES[key]} does not match the hash in manifest.json: the file was changed "
                                "or is corrupt; compile the artifact again")
    if algos[BACKGROUND] == "xxh3_128":
        _xxh3_128()  # raises now, naming the missing package
    return _PendingHash(root / FILES[BACKGROUND], hashes.get(BACKGROUND), algos[BACKGROUND])


def _load_weights(root: Path, manifest: dict[str, Any]) -> dict[str, Weight]:
    try:
        tensors = load_file(str(root / FILES["weights"]))
    except Exception as e:
        raise ArtifactError(f"cannot read {root / FILES['weights']}: {e}; compile the artifact again") from None
    weights: dict[str, Weight] = {}
    for name, entry in manifest["weights"].items():
        payload = {part: tensors[f"{name}::{part}"] for part in entry["parts"]}
        if payload:
            data = torch.zeros((), dtype=torch.float32).expand(*entry["shape"])
        else:
            data = tensors[entry.get("alias_of", name)]
        encoding = read_type(f"f32[] {entry['encoding']}").encoding if entry["encoding"] else None
        weights[name] = Weight(data, encoding, payload)
    return weights


def _check_externs(graph: Graph, where: Path) -> None:
    """An extern op runs what it names: only a registered torch op may be named."""
    for op in graph.ops:
        if op.opcode != "extern":
            continue
        target = op.attrs.get("target")
        try:
            fn = resolve_torch_op(target) if isinstance(target, str) else None
        except FxforgeError:
            fn = None
        if not isinstance(fn, torch._ops.OpOverload):
            raise ArtifactError(f"{where}: extern op %{op.result.name if op.results else '?'} names {target!r}, which "
                                "is not a torch op overload (e.g. aten.cumsum.default); compile the artifact again")


@dataclass
class LoadedArtifact:
    """What `fxforge.load` makes a `CompiledModule` of."""

    record: GraphRecord
    in_spec: Any
    out_spec: Any
    arg_names: list[str]
    config: CompileConfig
    source: str
    hf_config: dict[str, Any] | None = None


def _parser_cache() -> Path | None:
    """The IR parser's grammar cache beside the kernel cache (private to this user), None when that
    directory is unusable (the parser then builds its tables in-process: slower, same result)."""
    from fxforge.codegen.loader import cache_root, private_dir

    try:
        return private_dir(private_dir(cache_root()) / "parser")
    except (OSError, FxforgeError):
        return None


def load_artifact(path: str | Path, prepare: Callable[[Graph, str], Any] | None = None) -> LoadedArtifact:
    """`prepare(graph, executor)` runs on the parsed graph before its executor is built (the pipeline
    layer passes the `fuse` step the generated-kernel executors need; the runtime imports no pass).
    The weights file's hash is computed while the rest loads, and checked before anything returns
    (also before any other error is raised: a changed file is reported as changed)."""
    root = Path(path)
    manifest = _read_manifest(root)
    pending = _start_hashes(root, manifest)
    try:
        with _collector_paused():
            loaded = _build(root, manifest, prepare)
    except BaseException:
        pending.check()
        raise
    pending.check()
    return loaded


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic collector off while the graph is built: its thousands of new objects set off a full collection
    of a heap that holds torch (and often transformers), ~150 ms of a ~0.2 s load (8-layer h512 Llama); the build
    leaves no cyclic garbage worth collecting there."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _build(root: Path, manifest: dict[str, Any], prepare: Callable[[Graph, str], Any] | None) -> LoadedArtifact:
    use_parser_cache(_parser_cache)  # only a text that is not the printer's own needs lark's tables
    in_spec, out_spec = load_spec(manifest["in_spec"], "in_spec"), load_spec(manifest["out_spec"], "out_spec")
    weights = _load_weights(root, manifest)
    try:
        graph = read_graph((root / FILES["graph"]).read_text(), weights)
    except IRParseError as e:
        raise ArtifactError(f"{root / FILES['graph']}: {e}") from None
    _check_externs(graph, root / FILES["graph"])
    slots = [InputSlot(s["kind"], read_dim(s["symbol"]) if s["symbol"] else None, s["value"]) for s in manifest["inputs"]]
    outputs = [(k, read_dim(v) if k == "symbol" else v) for k, v in manifest["outputs"]]
    config = CompileConfig.from_json(manifest["config"])
    executor = resolve_executor(config.executor)
    if prepare is not None:
        prepare(graph, executor)
    program = Program(graph, slots, outputs, executor)
    trace = Trace.from_json((root / FILES["trace"]).read_text())
    record = GraphRecord(graph.name, program, 0.0, 0.0, len(graph.ops), manifest["externs"], manifest["notes"], trace)
    return LoadedArtifact(record, in_spec, out_spec, manifest["arg_names"], config, manifest["source"],
                          manifest.get("hf_config"))
