"""Features of one kernel: what the IR says about its group (ops, shapes, dtypes, encodings, FLOPs,
bytes, intensity, fusion size) and how it is launched (block sizes, warps, stages, arguments).

    feats = group_features(graph, group)           # IR side: a flat {name: float}
    feats.update(launch_features(spec))            # launch side, from a build spec (codegen.buildcheck)
    feats.update(gemm_launch(M, N, K, dtype))      # or, without a recorded launch: codegen.blocks' choice
    bag = op_bag(graph, group)                     # the bag of ops ("op:linear", "enc:quantized", ...)

Decisions:
- Features are a flat dict of floats with stable names; the model file stores the names it was fit on and
  missing names read as 0, so a feature added later never breaks a shipped model.
- Sizes enter as log2(1 + x): registers and instruction counts follow tile and problem sizes roughly
  logarithmically, and trees split on the log the same way.
- FLOPs follow the op's kernel class: 2*M*N*K for GEMMs (linear, qlinear, matmul), 4*B*H*Lq*Lk*D for
  attention, one per output element (times the op count) for pointwise/row ops.
- torch-mlir tokens go into the bag of ops only (the text model), never into the feature model: the
  shipped feature model then predicts the same with or without the optional dependency.
- The bag of ops is the text side (TLP-like): IR opcodes, encodings, dtypes and the kernel kind, plus the
  torch-mlir op tokens when `mlir_tokens` is available (`fxforge.costmodel.mlir`); it is counted, not
  ordered.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.partition import KernelGroup
from fxforge.ir.types import substitute

Bindings = dict | None  # symbol -> size (selection: the calibration shape)

KINDS = ("pointwise", "row", "gemm", "attention", "hadamard", "template")
GEMM_OPS = ("linear", "qlinear", "matmul")
_LAUNCH_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_D", "BLOCK", "BLOCK_SIZE", "XBLOCK", "RBLOCK", "GROUP_SIZE")


def log2p(x: float) -> float:
    return math.log2(1.0 + max(0.0, float(x)))


def _dims(v: Value, b: Bindings = None) -> list[int]:
    out = []
    for d in v.type.shape:
        try:
            out.append(int(substitute(d, b) if b else d))
        except TypeError:  # an unbound symbolic dim: profile compiles with static shapes; 1 keeps the rest sane
            out.append(1)
    return out


def numel(v: Value, b: Bindings = None) -> int:
    return math.prod(_dims(v, b))


def nbytes(v: Value, b: Bindings = None) -> float:
    return numel(v, b) * v.type.dtype.bits / 8


def op_flops(op: Op, b: Bindings = None) -> float:
    """Multiply-adds x2 for GEMMs and attention; one per output element otherwise."""
    if op.opcode in GEMM_OPS:
        x = _dims(op.operands[0], b)
        return 2.0 * numel(op.results[0], b) * (x[-1] if x else 1)
    if op.opcode == "attention":
        q, k = _dims(op.operands[0], b), _dims(op.operands[1], b)
        return 4.0 * math.prod(q) * (k[-2] if len(k) >= 2 else 1)
    return float(sum(numel(r, b) for r in op.results))


def _gemm_mnk(group: KernelGroup, b: Bindings = None) -> tuple[int, int, int]:
    for op in group.ops:
        if op.opcode in GEMM_OPS:
            x = _dims(op.operands[0], b)
            n = _dims(op.results[0], b)[-1]
            return math.prod(x[:-1]) or 1, n, x[-1]
        if op.opcode == "attention":
            q, k = _dims(op.operands[0], b), _dims(op.operands[1], b)
            return math.prod(q[:-1]) or 1, k[-2] if len(k) >= 2 else 1, q[-1]
    return 0, 0, 0


def group_features(graph: Graph, group: KernelGroup, b: Bindings = None) -> dict[str, float]:
    """The IR side of a kernel's features (see the module docstring); `b` binds symbolic dims."""
    ins, outs = group.inputs, group.outputs
    in_bytes = sum(nbytes(v, b) for v in ins)
    out_bytes = sum(nbytes(v, b) for v in outs)
    flops = sum(op_flops(op, b) for op in group.ops)
    moved = in_bytes + out_bytes
    m, n, k = _gemm_mnk(group, b)
    bits = [v.type.dtype.bits for v in (*ins, *outs)] or [32]
    enc = [v for v in ins if v.type.encoding is not None]
    feats: dict[str, float] = {
        "n_ops": len(group.ops), "n_inputs": len(ins), "n_outputs": len(outs),
        "log_flops": log2p(flops), "log_bytes": log2p(moved), "log_in_bytes": log2p(in_bytes),
        "log_out_bytes": log2p(out_bytes), "intensity": flops / moved if moved else 0.0,
        "log_out_numel": log2p(sum(numel(v, b) for v in outs)), "log_M": log2p(m), "log_N": log2p(n), "log_K": log2p(k),
        "min_bits": min(bits), "max_bits": max(bits), "n_encoded": len(enc),
        "out_rank": max((v.type.rank for v in outs), default=0),
        "last_dim": log2p(max((_dims(v, b)[-1] for v in (*ins, *outs) if v.type.rank), default=1)),
    }
    for kind in KINDS:
        feats[f"kind={kind}"] = float(group.kind == kind)
    for name, count in op_bag(graph, group).items():
        feats[name] = float(count)
    return feats


