"""Build check for real GPUs without one: compile templates for sm_80 / sm_90 and read their resource use.

This module owns the answer to "does this kernel build for that GPU, and how heavy is it?" on a CPU:
- `compile_for_target` runs `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` with
  divisibility-16 hints (pointer args, plus any names listed), reads registers and stack (spill) bytes
  with the bundled `cuobjdump -res-usage` on the cubin, shared memory from `k.metadata.shared`, and
  checks shared memory against the architecture's limit (`SHARED_LIMITS`); SASS instruction counts come
  from `cuobjdump -sass` on the same cubin (`sass_instructions`, the cost model's target), and those of the
  main loop body (`loop_instructions`, parsed by `fxforge.codegen.sass`).
- Triton's interpreter replaces every `@triton.jit` function once TRITON_INTERPRET=1 is set, so GPU
  compiles must run in a process without it: `build_in_subprocess` serialises specs (module + kernel
  name + signature + constexprs + launch options) to JSON and runs `python -m fxforge.codegen.build`
  in fresh `sys.executable` processes (in parallel, with a timeout).
- A spec describes a template's compile for given sizes (`templates/dense_specs.py`: GEMM, bmm, attention,
  decode attention; `templates/qlinear_specs.py` and the decode GEMMs' configs: the quantized ones); the list
  the tests build is `tests/codegen/standard_specs.py`.
TRITON_DEFAULT_FP_FUSION is set explicitly (its default changes in triton 3.10 and it keys the cache),
and `enable_fp_fusion` is passed as a compile option as well.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fxforge.codegen import sass

FP_FUSION = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", FP_FUSION)

# dynamic shared memory per block (opt-in maximum), bytes
SHARED_LIMITS = {75: 64 * 1024, 80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024,
                 90: 227 * 1024, 100: 227 * 1024, 103: 227 * 1024, 120: 99 * 1024}
_RESULT_MARK = "FXFORGE_BUILD_RESULT "


@dataclasses.dataclass
class KernelBuild:
    """What one compile for one architecture produced. `ok` is False on a compile error or too much shared memory."""

    name: str
    arch: int
    registers: int = 0
    spills: int = 0  # register spill store bytes per thread (ptxas), the figure that must be 0
    stack: int = 0  # stack frame bytes per thread: spills plus local arrays (libdevice's sinf keeps one)
    shared_bytes: int = 0
    ptx_lines: int = 0
    instructions: int = 0  # SASS instructions of the kernel (NOPs not counted), from `cuobjdump -sass`
    loop_instructions: int = 0  # SASS instructions of its main loop body (`fxforge.codegen.sass.main_loop`)
    seconds: float = 0.0
    ok: bool = False
    error: str = ""
    label: str = ""  # which configuration (spec label); name is the kernel's


def _res_usage(cubin: bytes, kernel_name: str) -> tuple[int, int]:
    """(registers, stack bytes) of `kernel_name` in a cubin, from `cuobjdump -res-usage`."""
    import triton

    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([tool, "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
    blocks = re.split(r"Function\s+", text)
    chosen = next((b for b in blocks if b.startswith(kernel_name)), None) or next((b for b in blocks if "REG:" in b), "")
    reg = re.search(r"REG:(\d+)", chosen)
    stack = re.search(r"STACK:(\d+)", chosen)
    if reg is None:
        raise RuntimeError(f"could not parse cuobjdump -res-usage output: {text[:400]!r}")
    return int(reg.group(1)), int(stack.group(1)) if stack else 0


def sass_instructions(cubin: bytes) -> int:
    """Instructions in the cubin's SASS (`cuobjdump -sass`; NOP padding not counted)."""
    return len(sass.instructions(sass.sass_text(cubin), drop_padding=False))


