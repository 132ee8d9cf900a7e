"""Config variants of the GQA decoders through `compile_decoder(executor="interpret")`: a hidden architecture is more
than its class (issue #13's CPU done-when), so the same probe as `arch_probe.py` (eager's greedy tokens; launches per
decoder layer + rest of one T=1 step, counted outside fxforge) on configs other than the zoo's small default: wider
heads (64, 128), MQA, a group of 3 query heads per KV head, RoPE scalings (llama3, yarn, linear, dynamic NTK,
LongRoPE), biases, tied / untied embeddings, odd sizes.

    OMP_NUM_THREADS=1 python benchmarks/config_probe.py --archs llama qwen2 [--variants d64 mqa ...]
        [--names llama@yarn phi3@longrope ...] [--out benchmarks/results/config_probe-<date>.md]
"""

from __future__ import annotations

import arch_probe
from probe_children import child_row, probe_parser, run_children

ROPE = {"rope_theta": 10000.0}
VARIANTS: dict[str, dict] = {
    "base": {},
    "d64": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512),
    "d128": dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=1, intermediate_size=384),
    "mqa": dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=1),
    "mha": dict(num_key_value_heads=4),
    "g3": dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, intermediate_size=160),
    "llama3rope": dict(rope_parameters=dict(ROPE, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                            high_freq_factor=4.0, original_max_position_embeddings=64)),
    "yarn": dict(rope_parameters=dict(ROPE, rope_type="yarn", factor=4.0, original_max_position_embeddings=64)),
    "linear": dict(rope_parameters=dict(ROPE, rope_type="linear", factor=2.0)),
    "dynamic": dict(rope_parameters=dict(ROPE, rope_type="dynamic", factor=2.0)),
    "longrope": dict(rope_parameters=dict(ROPE, rope_type="longrope", short_factor=[1.0] * 8, long_factor=[2.0] * 8,
                                          original_max_position_embeddings=64)),
    "abias": dict(attention_bias=True),
    "mbias": dict(mlp_bias=True),
    "tied": dict(tie_word_embeddings=True),
    "untied": dict(tie_word_embeddings=False),
    "odd": dict(intermediate_size=200, vocab_size=301),
}


def build(name: str, layers: int):
    """`arch@variant`: the GQA_DECODERS model with the variant's config fields."""
    from fxforge.testing import gqa_decoder

    arch, variant = name.split("@")
    return gqa_decoder(arch, layers, **VARIANTS[variant])


def config(name: str, layers: int):
    """`build`'s config without its weights."""
    from fxforge.testing import gqa_config

    arch, variant = name.split("@")
    return gqa_config(arch, layers, **VARIANTS[variant])


arch_probe.build, arch_probe.config = build, config  # the probe's builders (its period / launches / tokens code is its own)


def main() -> None:
    ap = probe_parser()
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--names", nargs="*", help="arch@variant pairs instead of --archs x --variants")
    args = ap.parse_args()
    if args.child:
        return child_row(arch_probe.probe, args.child, False)
    names = args.names or [f"{a}@{v}" for a in args.archs for v in args.variants]
    rows = run_children(__file__, names, lambda name: [], args.timeout)
    arch_probe.report(rows, False, "config_probe", args.out)


if __name__ == "__main__":
    main()
