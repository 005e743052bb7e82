"""Loading part of a checkpoint through transformers' own loader.

Both the peer's span and the client's head are the architecture's own classes, built from a
cut config and filled with a subset of the checkpoint's tensors (notes: models.md §4.3):
``from_pretrained(None, config=..., state_dict=...)`` on the concrete class applies the same
weight conversions (fused MoE experts), dtype casts and bitsandbytes quantization as a normal
load. The state dict holds lazy safetensors slices, so unneeded shards are never opened and
float32 weights on the CPU stay memory-mapped: peers that serve spans of the same files share
their pages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel

from . import _arch, _checkpoint

__all__ = ["Quantization", "load_client_model", "load_span_model", "pick_device"]

Quantization = Literal["int8", "nf4"]


def pick_device(
    device: str | torch.device, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """Resolve ``device="auto"`` and a default dtype (DESIGN.md "Precision").

    Args:
        device: ``"auto"``, or anything ``torch.device`` accepts.
        dtype: the compute dtype, or None for the device's default.

    Returns:
        CUDA with bf16 (fp16 where bf16 is unsupported) when available, else CPU with fp32;
        an explicit ``dtype`` wins.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if dtype is None:
        if resolved.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    return resolved, dtype


def load_span_model(
    path: Path,
    config: PretrainedConfig,
    start: int,
    *,
    whole: PretrainedConfig,
    device: torch.device,
    dtype: torch.dtype,
    quantization: Quantization | None,
) -> tuple[nn.Module, _arch.Blocks]:
    """Build the span's base model, its blocks as their own layers of the whole model, and
    fill them from the checkpoint.

    Args:
        path: the checkpoint directory.
        config: the span's config (``cut_config`` of ``whole``).
        start: the span's first block.
        whole: the whole model's config.
        device, dtype, quantization: where and how the weights go.

    Returns:
        The model in eval mode, and where its blocks are.

    Raises:
        ValueError: the checkpoint lacks tensors of the span, or holds span tensors that the
            span's blocks have no place for (each named).
    """
    blocks = _arch.find_blocks(config)
    weight_map = _checkpoint.read_weight_map(path)
    keys = _checkpoint.find_block_keys(list(weight_map), blocks.path)
    count = int(config.num_hidden_layers)
    missing = [i for i in range(start, start + count) if i not in keys.by_block]
    if missing:
        raise ValueError(f"the checkpoint has no tensors for blocks {missing}")
    names = [name for i in range(start, start + count) for name in keys.by_block[i]]

    def rename(name: str) -> str:
        index = int(name[len(keys.prefix) + len(keys.blocks_path) + 1 :].split(".", 1)[0])
        return keys.block_name(index - start) + name[len(keys.block_name(index)) :]

    extra: dict[str, Any] = {}
    if quantization is not None:
        extra["quantization_config"] = _bnb_config(quantization, dtype)
    model_class: Any = _arch.span_class(blocks, whole, start, start + count)
    with (
        _arch.quiet_loading(),
        _checkpoint.open_tensors(path, weight_map, names, rename) as state_dict,
    ):
        model, info = model_class.from_pretrained(
            None,
            config=config,
            state_dict=state_dict,
            dtype=dtype,
            device_map={"": device},
            output_loading_info=True,
            **extra,
        )
    inside = f"{blocks.path}."
    lost = sorted(_real_name(k, inside, start) for k in info["missing_keys"] if inside in k)
    if lost:
        raise ValueError(
            f"the checkpoint lacks {len(lost)} tensor(s) of blocks {start}:{start + count}: "
            + ", ".join(lost[:5])
            + (" ..." if len(lost) > 5 else "")
        )
    stray = sorted(_real_name(k, inside, start) for k in info["unexpected_keys"])
    if stray:
        raise ValueError(
            f"the checkpoint holds {len(stray)} tensor(s) of blocks {start}:{start + count} "
            "that the blocks have no place for: "
            + ", ".join(stray[:5])
            + (" ..." if len(stray) > 5 else "")
        )
    model.eval()
    assert isinstance(model, nn.Module)
    return model, blocks


def _real_name(key: str, inside: str, start: int) -> str:
    """A span model's parameter name with the block's number in the whole model."""
    head, found, tail = key.partition(inside)
    if not found:
        return key
    index, dot, rest = tail.partition(".")
    return f"{head}{inside}{int(index) + start}{dot}{rest}" if index.isdigit() else key


def _bnb_config(quantization: Quantization, dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    bnb: Any = BitsAndBytesConfig
    if quantization == "int8":
        return bnb(load_in_8bit=True)
    return bnb(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def load_client_model(
    path: Path,
    auto_class: Any,
    *,
    device: str | torch.device,
    dtype: torch.dtype | None,
) -> tuple[PreTrainedModel, _arch.Blocks, PretrainedConfig]:
    """Load a one-block model with every non-block tensor of the checkpoint.

    The one block is random (nothing of it is read); the caller replaces it.

    Args:
        path: the checkpoint directory.
        auto_class: ``AutoModelForCausalLM`` or ``AutoModel``.
        device: where to put the tensors (``"auto"`` allowed).
        dtype: their dtype, or None for the device's default.

    Returns:
        The model in eval mode (with the checkpoint's generation config when it has one),
        where its blocks are, and the whole model's config.

    Raises:
        ValueError: the checkpoint lacks some non-block tensor.
    """
    config = _arch.load_config(str(path))
    sub = _arch.cut_config(config, 0, 1, span=False)
    blocks = _arch.find_blocks(sub)
    with torch.device("meta"):
        model_class = type(auto_class.from_config(sub))
    weight_map = _checkpoint.read_weight_map(path)
    block_keys = _checkpoint.find_block_keys(list(weight_map), blocks.path)
    in_blocks = {name for names in block_keys.by_block.values() for name in names}
    names = [name for name in weight_map if name not in in_blocks]
    resolved, dtype = pick_device(device, dtype)
    with _arch.quiet_loading(), _checkpoint.open_tensors(path, weight_map, names) as state_dict:
        model, info = model_class.from_pretrained(
            None,
            config=sub,
            state_dict=state_dict,
            dtype=dtype,
            device_map={"": resolved},
            output_loading_info=True,
        )
    lost = [key for key in info["missing_keys"] if f"{blocks.path}." not in key]
    if lost:
        raise ValueError(f"the checkpoint lacks non-block tensors: {lost[:5]}")
    if (path / "generation_config.json").is_file() and model.can_generate():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    model.eval()
    return model, blocks, config