def _ptxas_spill_bytes(ptx: str, arch: int) -> int:
    """Spill-store bytes that ptxas reports for the PTX (`-v`); only asked when the cubin has a stack frame.

    cuobjdump's STACK also counts local arrays that are not spills (libdevice's sinf/cosf argument reduction
    keeps a 7-word array on the stack); ptxas' own verbose line separates them.
    """
    import triton

    # sm_90a and newer are assembled by the bundled ptxas-blackwell where Triton has one (its PTX .version is
    # newer than the plain ptxas reads: "Unsupported .version 9.4" on triton 3.9)
    blackwell = getattr(triton.knobs.nvidia, "ptxas_blackwell", None)
    tool = blackwell.path if arch >= 90 and blackwell is not None and blackwell.path else triton.knobs.nvidia.ptxas.path
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([tool, "-v", f"--gpu-name=sm_{arch}a" if arch >= 90 else f"--gpu-name=sm_{arch}",
                              str(src), "-o", str(Path(d) / "k.cubin")], capture_output=True, text=True, check=True)
    stores = [int(n) for n in re.findall(r"(\d+) bytes spill stores", out.stdout + out.stderr)]
    if not stores:
        raise RuntimeError(f"could not read spill stores from ptxas -v: {(out.stdout + out.stderr)[:400]!r}")
    return max(stores)


