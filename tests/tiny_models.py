"""Tiny random-weight causal LMs of several architectures, built from configs (no hub)."""
from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

VOCAB = 49152  # SmolLM2's tokenizer, so tiny models pair with the real tokenizer

_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**_COMMON, tie_word_embeddings=True),
    "qwen2": lambda: tf.Qwen2Config(**_COMMON),
    "mistral": lambda: tf.MistralConfig(**_COMMON, sliding_window=None),
    "gemma": lambda: tf.GemmaConfig(**_COMMON, head_dim=16),
    "phi3": lambda: tf.Phi3Config(**{**_COMMON, "num_key_value_heads": 4}, pad_token_id=0),
    "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                                  bos_token_id=1, eos_token_id=2),
}


def tiny_model(arch: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    model = tf.AutoModelForCausalLM.from_config(config)
    return model.eval()


def save_tiny_model(folder: Path, tokenizer, arch: str = "llama", seed: int = 0) -> Path:
    """A local HF folder (safetensors + tokenizer) that llmft can load like any model."""
    model = tiny_model(arch, seed)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
