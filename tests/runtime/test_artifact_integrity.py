"""Artifacts are data, not code: every file is covered by the integrity check, and loading never
imports or runs anything the artifact names."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.errors import ArtifactError
from fxforge.runtime.artifact import SELF_HASH, _body_hash


@pytest.fixture(scope="module")
def tied_artifact(tmp_path_factory):
    """A model whose buffer shares a weight's storage (so the manifest has an `alias_of`), two outputs."""

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(8, 8, bias=False)
            self.register_buffer("shared", self.a.weight.detach().view(8, 8))

        def forward(self, x):
            return self.a(x), torch.nn.functional.linear(torch.relu(x), self.shared) * 2

    torch.manual_seed(0)
    model = Tied().eval()
    path = tmp_path_factory.mktemp("art") / "tied"
    fxforge.compile_aot(model, (torch.randn(3, 8),), executor="reference").save(str(path))
    return path, model


def copy_artifact(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def edit_manifest(path, change, rehash: bool = False):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    if rehash:  # an editor who also recomputes the manifest's own hash
        manifest[SELF_HASH] = _body_hash(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))


def test_untouched_artifact_loads_and_matches(tied_artifact):
    path, model = tied_artifact
    x = torch.randn(5, 8)
    got = fxforge.load(str(path))(x)
    with torch.no_grad():
        want = model(x)
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want))


@pytest.mark.parametrize("edit", ["alias_of", "outputs", "hashes", "notes"])
def test_editing_the_manifest_is_refused(tied_artifact, tmp_path, edit):
    path = copy_artifact(tied_artifact[0], tmp_path / "a")

    def change(m):
        if edit == "alias_of":
            aliased = [k for k, v in m["weights"].items() if "alias_of" in v]
            assert aliased, "the fixture must have a tied weight"
            del m["weights"][aliased[0]]["alias_of"]
        elif edit == "outputs":
            m["outputs"][1] = ["const", 42]
        elif edit == "hashes":
            m["hashes"]["trace"] = "0" * 64
        else:
            m["notes"].append("edited")

    edit_manifest(path, change)
    with pytest.raises(ArtifactError, match=r"manifest\.json does not match its own hash"):
        fxforge.load(str(path))


