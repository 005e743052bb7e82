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
    DeepseekV3Config,
    Exaone4Config,
    FalconConfig,
    Gemma2Config,
    Gemma3TextConfig,
    Glm4MoeConfig,
    GPT2Config,
    GPTNeoXConfig,
    GptOssConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    ModernBertConfig,
    Olmo3Config,
    OlmoeConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
    SmolLM3Config,
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

_MOE: dict[str, Any] = {"moe_intermediate_size": 16, "num_experts_per_tok": 2}

#: Families whose layers differ by layer number, as spans starting mid-model must build them:
#: every checkpoint's block 3 is built unlike its block 0.
LAYER_DEPENDENT = {
    # Blocks 0 and 1 dense, the rest mixtures of experts (first_k_dense_replace).
    "deepseek_v3",
    # Dense blocks among mixtures of experts (mlp_only_layers).
    "qwen2_moe",
    # The attention scale of block i is 1 / (i + 1); weights large enough that a wrong scale
    # changes the greedy tokens.
    "gpt2-scaled",
    # Five sliding-window blocks (window 16, shorter than the tests' prompts), then one global.
    "gemma3",
    # Block 0 has no attention norm; every third block attends globally, the rest locally.
    "modernbert",
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
    "gpt2-scaled": lambda: GPT2Config(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=4,
        n_positions=512,
        initializer_range=1.0,
        scale_attn_by_inverse_layer_idx=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ),
    "deepseek_v3": lambda: DeepseekV3Config(
        **{**_LLAMA_LIKE, "num_key_value_heads": 4},  # MLA: one key per query head
        **_MOE,
        n_routed_experts=4,
        n_shared_experts=1,
        first_k_dense_replace=2,
        kv_lora_rank=16,
        q_lora_rank=24,
        qk_rope_head_dim=4,
        v_head_dim=8,
        qk_nope_head_dim=4,
        n_group=2,
        topk_group=1,
    ),
    "qwen2_moe": lambda: Qwen2MoeConfig(
        **_LLAMA_LIKE,
        **_MOE,
        shared_expert_intermediate_size=32,
        num_experts=4,
        mlp_only_layers=[0, 4],
    ),
    "qwen3_moe": lambda: Qwen3MoeConfig(
        **_LLAMA_LIKE, **_MOE, num_experts=4, mlp_only_layers=[1, 3]
    ),
    "glm4_moe": lambda: Glm4MoeConfig(
        **_LLAMA_LIKE,
        **_MOE,
        n_routed_experts=4,
        first_k_dense_replace=2,
        n_group=1,
        topk_group=1,
    ),
    "olmoe": lambda: OlmoeConfig(**_LLAMA_LIKE, num_experts=4, num_experts_per_tok=2),
    "gpt_oss": lambda: GptOssConfig(
        **_LLAMA_LIKE, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=8
    ),
    # Rotary embeddings in some layers only (no_rope_layers).
    "smollm3": lambda: SmolLM3Config(**_LLAMA_LIKE, no_rope_layers=[1, 1, 1, 0, 1, 0]),
    "gemma2": lambda: Gemma2Config(
        **_LLAMA_LIKE, head_dim=8, query_pre_attn_scalar=8, sliding_window=8
    ),
    "olmo3": lambda: Olmo3Config(**_LLAMA_LIKE, sliding_window=8),
    "exaone4": lambda: Exaone4Config(**_LLAMA_LIKE, sliding_window=8, sliding_window_pattern=3),
    "phi3": lambda: Phi3Config(**_LLAMA_LIKE),
    "gpt_neox": lambda: GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
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
    "modernbert": lambda: ModernBertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        local_attention=4,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"] * 2,
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
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


#: A prompt of token ids every tiny checkpoint's vocabulary holds.
PROMPT_IDS = [1, 5, 9, 13, 17, 21, 25, 29]


def local_greedy(path: Path, tokens: int) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
    """The prompt, greedy ``generate`` arguments for exactly ``tokens`` tokens, and what
    local transformers answers with them: what a swarm of ``path`` must give."""
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    ids = torch.tensor([PROMPT_IDS])
    kwargs = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
    return ids, kwargs, local.generate(ids, **kwargs)
