"""Architectures outside the test zoo, for the Triton 3.6 CLI probe (hidden-architecture stand-ins)."""
import torch
import transformers as tf


def _make(cfg_cls, model_cls, **kw):
    torch.manual_seed(0)
    return getattr(tf, model_cls)(getattr(tf, cfg_cls)(**kw)).eval()


def qwen2():
    return _make("Qwen2Config", "Qwen2ForCausalLM", hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                 num_attention_heads=6, num_key_value_heads=2, vocab_size=300, max_position_embeddings=128)


def neox():
    return _make("GPTNeoXConfig", "GPTNeoXForCausalLM", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=300, max_position_embeddings=128)


def phi():
    return _make("PhiConfig", "PhiForCausalLM", hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=300, max_position_embeddings=128)
