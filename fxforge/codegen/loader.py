"""Generated modules on disk: Triton needs a kernel's source file, so each module's text is written
to the kernel cache and imported once per process.

The cache is data, never trusted as found:
- Where: `$FXFORGE_CACHE_DIR` if set, else `$XDG_CACHE_HOME/fxforge`, else `~/.cache/fxforge`;
  kernels live in its `kernels/` folder.
- Private: the folder is created with mode 0700; an existing one must be owned by this user and
  give no access to group or others, or a `ConfigError` says what is wrong and how to fix it.
- By content: a file is named by the SHA-256 of its text. On load the file is read back and hashed;
  a file that does not match (edited, truncated) is rewritten from the text fxforge generated.
- What runs is always the generated text in memory: the module is executed from that string
  (compiled with the file's path as its name), and the file's lines are registered in `linecache`, so
  Triton and `inspect` read the same text even if the file changes afterwards.
Writes are atomic (temporary file + rename), so parallel processes agree.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import stat
import sys
import threading
import types
from pathlib import Path
from typing import Any

from fxforge.errors import ConfigError

CACHE_ENV = "FXFORGE_CACHE_DIR"
_LOCK = threading.RLock()


def cache_root() -> Path:
    """The fxforge cache directory (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fxforge"


def private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or check an existing one: a directory, ours, no group/other access."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    fix = f"remove it, or set {CACHE_ENV} to a private directory of yours"
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"fxforge kernel cache {path} is not a directory (a link or a file); {fix}")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise ConfigError(f"fxforge kernel cache {path} is owned by uid {info.st_uid}, not by you (uid {os.getuid()}): "
                          f"its modules could run someone else's code; {fix}")
    if info.st_mode & 0o077:
        raise ConfigError(f"fxforge kernel cache {path} has mode {stat.S_IMODE(info.st_mode):o}: others may write or "
                          f"read it; make it private (chmod 700 {path}) or {fix}")
    return path


def kernel_dir() -> Path:
    return private_dir(private_dir(cache_root()) / "kernels")


def _write(path: Path, source: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(source)
    os.replace(tmp, path)


def _file_holds(path: Path, digest: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def load_module(source: str, name: str) -> tuple[Any, str]:
    """Import the module whose text is `source`; returns it and its file path."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    modname = f"fxforge_gen_{name}_{digest[:32]}"
    with _LOCK:
        path = kernel_dir() / f"{modname}.py"
        if not _file_holds(path, digest):  # missing, or changed since fxforge wrote it: write it again
            _write(path, source)
        if modname in sys.modules:
            return sys.modules[modname], str(path)
        lines = source.splitlines(keepends=True)
        linecache.cache[str(path)] = (len(source), None, lines, str(path))  # mtime None: never re-read
        module = types.ModuleType(modname)
        module.__file__ = str(path)
        sys.modules[modname] = module
        try:
            exec(compile(source, str(path), "exec"), module.__dict__)
        except BaseException:
            del sys.modules[modname]
            raise
        return module, str(path)


def import_cached(path: str | Path) -> Any:
    """A generated module by its cache file (e.g. in a build-check subprocess): the file must sit in a
    private directory and hold exactly the text its name's hash says, or a ConfigError says so."""
    path = Path(path)
    stem, _, digest = path.stem.rpartition("_")
    if not stem.startswith("fxforge_gen_") or len(digest) != 32:
        raise ConfigError(f"{path} is not a cached fxforge kernel module (fxforge_gen_<name>_<hash>.py)")
    private_dir(path.parent)
    source = path.read_text()
    if hashlib.sha256(source.encode()).hexdigest()[:32] != digest:
        raise ConfigError(f"cached kernel module {path} does not hold the text its name's hash says: it was edited "
                          "or is corrupt; delete it (fxforge writes it again)")
    return load_module(source, stem.removeprefix("fxforge_gen_"))[0]
