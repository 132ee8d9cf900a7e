"""The generated-kernel cache is data: files named and checked by their hash, kept in a private
directory (owner and mode checked), under the user's cache dir or FXFORGE_CACHE_DIR."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import fxforge
from fxforge import testing as zoo
from fxforge.codegen import loader
from fxforge.errors import ConfigError

SOURCE = "def answer():\n    return 42\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("FXFORGE_CACHE_DIR", str(root))
    return root


def forget(module) -> None:
    sys.modules.pop(module.__name__, None)


def test_default_location_is_the_users_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("FXFORGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loader.cache_root() == tmp_path / "xdg" / "fxforge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert loader.cache_root() == Path(os.path.expanduser("~")) / ".cache" / "fxforge"


def test_files_are_private_and_named_by_their_hash(cache):
    module, path = loader.load_module(SOURCE, "t")
    assert module.answer() == 42
    assert Path(path).parent == cache / "kernels"
    assert (os.stat(cache).st_mode & 0o777) == 0o700 and (os.stat(cache / "kernels").st_mode & 0o777) == 0o700
    import hashlib

    assert hashlib.sha256(SOURCE.encode()).hexdigest()[:32] in Path(path).name
    forget(module)


def test_an_edited_cached_module_is_not_run(cache):
    module, path = loader.load_module(SOURCE, "t")
    forget(module)
    Path(path).write_text("def answer():\n    return 666\n")  # tampered after fxforge wrote it
    again, path2 = loader.load_module(SOURCE, "t")
    assert again.answer() == 42 and path2 == path
    assert Path(path).read_text() == SOURCE  # rewritten from the generated text
    forget(again)
    Path(path).write_text("def answer():\n    return 666\n")
    with pytest.raises(ConfigError, match="does not hold the text its name's hash says"):
        loader.import_cached(path)


def test_an_edited_kernel_file_does_not_change_a_compiled_model(cache):
    model = zoo.build("mlp")
    x = zoo.example_input("mlp", batch=2, seq=4)
    first = fxforge.compile_aot(model, (x,), executor="interpret")
    files = list((cache / "kernels").glob("fxforge_gen_*.py"))
    assert files
    for f in files:
        f.write_text(f.read_text().replace("tl.load(", "2 * tl.load("))
        forget(type("m", (), {"__name__": f.stem}))
    second = fxforge.compile_aot(model, (x,), executor="interpret")
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(second(x), want, atol=1e-5) and torch.allclose(first(x), want, atol=1e-5)


def test_a_group_writable_cache_is_refused(cache):
    cache.mkdir(mode=0o700)
    os.chmod(cache, 0o770)
    with pytest.raises(ConfigError, match=r"has mode 770.*chmod 700"):
        loader.load_module(SOURCE, "t")


def test_a_cache_owned_by_someone_else_is_refused(cache, monkeypatch):
    cache.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(cache).st_uid + 1)
    with pytest.raises(ConfigError, match=r"is owned by uid \d+, not by you"):
        loader.load_module(SOURCE, "t")


def test_a_link_in_place_of_the_cache_is_refused(cache, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    cache.mkdir(mode=0o700)
    (cache / "kernels").symlink_to(target)
    with pytest.raises(ConfigError, match="is not a directory"):
        loader.load_module(SOURCE, "t")