def compile_for_target(kernel_fn, signature: dict, constexprs: dict, arch: int, num_warps: int = 4, num_stages: int = 3,
                       *, divisible: tuple[str, ...] | list[str] = (), label: str = "", sass_counts: bool = True
                       ) -> KernelBuild:
    """Compile `kernel_fn` for sm_`arch` and report its resources; never raises for compile errors.
    `sass_counts=False` leaves the SASS instruction counts 0 (disassembly costs ~0.5 s of CPU a kernel on a cold
    listing cache; a check of registers and spills does not need it).

    `signature` maps runtime argument names to Triton types ("*fp16", "i32", "fp32"); every name in
    `constexprs` (constexpr parameters, or runtime ones specialised like the JIT does for the value 1)
    is typed "constexpr" automatically. Pointer args and the names in `divisible` get a
    divisibility-16 hint, as the JIT gives aligned tensors.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(kernel_fn, "fn", kernel_fn)
    name = getattr(fn, "__name__", str(kernel_fn))
    build = KernelBuild(name=name, arch=int(arch), label=label)
    if type(kernel_fn).__name__ == "InterpretedFunction":
        build.error = "kernel was created under TRITON_INTERPRET=1; compile in a process without it (build_in_subprocess)"
        return build
    sig = dict(signature)
    for key in constexprs:
        sig[key] = "constexpr"
    arg_names = list(kernel_fn.arg_names)
    missing = [a for a in arg_names if a not in sig]
    if missing:
        build.error = f"signature lacks arguments {missing}; give each a type or a constexpr value"
        return build
    hinted = [a for a in arg_names if sig[a].startswith("*") or a in divisible]
    attrs = {(arg_names.index(a),): [["tt.divisibility", 16]] for a in hinted}
    t0 = time.perf_counter()
    try:
        src = ASTSource(fn=kernel_fn, signature={a: sig[a] for a in arg_names}, constexprs=dict(constexprs), attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", int(arch), 32),
                           options={"num_warps": int(num_warps), "num_stages": int(num_stages),
                                    "enable_fp_fusion": FP_FUSION == "1"})
        build.shared_bytes = int(k.metadata.shared)
        build.ptx_lines = k.asm["ptx"].count("\n")
        build.registers, build.stack = _res_usage(k.asm["cubin"], getattr(k.metadata, "name", name))
        build.spills = _ptxas_spill_bytes(k.asm["ptx"], int(arch)) if build.stack else 0
        if sass_counts:
            text = sass.sass_text(k.asm["cubin"])
            build.instructions = len(sass.instructions(text, drop_padding=False))
            build.loop_instructions = len(sass.main_loop(text))
        limit = SHARED_LIMITS.get(int(arch))
        if limit is not None and build.shared_bytes > limit:
            build.error = (f"needs {build.shared_bytes} B of shared memory, sm_{arch} allows {limit}; "
                           "shrink the blocks or num_stages in fxforge.codegen.blocks")
        else:
            build.ok = True
    except Exception as e:  # a failed build is a result, not a crash
        build.error = f"{type(e).__name__}: {str(e)[-2000:]}"
    build.seconds = time.perf_counter() - t0
    return build


def _import_spec_module(spec: dict):
    """`spec["module"]` by import name, or the file `spec["path"]` (a generated module) under that name."""
    if not spec.get("path"):
        return importlib.import_module(spec["module"])
    if Path(spec["path"]).name.startswith("fxforge_gen_"):  # a kernel-cache file: checked against its hash
        from fxforge.codegen.loader import import_cached

        return import_cached(spec["path"])
    from importlib.util import module_from_spec, spec_from_file_location

    name = spec.get("module") or Path(spec["path"]).stem
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = spec_from_file_location(name, spec["path"])
    if loader_spec is None or loader_spec.loader is None:
        raise ImportError(f"cannot import {spec['path']}")
    module = module_from_spec(loader_spec)
    sys.modules[name] = module
    loader_spec.loader.exec_module(module)
    return module


def build_spec(spec: dict, arch: int, sass_counts: bool = True) -> KernelBuild:
    """Compile one serialisable spec (see `templates.dense_specs.gemm_spec`; `"path"` imports a module file) in this process."""
    try:
        kernel = getattr(_import_spec_module(spec), spec["kernel"])
    except (ImportError, AttributeError, OSError) as e:
        return KernelBuild(name=spec["kernel"], arch=int(arch), label=spec.get("label", ""),
                           error=f"cannot find kernel {spec.get('path') or spec['module']}.{spec['kernel']}: {e}")
    return compile_for_target(kernel, spec["signature"], spec["constexprs"], arch, spec.get("num_warps", 4),
                              spec.get("num_stages", 3), divisible=spec.get("divisible", ()), label=spec.get("label", ""),
                              sass_counts=sass_counts)


def _subprocess_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = FP_FUSION
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def build_in_subprocess(specs: list[dict], arch: int, *, timeout: float = 300.0, jobs: int | None = None,
                        sass_counts: bool = True) -> list[KernelBuild]:
    """Compile `specs` for sm_`arch` in fresh processes without TRITON_INTERPRET; results in spec order
    (`sass_counts`: as `compile_for_target`'s).

    Specs are split over `jobs` processes (default: up to 2, one per core); a process that fails or
    runs past `timeout` seconds gives ok=False builds that say so.
    """
    jobs = max(1, min(jobs or min(2, os.cpu_count() or 1), len(specs) or 1))
    chunks = [list(range(i, len(specs), jobs)) for i in range(jobs)]
    procs = []
    for idx in chunks:
        payload = json.dumps({"arch": int(arch), "specs": [specs[i] for i in idx], "sass_counts": sass_counts})
        p = subprocess.Popen([sys.executable, "-m", "fxforge.codegen.build"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_subprocess_env())
        p.stdin.write(payload)
        p.stdin.close()
        procs.append((idx, p))
    results: list[KernelBuild | None] = [None] * len(specs)
    deadline = time.monotonic() + timeout
    for idx, p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
            out, err = p.stdout.read(), p.stderr.read()
            lines = [ln for ln in out.splitlines() if ln.startswith(_RESULT_MARK)]
            builds = [KernelBuild(**d) for d in json.loads(lines[-1][len(_RESULT_MARK):])] if lines else None
            if builds is None or len(builds) != len(idx):
                raise RuntimeError(f"build process exited with {p.returncode}: {err[-2000:]}")
        except (subprocess.TimeoutExpired, RuntimeError) as e:
            p.kill()
            p.wait()
            why = f"timed out after {timeout:.0f} s" if isinstance(e, subprocess.TimeoutExpired) else str(e)
            builds = [KernelBuild(name=specs[i]["kernel"], arch=int(arch), error=why, label=specs[i].get("label", ""))
                      for i in idx]
        for i, b in zip(idx, builds, strict=True):
            results[i] = b
    return results  # type: ignore[return-value]


def specs_for_arch(specs: list[dict], arch: int) -> list[dict]:
    """The specs that apply to sm_`arch` (drops those whose "min_arch" is higher)."""
    return [s for s in specs if s.get("min_arch", 0) <= arch]


def main() -> None:
    """`python -m fxforge.codegen.build`: JSON {"arch", "specs", "sass_counts"} on stdin -> one marked JSON result
    line on stdout."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("fxforge.codegen.build: unset TRITON_INTERPRET to compile for a GPU")
    req = json.loads(sys.stdin.read())
    builds = [build_spec(s, req["arch"], req.get("sass_counts", True)) for s in req["specs"]]
    sys.stdout.write("\n" + _RESULT_MARK + json.dumps([dataclasses.asdict(b) for b in builds]) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
