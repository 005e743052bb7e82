"""Tiny random-weight checkpoints of every supported family, and a character tokenizer.

Each checkpoint is saved with ``save_pretrained(max_shard_size=...)`` so that spans read a
subset of many shards, as they would from a real sharded checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    BloomConfig,
    FalconConfig,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 128
HIDDEN = 32
LAYERS = 6
SHARD = "40KB"

_LLAMA_LIKE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "initializer_range": 0.2,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "llama": lambda: LlamaConfig(**_LLAMA_LIKE),
    "mistral": lambda: MistralConfig(**_LLAMA_LIKE, sliding_window=24),
    "qwen2": lambda: Qwen2Config(**_LLAMA_LIKE),
    "qwen3": lambda: Qwen3Config(**_LLAMA_LIKE, head_dim=8),
    "mixtral": lambda: MixtralConfig(**_LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
    "gemma3": lambda: Gemma3TextConfig(
        **_LLAMA_LIKE,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=16,
        final_logit_softcapping=3.0,
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=4,
        n_positions=512,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ),
    "falcon": lambda: FalconConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ),
    "falcon-alibi": lambda: FalconConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        alibi=True,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ),
    "bloom": lambda: BloomConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        n_layer=LAYERS,
        n_head=4,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ),
}

ENCODERS: dict[str, Callable[[], PretrainedConfig]] = {
    "bert": lambda: BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=0,
    ),
}


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per printable ASCII character (ids 3..97)."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({chr(c): 3 + c - 32 for c in range(32, 127)})
    vocab.update({f"<x{i}>": i for i in range(len(vocab), VOCAB)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    fast: Any = PreTrainedTokenizerFast
    tokenizer: PreTrainedTokenizerFast = fast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
    )
    return tokenizer


def save_tiny(family: str, directory: Path, *, seed: int = 0) -> Path:
    """Save a random-weight checkpoint (and the character tokenizer) of one family.

    Args:
        family: a key of ``CONFIGS`` or ``ENCODERS``.
        directory: where to write it.
        seed: the weights' seed.

    Returns:
        ``directory``.
    """
    torch.manual_seed(seed)
    auto: Any = AutoModel if family in ENCODERS else AutoModelForCausalLM
    model = auto.from_config({**CONFIGS, **ENCODERS}[family]())
    model.save_pretrained(directory, max_shard_size=SHARD)
    char_tokenizer().save_pretrained(directory)
    return directory
