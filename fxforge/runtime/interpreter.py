"""Triton's CPU interpreter for the `interpret` executor, arranged by fxforge in any process.

Triton chooses between compiling and interpreting a kernel when `@triton.jit` runs (it reads
`triton.knobs.runtime.interpret`, i.e. `TRITON_INTERPRET` from the environment at that moment, in
3.6 and 3.9 alike), and fxforge's templates read the variable again when they launch. A script that
never set the variable has its template modules decorated as compiled `JITFunction`s as soon as
anything imports them (torch's own use of triton imports triton early, too).

`interpreter_scope()` is what the interpret executor runs every call inside:
- it holds one process-wide lock: the interpreter patches `triton.language` for the length of a
  kernel launch and rewrites kernels into shared caches, so two launches at once corrupt each
  other (calls from several threads are serialized here);
- it sets `TRITON_INTERPRET=1` for its length (restoring what was there), so the templates'
  launchers and triton's constexpr helpers take their interpreter paths;
- for its length it swaps every compiled-mode `JITFunction` in the kernel modules (fxforge's
  `fxforge.codegen.*`, generated `fxforge_gen_*` modules, and `triton.language`'s own jit helpers
  such as `tl.sum`, decorated when triton was first imported) for an `InterpretedFunction` of the
  same Python function, so kernels that call each other resolve to interpreted ones; on exit the
  originals are put back, so other triton users in the process (inductor) are untouched.

Decisions:
- Modules are loaded (their kernels decorated) outside the scope, in whatever mode the process is
  in; only the swap makes them interpreted, and only for the length of a call. So a generated module
  or a template imported under `interpret` still runs compiled under the `triton` executor.
- Once `interpret` has run in a process (`interpret_was_arranged()`), the `triton` executor takes the
  same lock for its calls (`exclusive()`), so a GPU launch never meets a swapped-in interpreted kernel.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

_LOCK = threading.RLock()
_ARRANGED = False
KERNEL_MODULE_PREFIXES = ("fxforge.codegen", "fxforge_gen_", "triton.language")
_INTERPRETED: dict[int, tuple[Any, Any]] = {}  # id(JITFunction) -> (it, its InterpretedFunction)
_SWAPS: list[tuple[dict, str, Any, Any]] = []  # (module namespace, name, JITFunction, InterpretedFunction)
_SCANNED = [-1]  # len(sys.modules) at the last scan


def interpret_was_arranged() -> bool:
    return _ARRANGED


def _interpreted(value: Any) -> Any:
    from triton.runtime.interpreter import InterpretedFunction

    if id(value) not in _INTERPRETED:
        _INTERPRETED[id(value)] = (value, InterpretedFunction(value.fn))
    return _INTERPRETED[id(value)][1]


def _scan() -> list[tuple[dict, str, Any, Any]]:
    """Every compiled-mode JITFunction bound at module level in a kernel module (rescanned when new
    modules were imported)."""
    if _SCANNED[0] == len(sys.modules):
        return _SWAPS
    from triton.runtime.jit import JITFunction

    _SWAPS.clear()
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(KERNEL_MODULE_PREFIXES):
            continue
        space = vars(module)
        _SWAPS.extend((space, key, value, _interpreted(value)) for key, value in list(space.items())
                      if isinstance(value, JITFunction))
    _SCANNED[0] = len(sys.modules)
    return _SWAPS


def _swap(swaps: list[tuple[dict, str, Any, Any]], to_interpreted: bool) -> None:
    for space, key, jit, interp in swaps:
        old, new = (jit, interp) if to_interpreted else (interp, jit)
        if space.get(key) is old:
            space[key] = new


def exclusive() -> contextlib.AbstractContextManager:
    """The interpreter's lock once `interpret` has run in this process (else no lock)."""
    return _LOCK if _ARRANGED else contextlib.nullcontext()


@contextlib.contextmanager
def interpreter_scope() -> Iterator[None]:
    """Run inside: one interpreter user at a time, TRITON_INTERPRET=1, fxforge's and triton.language's
    jit functions interpreted (put back on exit)."""
    global _ARRANGED
    with _LOCK:
        before = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        _ARRANGED = True
        swaps = list(_scan())  # restored from this list: a rescan inside would miss what is swapped now
        _swap(swaps, True)
        try:
            yield
        finally:
            _swap(swaps, False)
            if before is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = before
