"""Differences between the Triton releases fxforge supports (3.6.0, the GPU machine's, up to the newest): the ONE place.

Templates and the build check never test `triton.__version__` themselves; they import what they need
from here. Importing this module applies the interpreter fixes below (idempotent).

Decisions:
- `TRITON_VERSION` is the installed release as a tuple; each switch below is a named entry in
  `SWITCHES` with the release that changed the behaviour, so removing support for an old release is
  deleting rows.
- Interpreter `__index__` (3.6): scalar kernel arguments are 1-element numpy arrays under the
  interpreter, and 3.6 converts them with `int(array)`, which numpy >= 2.4 refuses for arrays that are
  not 0-d ("only 0-dimensional arrays can be converted"): every `range(0, K, BLOCK)` or
  `range(tl.cdiv(K, BLOCK))` in a kernel failed. 3.7+ squeeze first; we install that same
  conversion on 3.6 by wrapping the interpreter's tensor patcher (it runs at every launch).
- Integer dots (3.6): `tl.dot(a_int8, b_int8, acc_int32)` does not compile (nor run under the
  interpreter): 3.6 takes the default out_dtype fp32 and refuses the int32 accumulator. Passing
  `out_dtype=tl.int32` as well builds and runs on every release, so the int8 kernels always pass it
  (no switch needed; `tests/codegen/test_triton_compat.py` keeps both forms honest).
"""

from __future__ import annotations

import re

import triton


def _version(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


TRITON_VERSION = _version(triton.__version__)
MIN_SUPPORTED = (3, 6, 0)

# switch name -> first release with the new behaviour
SWITCHES = {
    "interpreter_index_squeezes": (3, 7, 0),
}


def has(switch: str) -> bool:
    """True when the installed Triton has the behaviour `switch` (a key of `SWITCHES`)."""
    return TRITON_VERSION >= SWITCHES[switch]


def _squeezed_index(self) -> int:
    return int(self.handle.data.reshape(-1)[0]) if self.handle.data.size == 1 else int(self.handle.data)


def patch_interpreter() -> bool:
    """Install the 3.7+ scalar `__index__` in Triton 3.6's interpreter; True when a patch was (already) applied."""
    if has("interpreter_index_squeezes"):
        return False
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_fxforge_patched", False):
        return True

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _squeezed_index)

    patch_lang_tensor._fxforge_patched = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True


patch_interpreter()
