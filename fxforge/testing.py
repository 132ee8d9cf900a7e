"""Small real model architectures with random weights (the "zoo"), for the demo, notebook, tests and benchmarks.

Nothing in the package imports this module (tests/test_layering.py checks it): it is for code that
uses fxforge, and it is here so the demo and the notebook run from an installed package.

Built from Hugging Face `transformers` configs (no download: weights are random and seeded), plus
a plain MLP. `transformers` is imported only when a model is asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


def _hf(config_cls: str, model_cls: str, **config: Any) -> torch.nn.Module:
    import transformers

    cfg = getattr(transformers, config_cls)(**config)
    return getattr(transformers, model_cls)(cfg).eval()


def llama(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
          vocab: int = 256) -> torch.nn.Module:
    """LlamaForCausalLM with grouped-query attention (kv_heads < heads)."""
    return _hf("LlamaConfig", "LlamaForCausalLM", hidden_size=hidden, intermediate_size=intermediate,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
               vocab_size=vocab, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def mistral(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
            vocab: int = 256) -> torch.nn.Module:
    return _hf("MistralConfig", "MistralForCausalLM", hidden_size=hidden, intermediate_size=intermediate,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
               vocab_size=vocab, max_position_embeddings=512, sliding_window=None, bos_token_id=1,
               eos_token_id=2, pad_token_id=0)


def gpt2(hidden: int = 64, layers: int = 2, heads: int = 4, vocab: int = 256) -> torch.nn.Module:
    return _hf("GPT2Config", "GPT2LMHeadModel", n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=vocab,
               n_positions=512, bos_token_id=1, eos_token_id=2)


def bert(hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int = 128, vocab: int = 256) -> torch.nn.Module:
    return _hf("BertConfig", "BertModel", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=512)


class MLP(torch.nn.Module):
    """A plain MLP: linear -> GELU -> linear -> residual -> LayerNorm."""

    def __init__(self, dim: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.up = torch.nn.Linear(dim, hidden)
        self.down = torch.nn.Linear(hidden, dim)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.down(torch.nn.functional.gelu(self.up(x))))


def mlp(dim: int = 64, hidden: int = 256) -> torch.nn.Module:
    return MLP(dim, hidden).eval()


# DeepSeek-V3-style MoE configs (GLM-4.5, dots.llm1): sigmoid router, choice bias, one shared expert, one group
_DEEPSEEK_MOE = {"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "n_shared_experts": 1,
                 "n_group": 1, "topk_group": 1, "first_k_dense_replace": 0}


# GQA decoder LMs of `transformers` beyond Llama/Qwen2 (issue #13's hidden architecture; benchmarks/arch_probe.py):
# name -> (config class, model class, config overrides). head_dim 16 where a config's default is not hidden / heads.
GQA_DECODERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "mistral-swa": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 6}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),  # per-head q_norm / k_norm
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}),  # GeGLU, (1 + w) RMSNorm, embedding scale
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 6}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16,
                                                        "sliding_window": 6}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),  # fused qkv_proj and gate_up_proj
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"embedding_multiplier": 2.0, "attention_multiplier": 0.2,
                                                        "residual_multiplier": 0.5, "logits_scaling": 4.0}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", {}),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", {"sliding_window": None}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {}),
    "glm": ("GlmConfig", "GlmForCausalLM", {"head_dim": 16}),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {}),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", {}),
    "helium": ("HeliumConfig", "HeliumForCausalLM", {"head_dim": 16}),
    "exaone4": ("Exaone4Config", "Exaone4ForCausalLM", {"head_dim": 16}),
    "seed_oss": ("SeedOssConfig", "SeedOssForCausalLM", {"head_dim": 16}),
    "arcee": ("ArceeConfig", "ArceeForCausalLM", {"head_dim": 16}),
    "ministral": ("MinistralConfig", "MinistralForCausalLM", {"head_dim": 16}),
    "ministral3": ("Ministral3Config", "Ministral3ForCausalLM", {"head_dim": 16}),  # position-scaled q after RoPE
    "glm4": ("Glm4Config", "Glm4ForCausalLM", {"head_dim": 16}),  # interleaved partial RoPE + post-norms
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM", {"sliding_window": 6}),
    "cohere2": ("Cohere2Config", "Cohere2ForCausalLM", {"sliding_window": 6}),
    "nemotron": ("NemotronConfig", "NemotronForCausalLM", {"head_dim": 16}),  # ReLU^2 MLP, (1 + w) LayerNorm
    "apertus": ("ApertusConfig", "ApertusForCausalLM", {}),  # xIELU activation
    "hunyuan": ("HunYuanDenseV1Config", "HunYuanDenseV1ForCausalLM", {"head_dim": 16}),  # q/k norm after RoPE
    "ernie4_5": ("Ernie4_5Config", "Ernie4_5ForCausalLM", {"head_dim": 16}),
    "bitnet": ("BitNetConfig", "BitNetForCausalLM", {}),  # sub-norms before o_proj / down
    "vaultgemma": ("VaultGemmaConfig", "VaultGemmaForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16,
                                                                "sliding_window": 6}),
    "cwm": ("CwmConfig", "CwmForCausalLM", {"head_dim": 16, "sliding_window": 6}),
    "nanochat": ("NanoChatConfig", "NanoChatForCausalLM", {}),
    "jais2": ("Jais2Config", "Jais2ForCausalLM", {}),
    "apertus1p5": ("Apertus1p5TextConfig", "Apertus1p5TextForCausalLM", {}),
    "beam": ("BeamConfig", "BeamForCausalLM", {"head_dim": 16, "sliding_window": 6}),
    "falcon": ("FalconConfig", "FalconForCausalLM", {"new_decoder_architecture": True, "num_kv_heads": 2}),
    # Falcon-7B's form: one kv head (multi-query), a parallel block under one LayerNorm
    "falcon_mqa": ("FalconConfig", "FalconForCausalLM", {"new_decoder_architecture": False, "multi_query": True,
                                                         "parallel_attn": True}),
    "flint": ("FlintConfig", "FlintForCausalLM", {"head_dim": 16, "sliding_window": 6}),
    "gemma4": ("Gemma4TextConfig", "Gemma4ForCausalLM", {"head_dim": 16, "sliding_window": 6}),
    "gemma4_unified": ("Gemma4UnifiedTextConfig", "Gemma4UnifiedForCausalLM", {"head_dim": 16, "sliding_window": 6}),
    "granite_swa": ("GraniteSWAConfig", "GraniteSWAForCausalLM", {"sliding_window": 6}),
    "hyperclovax": ("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM", {"head_dim": 16}),
    "phi": ("PhiConfig", "PhiForCausalLM", {}),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", {}),
    "diffllama": ("DiffLlamaConfig", "DiffLlamaForCausalLM", {"head_dim": 16}),
    "doge": ("DogeConfig", "DogeForCausalLM", {}),
    # Llama 4's dense layers: complex RoPE (carried as real pairs, `frontend/aten_complex.py`), chunked attention
    "llama4": ("Llama4TextConfig", "Llama4ForCausalLM", {"moe_layers": [], "intermediate_size_mlp": 128,
                                                         "head_dim": 16, "attention_chunk_size": 8}),
    "emu3": ("Emu3TextConfig", "Emu3ForCausalLM", {}),  # Emu3's text decoder (session 15's survey)
    # mixture-of-experts FFNs (eager's tokens; the experts run as externs and pointwise kernels, not within 6 + 4)
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2,
                                                            "moe_intermediate_size": 32, "head_dim": 16}),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2}),
    "mellum": ("MellumConfig", "MellumForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2,
                                                     "moe_intermediate_size": 32, "head_dim": 16}),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2,
                                                      "head_dim": 16, "sliding_window": 6}),
    # shared experts and DeepSeek-V3-style routers (sigmoid scores, a choice bias; one group) (session 16)
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2,
                                                            "moe_intermediate_size": 32,
                                                            "shared_expert_intermediate_size": 64}),
    "glm4_moe": ("Glm4MoeConfig", "Glm4MoeForCausalLM", {**_DEEPSEEK_MOE, "head_dim": 16}),
    "dots1": ("Dots1Config", "Dots1ForCausalLM", _DEEPSEEK_MOE),
    "exaone_moe": ("ExaoneMoeConfig", "ExaoneMoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2,
                                                               "moe_intermediate_size": 32, "num_shared_experts": 1,
                                                               "n_group": 1, "topk_group": 1,
                                                               "first_k_dense_replace": 0}),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", "Ernie4_5_MoeForCausalLM", {"moe_num_experts": 4, "moe_k": 2,
                                                                       "moe_intermediate_size": 32,
                                                                       "moe_num_shared_experts": 1,
                                                                       "moe_layer_start_index": 0}),
    "hunyuan_moe": ("HunYuanMoEV1Config", "HunYuanMoEV1ForCausalLM", {"num_experts": 4, "moe_topk": 2, "head_dim": 16}),
    "minimax_m2": ("MiniMaxM2Config", "MiniMaxM2ForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2,
                                                               "head_dim": 16}),
    # transposed experts ([E, H, 2I]) with a shared MLP, the routing softmax over the top-k logits (session 17)
    "aria_text": ("AriaTextConfig", "AriaTextForCausalLM", {"moe_num_experts": 4, "moe_topk": 2,
                                                            "moe_num_shared_experts": 1}),
    # a LayerNorm (written out, no bias) before the router and experts, parallel attention / MoE (session 17)
    "cohere2_moe": ("Cohere2MoeConfig", "Cohere2MoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2,
                                                                  "moe_intermediate_size": 32, "sliding_window": 6}),
    # Granite-SWA's sinks as a scale on the output (sigmoid of logsumexp - sink) with a shared expert (session 17)
    "granitemoe_swa": ("GraniteMoeSWAConfig", "GraniteMoeSWAForCausalLM", {"num_local_experts": 4,
                                                                           "num_experts_per_tok": 2,
                                                                           "shared_intermediate_size": 256,
                                                                           "sliding_window": 6}),
    # v heads narrower than q/k's (24 / 16 here; 192 / 128 real), sinks on its sliding layers, values scaled before the
    # cache, twice the kv heads on sliding layers (session 18)
    "mimo_v2_flash": ("MiMoV2FlashConfig", "MiMoV2FlashForCausalLM", {"head_dim": 24, "v_head_dim": 16,
                                                                      "n_routed_experts": 4, "num_experts_per_tok": 2,
                                                                      "moe_intermediate_size": 32}),
    # MLA as HF runs it (per head: K = [nope; rope] of 24, V of 16; MHA, not GQA): eager's tokens (session 18)
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", {**_DEEPSEEK_MOE, "num_key_value_heads": 4,
                                                                  "q_lora_rank": 32, "kv_lora_rank": 16,
                                                                  "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
                                                                  "v_head_dim": 16, "first_k_dense_replace": 1}),
}


# eager's tokens, launches over the 6 + 4 budget (benchmarks/results/arch_probe-2026-12-02-s15-periods.md): unrecognised
# forms run as several kernels (Gemma 4's per-layer inputs and layer scalar, DiffLlama's two softmaxes, Doge's dynamic
# mask, Beam's norm and scale row kernels and host cache writes: its MoE layers, a top-k over 8 expert groups, are a
# `moe` op since session 16); Flint left it in session 16 (6 + 3 at 4 / 8 / 12 layers), Granite-SWA in session 17 (its
# LSE-scaled sinks are the attention op's sinks: 6 + 3); DeepSeek-V3's MLA (10 + 3 in session 18: its low-rank q and
# kv projections with their norms, RoPE on a split of the heads, two host ops building q and k)
OVER_LAUNCH_BUDGET = frozenset({"beam", "gemma4", "gemma4_unified", "diffllama", "doge", "deepseek_v3"})
# within the budget, but their caches written by host index_copy, not a kernel: Falcon's new decoder caches k and v
# repeated to every query head (its fused projection interleaves each kv group's q, k, v: no column slices either)
HOST_CACHE_WRITES = frozenset({"falcon"})


def gqa_config(arch: str, layers: int = 2, **overrides: Any) -> Any:
    """The transformers config of a `GQA_DECODERS` model (`gqa_decoder`'s sizes; no weights built)."""
    import transformers

    cfg_cls, _, extra = GQA_DECODERS[arch]
    config = {**dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                     vocab_size=256, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0),
              "num_hidden_layers": layers, **extra, **overrides}
    if "head_dim" in extra and "head_dim" not in overrides and {"hidden_size", "num_attention_heads"} & set(overrides):
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    return getattr(transformers, cfg_cls)(**config)


