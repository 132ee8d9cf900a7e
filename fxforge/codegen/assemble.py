"""The assembler of a generated module: header, the imports and helpers the module uses, its
kernels, then `run(...)`.

Decisions:
- What a module uses is read from its own text: an import or helper is kept when its name occurs in
  the kernels, the launcher body or a kept helper (helpers may call helpers). Renderers never
  declare what they need, so a new renderer cannot forget to, and no module carries unused
  imports (`OPS`, `OperandRef`, `_attention`, ...) or helpers.
- Long calls and kernel signatures are wrapped at the argument list (`module_text.wrap_call`).
"""

from __future__ import annotations

import functools
import re

from fxforge.codegen.expr import PRELUDE
from fxforge.codegen.kernels import ROW_TILE
from fxforge.codegen.module_text import HEADER, HOST_HELPERS


def _defs(text: str) -> dict[str, str]:
    """Top-level functions of a helper text, by name (with their decorators)."""
    out: dict[str, str] = {}
    for chunk in re.split(r"\n[ \t]*\n(?=\S)", text.strip()):  # a blank line, then a top-level line
        if not chunk.strip():
            continue
        name = re.search(r"^def (\w+)", chunk, re.M)
        if name is not None:
            out[name.group(1)] = chunk.strip()
    return out


HELPERS: dict[str, str] = {**_defs(PRELUDE), **_defs(HOST_HELPERS.format(tile=ROW_TILE))}

# (the name whose attribute read (`torch.`) shows the use, import line); module names, then the names fxforge provides
IMPORTS: list[tuple[str, str]] = [
    ("sympy", "import sympy"),
    ("torch", "import torch"),
    ("F", "import torch.nn.functional as F"),
    ("triton", "import triton"),
    ("tl", "import triton.language as tl"),
]
NAMED_IMPORTS: dict[str, tuple[str, str]] = {  # name in the module -> (module, import spelling)
    "next_pow2": ("fxforge.codegen.blocks", "next_pow2"),
    "row_blocks": ("fxforge.codegen.blocks", "row_blocks"),
    "_attention": ("fxforge.codegen.templates.attention", "attention as _attention"),
    "_hadamard": ("fxforge.codegen.templates.hadamard", "hadamard as _hadamard"),
    "_expm1": ("fxforge.codegen.templates.special_fns", "expm1 as _expm1"),
    "_softplus": ("fxforge.codegen.templates.special_fns", "softplus as _softplus"),
    "_xielu": ("fxforge.codegen.templates.special_fns", "xielu as _xielu"),
    "_linear": ("fxforge.codegen.templates.gemm", "linear as _linear"),
    "_rope_cache": ("fxforge.codegen.templates.rope_cache", "rope_cache as _rope_cache"),
    "_kv_attention": ("fxforge.codegen.templates.kv_attention", "kv_attention as _kv_attention"),
    "_matmul": ("fxforge.codegen.templates.bmm", "matmul as _matmul"),
    "_moe": ("fxforge.codegen.templates.moe", "moe as _moe"),
    "_pooled": ("fxforge.codegen.pool", "pooled as _pooled"),
    "_qlinear": ("fxforge.codegen.templates.qlinear", "qlinear as _qlinear"),
    "_qlinear_w4_decode": ("fxforge.codegen.templates.qlinear_decode", "qlinear_w4_decode as _qlinear_w4_decode"),
    "_nm_linear": ("fxforge.codegen.templates.sparse_gemm", "nm_linear as _nm_linear"),
    "_nm_qlinear": ("fxforge.codegen.templates.sparse_qlinear", "nm_qlinear as _nm_qlinear"),
    "DType": ("fxforge.ir.dtypes", "DType"),
    "_decode_weight": ("fxforge.ir.lowp_ops", "decode_weight as _decode_weight"),
    "OPS": ("fxforge.ir.ops", "OPS"),
    "OperandRef": ("fxforge.ir.optable", "OperandRef"),
}


_WORD = re.compile(r"(?<![\w.])\w+")  # a whole word, not an attribute (`x.name`)
_MODULE_USE = re.compile(r"(?<![\w.])(\w+)\.")  # a whole word read an attribute of (`torch.`, `tl.`)


@functools.lru_cache(maxsize=64)  # a module's text and its ~20 helpers; whole module texts are the keys
def _names(text: str) -> frozenset[str]:
    """The words of `text`: a name is used when it is one of them. One scan for all names (a search
    per name and helper was linear in the module's length, hence in depth, times the helper count);
    cached, as `used_helpers` and `import_lines` read the same module text (and the same helpers)."""
    return frozenset(_WORD.findall(text))


def used_helpers(text: str) -> list[str]:
    """Helpers the text calls, and the helpers those call, in HELPERS order."""
    chosen: set[str] = set()
    pending = [text]
    while pending:
        words = _names(pending.pop())
        for name, helper in HELPERS.items():
            if name not in chosen and name in words:
                chosen.add(name)
                pending.append(helper)
    return [name for name in HELPERS if name in chosen]


def import_lines(*texts: str) -> list[str]:
    """The import block for a module whose code (helpers included) is `texts`; each is scanned once, by
    two expressions (a search per import scanned the module, ~130 kB at 32 layers, ~8 times)."""
    words = set().union(*map(_names, texts))
    modules = set().union(*(_MODULE_USE.findall(t) for t in texts))
    plain = [line for pattern, line in IMPORTS if pattern in modules]
    grouped: dict[str, list[str]] = {}
    for name, (module, spelling) in NAMED_IMPORTS.items():
        if name in words:
            grouped.setdefault(module, []).append(spelling)
    named = [f"from {m} import {', '.join(sorted(s))}" for m, s in sorted(grouped.items())]
    if "tl" in modules:  # kernels: Triton-version fixes (3.6's interpreter) before they run
        named.append("from fxforge.codegen import triton_compat  # noqa: F401")
    return plain + ([""] if plain and named else []) + named


def assemble(doc: dict[str, object], kernels: list[str], run_lines: list[str]) -> str:
    """The module text: header docstring (`doc` fills HEADER), imports, used helpers, kernels, `run`."""
    code = "\n".join(kernels) + "\n" + "\n".join(run_lines)
    helpers = [HELPERS[name] for name in used_helpers(code)]
    imports = import_lines(code, *helpers)
    parts = [HEADER.format(**doc) + "\n" + "\n".join(imports)]
    parts += helpers + kernels + ["\n".join(run_lines)]
    return "\n\n\n".join(p.strip("\n") for p in parts) + "\n"
