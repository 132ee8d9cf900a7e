"""Weight-only quantization of a `moe` op's experts (called by the quantize pass for every `moe` op).

The experts are the bulk of a mixture-of-experts model's weights; their gate/up and down weights are encoded
expert by expert with the scheme the site resolves to (`<experts>` site names: the weight's module path, e.g.
`model.layers.0.mlp.experts`, matched by `quantize_overrides` patterns like the linears' names), stacked into one
3-D `#quantized` weight [E, N, K] (payload: codes [E * N, K / 2], scale and zero [E * N, K / group]) that the MoE
templates dequantize in registers (`codegen/templates/moe_routing.expert_tile`). Transposed experts (GPT-OSS) are
re-laid out [E, N, K] on the way (the op then reads `transposed=false`). The router stays high precision (a
[E, H] GEMV, read by every program).

Decisions:
- Weight-only 4-bit integer (w4a16-int4, group and zero point as the linears'): the MoE kernels multiply 16-bit
  activations; schemes that quantize activations, or other element formats, have no MoE kernel and leave the
  experts high precision, listed in the skips with that reason (never silently).
- Round to nearest per expert (no GPTQ: the experts' Hessians would need each expert's routed tokens).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fxforge.ir.graph import Graph, Op, Weight
from fxforge.ir.lowp_ops import decode_weight, encode_weight, get_scheme
from fxforge.ir.moe_ops import ROLES, by_role
from fxforge.passes.concat_linears import first_part
from fxforge.passes.linear_sites import choose_by_pattern, free_name

MOE_SCHEMES = ("w4a16-int4",)  # the schemes the MoE templates dequantize


def experts_site(op: Op) -> str:
    """The module path of a `moe` op's experts (its gate/up weight's name without the parameter; the routed
    experts' of a stack with shared ones, `moe_shared.py`)."""
    return first_part(by_role(op.operands, op.attrs)["w_gate_up"].producer.attrs["weight"]).rsplit(".", 1)[0]


def encode_experts(w: torch.Tensor, scheme: str, group: int | None) -> Weight:
    """The 3-D `#quantized` weight of stacked experts w [E, N, K]: each expert encoded, payloads stacked by rows."""
    parts = [encode_weight(w[e], scheme, group) for e in range(w.shape[0])]
    payload = {key: torch.cat([p.payload[key] for p in parts]) for key in parts[0].payload}
    placeholder = torch.zeros((), dtype=torch.float32).expand(*w.shape)
    return Weight(placeholder, dataclasses.replace(parts[0].encoding, axis=2), payload)  # scales along K


def quantize_moe(graph: Graph, op: Op, scheme: str | None, overrides: dict[str, str | None] | None,
                 group: int | None) -> tuple[str, dict[str, Any] | str]:
    """Encode `op`'s experts with the scheme its site resolves to: (site, stats) or (site, why they stay)."""
    site = experts_site(op)
    chosen = choose_by_pattern(site, scheme, overrides)
    if chosen not in MOE_SCHEMES:
        return site, ("kept high precision (quantize_overrides)" if chosen is None else
                      f"kept high precision: the moe kernels read {' / '.join(MOE_SCHEMES)} experts, not {chosen}")
    sc = get_scheme(chosen)
    roles = by_role(op.operands, op.attrs)
    dims = [roles[r].type.shape[1 if op.attrs["transposed"] else 2] for r in ("w_gate_up", "w_down")]
    if any(not isinstance(k, int) or k % 2 for k in dims):
        return site, f"kept high precision: input dims {dims} must be even (4-bit codes pack two per byte)"
    operands, stats = dict(roles), {"scheme": chosen, "bytes_fp16": 0, "bytes_after": 0, "rel_error": 0.0}
    for role in ("w_gate_up", "w_down"):
        const = roles[role].producer
        w = graph.weight(const.attrs["weight"]).data.to(torch.float32)
        w = w.transpose(1, 2).contiguous() if op.attrs["transposed"] else w
        enc = encode_experts(w, chosen, group if sc.group else None)
        name = graph.add_weight(free_name(graph, f"{const.attrs['weight']}.q"), enc)
        operands[role] = graph.insert_before(op, "const", [], {"weight": name}, name=const.result.name).result
        err = (decode_weight(enc) - w).norm() / w.norm().clamp_min(1e-30)
        stats["rel_error"] = max(stats["rel_error"], float(err))
        stats["bytes_fp16"] += w.numel() * 2
        stats["bytes_after"] += enc.nbytes()
    new = graph.insert_before(op, "moe", [operands[r] for r in ROLES if operands[r] is not None],
                              {**op.attrs, "transposed": False})
    old_name = op.result.name
    graph.replace_op(op, [new.result])
    graph.rename_value(new.result, old_name)
    for role in ("w_gate_up", "w_down"):  # the 16-bit experts leave the table once nothing reads them
        const = roles[role].producer
        if not const.result.uses:
            graph.erase(const)
            if not any(o.opcode == "const" and o.attrs["weight"] == const.attrs["weight"] for o in graph.ops):
                del graph.weights[const.attrs["weight"]]
    stats["group"] = enc.encoding.group
    return site, stats