def op_bag(graph: Graph, group: KernelGroup) -> Counter:
    """The bag of ops of a group: opcodes, encodings/schemes, dtypes read, and the kind."""
    bag: Counter = Counter({f"kindtok:{group.kind}": 1})
    for op in group.ops:
        bag[f"op:{op.opcode}"] += 1
        if op.opcode == "qlinear":
            bag[f"scheme:{op.attrs.get('scheme')}"] += 1
            bag["lorc"] += int(bool(op.attrs.get("lorc_rank")))
    for v in group.inputs:
        bag[f"in:{v.type.dtype}"] += 1
        if v.type.encoding is not None:
            bag[f"enc:{v.type.encoding.kind}"] += 1
    return bag


def launch_features(spec: dict[str, Any]) -> dict[str, float]:
    """The launch side: block sizes, warps, stages and argument counts of a build spec."""
    const = spec.get("constexprs", {})
    sig = spec.get("signature", {})
    feats = {"num_warps": float(spec.get("num_warps", 4)), "num_stages": float(spec.get("num_stages", 3)),
             "n_ptr_args": float(sum(1 for t in sig.values() if t.startswith("*"))),
             "n_scalar_args": float(sum(1 for t in sig.values() if not t.startswith("*"))),
             "n_constexprs": float(len(const)),
             "ptr_min_bits": float(min((_type_bits(t[1:]) for t in sig.values() if t.startswith("*")), default=32))}
    tile = 1.0
    for key in _LAUNCH_KEYS:
        value = const.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            feats[f"log_{key}"] = log2p(value)
            tile *= max(1.0, float(value))
    feats["log_tile"] = log2p(tile)
    feats["fp8_dot"] = float(const.get("FP8_DOT") is True)
    return feats


def _type_bits(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 8


def gemm_launch(m: int, n: int, k: int, dtype: str) -> dict[str, float]:
    """Launch features of a GEMM tile chosen by `codegen.blocks` (for kernels not recorded: selection)."""
    from fxforge.codegen.blocks import gemm_blocks

    cfg = gemm_blocks(m, n, k, dtype)
    tile = cfg["BLOCK_M"] * cfg["BLOCK_N"] * cfg["BLOCK_K"]
    return {"num_warps": float(cfg["num_warps"]), "num_stages": float(cfg["num_stages"]),
            "log_BLOCK_M": log2p(cfg["BLOCK_M"]), "log_BLOCK_N": log2p(cfg["BLOCK_N"]),
            "log_BLOCK_K": log2p(cfg["BLOCK_K"]), "log_tile": log2p(tile)}


def kernel_features(graph: Graph, group: KernelGroup, spec: dict[str, Any] | None, arch: int,
                    mlir: dict[str, int] | None = None, bindings: Bindings = None) -> dict[str, float]:
    """Everything the models read about one kernel on one arch (launch features from `spec`, else the
    GEMM tile `codegen.blocks` would choose)."""
    feats = group_features(graph, group, bindings)
    if spec is not None:
        feats.update(launch_features(spec))
    else:
        m, n, k = _gemm_mnk(group, bindings)
        dtype = "float16" if min((v.type.dtype.bits for v in group.inputs), default=32) <= 16 else "float32"
        feats.update(gemm_launch(m, n, k, dtype) if m else {})
    feats["arch"] = float(arch)
    for token, count in (mlir or {}).items():
        feats[f"mlir:{token}"] = float(count)
    return feats