def gqa_decoder(arch: str, layers: int = 2, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A `GQA_DECODERS` model: hidden 64, intermediate 128, 4 heads, 2 KV heads, vocab 256, seeded random weights;
    norm weights (zero- or one-initialised by HF) get noise too, so a norm weight's handling is exercised.
    `overrides`: config fields on top (a new hidden size or head count resets an explicit head_dim to their ratio)."""
    import transformers

    config = gqa_config(arch, layers, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, GQA_DECODERS[arch][1])(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.rsplit(".", 2)[-2] and p.dim() == 1:
                p.add_(torch.randn_like(p) / 8)
    return model


LAYER_KINDS = ("layer_types", "no_rope_layers")  # per-layer config lists: the layer kinds whose code differs


def layer_period(arch: str, config: Callable[[str, int], Any] = gqa_config) -> int:
    """p, the layers of one period of the config's layer kinds (`LAYER_KINDS`: Gemma2's sliding / full, Llama 4's
    layer without RoPE every fourth), read from a 16-layer config without its last layer (some force it to full
    attention): launches per layer are (L(2p) - L(p)) / p. 1 without kinds; where no period <= 8 repeats from the
    first layer (Flint's two full layers first), the fewest first layers holding every kind twice: a step's kernel
    that the layers of one kind share (Flint's RoPE tables, its sliding layers') appears once a kind has two layers,
    and must be in both counts to stay out of the per-layer figure."""
    cfg = config(arch, 16)  # (a config only: no weights)
    lists = [v for v in (getattr(cfg, k, None) for k in LAYER_KINDS) if isinstance(v, list)]
    kinds = list(zip(*lists))[:-1] if lists else []
    if not kinds:
        return 1
    repeats = (p for p in range(1, 9) if all(kinds[i] == kinds[i % p] for i in range(len(kinds))))
    twice = (n for n in range(1, len(kinds) + 1) if all(kinds[:n].count(k) >= 2 for k in set(kinds)))
    return next(repeats, None) or next(twice, len(kinds))


MODELS: dict[str, Callable[..., torch.nn.Module]] = {"llama": llama, "mistral": mistral, "gpt2": gpt2, "bert": bert, "mlp": mlp}


def build(name: str, seed: int = 0, **sizes: Any) -> torch.nn.Module:
    """A model of the zoo with seeded random weights."""
    if name not in MODELS:
        raise KeyError(f"unknown zoo model {name!r}; known: {sorted(MODELS)}")
    torch.manual_seed(seed)
    return MODELS[name](**sizes)


def example_input(name: str, batch: int = 2, seq: int = 16, seed: int = 1) -> torch.Tensor:
    """Token ids for the language models, hidden states for the MLP."""
    gen = torch.Generator().manual_seed(seed)
    if name == "mlp":
        return torch.randn(batch, seq, 64, generator=gen)
    return torch.randint(3, 256, (batch, seq), generator=gen)


@torch.no_grad()
def plant_k_outliers(model: torch.nn.Module, pairs: int = 4, factor: float = 16.0, seed: int = 0) -> torch.nn.Module:
    """The same function with outlier channels in K (in place; HF Llama-style attention): per layer and KV
    head, `pairs` RoPE pairs (c, c + d/2) of W_k rows (and bias) are multiplied by `factor` and the matching
    W_q rows of every query head of the group divided by it. RoPE rotates within a pair, which is scaled
    as a whole, so q·kᵀ (and the fp32 output) is unchanged while the keys get K-cache outliers."""
    gen = torch.Generator().manual_seed(seed)
    for layer in model.model.layers:
        att = layer.self_attn
        d = att.head_dim
        kv = att.k_proj.out_features // d
        group = att.q_proj.out_features // d // kv
        for h in range(kv):
            chans = torch.randperm(d // 2, generator=gen)[:pairs]
            rows = torch.cat([chans, chans + d // 2])
            att.k_proj.weight[h * d + rows] *= factor
            if att.k_proj.bias is not None:
                att.k_proj.bias[h * d + rows] *= factor
            for g in range(group):
                qrows = (h * group + g) * d + rows
                att.q_proj.weight[qrows] /= factor
                if att.q_proj.bias is not None:
                    att.q_proj.bias[qrows] /= factor
    return model


@contextlib.contextmanager
def counting_launches() -> Iterator[list[str]]:
    """The names of the Triton kernels launched under the interpreter inside the block, counted from outside
    fxforge (by wrapping triton's `InterpretedFunction.run`): what a decode step really launches."""
    from triton.runtime.interpreter import InterpretedFunction

    names: list[str] = []
    original = InterpretedFunction.run

    def run(self, *args, **kwargs):
        names.append(self.fn.__name__)
        return original(self, *args, **kwargs)

    InterpretedFunction.run = run
    try:
        yield names
    finally:
        InterpretedFunction.run = original
