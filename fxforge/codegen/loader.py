"""Generated modules on disk: Triton needs a kernel's source file, so each module's text is written
once (named by its hash, atomically, so parallel processes agree) and imported once per process."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from typing import Any

_CACHE_DIR = os.path.join(tempfile.gettempdir(), f"fxforge_kernels_{os.getuid() if hasattr(os, 'getuid') else 0}")


def load_module(source: str, name: str) -> tuple[Any, str]:
    """Import the module whose text is `source`; returns it and its file path."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    os.makedirs(_CACHE_DIR, exist_ok=True)
    modname = f"fxforge_gen_{name}_{digest}"
    path = os.path.join(_CACHE_DIR, modname + ".py")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    if modname in sys.modules:
        return sys.modules[modname], path
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return module, path
