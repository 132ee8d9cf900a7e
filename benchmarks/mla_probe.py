"""MLA decoders (DeepSeek-V2/V3-style multi-head latent attention) as HF runs them, per head after the latent
up-projection (K = [nope; rope], V narrower: a v head dim apart from q/k's), through `arch_probe.probe`: eager's
greedy tokens and launches per decode step, without the quantized columns. Each transformers class gets the small
sizes below (the fields its config has), the zoo's hidden 64 and vocab 256, MHA (4 heads, 4 kv heads).

    OMP_NUM_THREADS=1 python benchmarks/mla_probe.py [--archs DeepseekV3ForCausalLM ...] [--out results/....md]
"""

from __future__ import annotations

import inspect

import arch_probe
from probe_children import child_row, probe_parser, run_children

MODELS = ["DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "MiniCPM3ForCausalLM", "Glm4MoeLiteForCausalLM",
          "Mistral4ForCausalLM", "YoutuForCausalLM", "AXK1ForCausalLM", "DeepseekV32ForCausalLM"]
SMALL = {"num_key_value_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
         "v_head_dim": 16, "qk_head_dim": 24, "head_dim": 24, "n_routed_experts": 4, "num_experts_per_tok": 2,
         "moe_intermediate_size": 32, "n_shared_experts": 1, "n_group": 1, "topk_group": 1,
         "first_k_dense_replace": 1}


def register(model: str) -> str:
    """Put `model` (a transformers class name) into the zoo with the SMALL fields its config takes; its zoo name."""
    import transformers

    from fxforge import testing

    cfg_cls = getattr(transformers, model).config_class
    fields = set(inspect.signature(cfg_cls.__init__).parameters) | set(getattr(cfg_cls, "__annotations__", {}))
    testing.GQA_DECODERS[model] = (cfg_cls.__name__, model, {k: v for k, v in SMALL.items() if k in fields})
    return model


def main() -> None:
    ap = probe_parser()
    args = ap.parse_args()
    if args.child:
        return child_row(lambda m: arch_probe.probe(register(m), quant=False), args.child)
    archs = args.archs if args.archs and args.archs[0] in MODELS else MODELS  # (the default is the zoo's names)
    rows = run_children(__file__, archs, lambda arch: [], args.timeout)
    arch_probe.report(rows, False, "mla_probe", args.out)


if __name__ == "__main__":
    main()