@pytest.mark.parametrize("name", ["graph.fxir", "trace.json", "weights.safetensors"])
def test_editing_any_other_file_is_refused_by_name(tied_artifact, tmp_path, name):
    path = copy_artifact(tied_artifact[0], tmp_path / "a")
    data = bytearray((path / name).read_bytes())
    data[-2] ^= 1
    (path / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{name.replace('.', '[.]')} does not match the hash"):
        fxforge.load(str(path))


def test_loading_never_imports_a_module_the_artifact_names(tied_artifact, tmp_path, monkeypatch):
    path = copy_artifact(tied_artifact[0], tmp_path / "a")
    marker = tmp_path / "evil-ran"
    evil = f"open({str(marker)!r}, 'w').write('pwned')\nclass Evil(tuple):\n    pass\n"
    for where in (path, tmp_path):  # beside the artifact and on sys.path
        (where / "evilmod.py").write_text(evil)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(path)

    def change(m):
        spec = json.loads(m["out_spec"])
        spec[1]["type"] = "evilmod.Evil"
        m["out_spec"] = json.dumps(spec)

    edit_manifest(path, change, rehash=True)
    with pytest.raises(ArtifactError, match=r"names the type 'evilmod.Evil'.*never imports"):
        fxforge.load(str(path))
    assert not marker.exists() and "evilmod" not in sys.modules


def test_extern_must_name_a_torch_op(tied_artifact, tmp_path):
    path = copy_artifact(tied_artifact[0], tmp_path / "a")
    graph = (path / "graph.fxir").read_text()
    line = "  %evil = extern() {target=\"import_module\", args=[\"evilmod\"]} : f32[]\n"
    lines = graph.splitlines(keepends=True)
    lines.insert(2, line)
    (path / "graph.fxir").write_text("".join(lines))

    def change(m):
        m["hashes"]["graph"] = hashlib.sha256((path / "graph.fxir").read_bytes()).hexdigest()

    edit_manifest(path, change, rehash=True)
    with pytest.raises(ArtifactError, match=r"names 'import_module', which is not a torch op"):
        fxforge.load(str(path))


def test_hugging_face_outputs_come_back_by_name(tmp_path):
    model = zoo.build("bert", layers=1)
    x = zoo.example_input("bert", batch=2, seq=8)
    fxforge.compile_aot(model, (x,), executor="reference").save(str(tmp_path / "bert"))
    out = fxforge.load(str(tmp_path / "bert"))(x)
    with torch.no_grad():
        want = model(x)
    assert type(out) is type(want) and torch.allclose(out.last_hidden_state, want.last_hidden_state, atol=1e-5)


def test_weights_are_hashed_with_xxh3_and_the_graph_read_without_lark(tied_artifact, tmp_path, monkeypatch):
    """The load path's two largest costs were SHA-256 of the weights and lark's parse of the graph."""
    from fxforge.ir import parser

    path, model = tied_artifact
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["hash_algorithms"] == {"graph": "sha256", "trace": "sha256", "weights": "xxh3_128"}
    parser._lark.cache_clear()
    monkeypatch.setattr(parser, "_lark", lambda: pytest.fail("lark's parser was built to load an artifact"))
    x = torch.randn(2, 8)
    got = fxforge.load(str(path))(x)
    assert torch.allclose(got[0], model(x)[0], atol=1e-6)


def test_an_artifact_hashed_with_sha256_still_loads(tied_artifact, tmp_path):
    path = copy_artifact(tied_artifact[0], tmp_path / "a")

    def older(m):  # as written before `hash_algorithms`: every file's SHA-256
        del m["hash_algorithms"]
        m["hashes"]["weights"] = hashlib.sha256((path / "weights.safetensors").read_bytes()).hexdigest()

    edit_manifest(path, older, rehash=True)
    fxforge.load(str(path))
    edit_manifest(path, lambda m: m["hashes"].update(weights="0" * 64), rehash=True)
    with pytest.raises(ArtifactError, match=r"weights\.safetensors does not match the hash"):
        fxforge.load(str(path))


def test_unknown_hash_algorithm_and_missing_xxhash_are_named(tied_artifact, tmp_path, monkeypatch):
    path = copy_artifact(tied_artifact[0], tmp_path / "a")
    monkeypatch.setitem(sys.modules, "xxhash", None)  # `import xxhash` raises ImportError
    with pytest.raises(ArtifactError, match=r"hashed with xxh3_128.*pip install xxhash"):
        fxforge.load(str(path))
    edit_manifest(path, lambda m: m["hash_algorithms"].update(weights="md5"), rehash=True)
    with pytest.raises(ArtifactError, match=r"unknown hash_algorithms \{'weights': 'md5'\}"):
        fxforge.load(str(path))


def test_a_plain_output_spec_never_looks_at_transformers(tied_artifact, monkeypatch):
    # the HF allow-list imports transformers.modeling_outputs (~60 ms): only a spec naming one of its classes pays that
    from fxforge.runtime import specs

    monkeypatch.setattr(specs, "_allow_hf_output", lambda name: pytest.fail(f"looked up {name} in transformers"))
    assert len(fxforge.load(str(tied_artifact[0]))(torch.randn(2, 8))) == 2


@pytest.mark.parametrize("name", ["transformers.modeling_outputs.dataclass", "transformers.modeling_outputs.NoSuchOutput",
                                  "transformers.models.llama.modeling_llama.LlamaModel", "transformers.modeling_outputs"])
def test_the_hf_allow_list_takes_only_output_classes_of_its_module(name):
    from fxforge.runtime.specs import _allow_hf_output, load_spec

    pytest.importorskip("transformers")
    assert _allow_hf_output("transformers.modeling_outputs.CausalLMOutputWithPast") and not _allow_hf_output(name)
    text = json.dumps([1, {"type": name, "context": "[]", "children_spec": []}])
    with pytest.raises(ArtifactError, match="not one fxforge rebuilds"):
        load_spec(text)
