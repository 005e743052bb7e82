"""What a device can hold: the precision and the number of blocks a server picks by itself.

``petal serve`` decides three things before it loads anything (SPEC.md §13.8, DESIGN
"Precision"):

- the compute dtype (``--dtype auto``): bf16 on GPUs that support it, fp16 on older GPUs,
  fp32 on CPUs (``pick_device``);
- the quantization (``--quantize auto``): none when the span fits the device's free memory,
  else int8, else nf4 (bitsandbytes), the first that fits;
- the number of blocks (``--num-blocks auto``): as many as fit at full precision after room
  for the attention-cache budget, quantized only when not even one block fits otherwise.

"Fits" compares an estimate with the free memory less a reserve for activations and the
allocator. A block's weight bytes come from the checkpoint's safetensors headers (shapes and
dtypes, no tensor read), converted to the compute dtype; quantization shrinks the 2-D weights
of linear layers (1 byte per weight plus a scale per row for int8, half a byte plus a scale
per 64 weights for nf4) and leaves the rest. The attention cache per token and block is
estimated from the config (keys and values of every key-value head); once loaded, the span
measures its own and sizes its budget by that.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PretrainedConfig

from . import _arch, _checkpoint
from ._loading import Quantization

__all__ = ["Plan", "block_weight_bytes", "free_bytes", "plan_span"]

#: Share of the free memory kept for activations, the allocator and everything else.
RESERVE_SHARE = 0.1
#: At least this much is kept free, in bytes.
MIN_RESERVE = 256 << 20
#: Bytes per weight and per-row or per-block overhead of each quantization.
_QUANTIZED_BYTES: dict[Quantization, float] = {"int8": 1.0, "nf4": 0.5}
_NF4_BLOCK = 64
_SAFETENSORS_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def free_bytes(device: torch.device) -> int:
    """Memory free for a span on ``device``, in bytes (available RAM on the CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    return _available_ram()


def _available_ram() -> int:
    """The kernel's estimate of memory available without swapping (Linux), else free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def usable_bytes(free: int) -> int:
    """``free`` less the reserve."""
    return max(0, free - max(int(free * RESERVE_SHARE), MIN_RESERVE))


def block_weight_bytes(
    path: Path,
    config: PretrainedConfig,
    *,
    dtype: torch.dtype,
    quantization: Quantization | None,
) -> list[int]:
    """Bytes each block's weights take once loaded, block by block.

    Args:
        path: the checkpoint directory.
        config: the whole model's config.
        dtype: the compute dtype floating-point weights are converted to.
        quantization: the bitsandbytes quantization of linear weights, or None.

    Returns:
        One estimate per block, in block order.

    Raises:
        ValueError: the checkpoint has no tensors of some block.
    """
    blocks = _arch.find_blocks(_arch.cut_config(config, 0, 1, span=True))
    weight_map = _checkpoint.read_weight_map(path)
    keys = _checkpoint.find_block_keys(list(weight_map), blocks.path)
    total = _arch.num_layers(config)
    missing = [i for i in range(total) if i not in keys.by_block]
    if missing:
        raise ValueError(f"the checkpoint has no tensors for blocks {missing}")
    shapes = _read_shapes(path, weight_map, [n for i in range(total) for n in keys.by_block[i]])
    size = torch.empty((), dtype=dtype).element_size()
    sizes = []
    for i in range(total):
        sizes.append(
            sum(
                _tensor_bytes(name, *shapes[name], size=size, quantization=quantization)
                for name in keys.by_block[i]
            )
        )
    return sizes


def _read_shapes(
    path: Path, weight_map: dict[str, str], names: Sequence[str]
) -> dict[str, tuple[list[int], str]]:
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(weight_map[name], []).append(name)
    shapes: dict[str, tuple[list[int], str]] = {}
    for file, file_names in by_file.items():
        with safe_open(str(path / file), framework="pt") as handle:
            for name in file_names:
                piece = handle.get_slice(name)
                shapes[name] = (list(piece.get_shape()), str(piece.get_dtype()))
    return shapes


def _tensor_bytes(
    name: str, shape: list[int], stored: str, *, size: int, quantization: Quantization | None
) -> int:
    count = math.prod(shape)
    if not stored.startswith(("F", "BF")):
        return count * _SAFETENSORS_SIZES.get(stored, 8)
    if quantization is None or len(shape) != 2 or not name.endswith(".weight") or "norm" in name:
        return count * size
    rows = shape[0]
    if quantization == "int8":
        return int(count * _QUANTIZED_BYTES["int8"]) + rows * 4
    return int(count * _QUANTIZED_BYTES["nf4"]) + math.ceil(count / _NF4_BLOCK) * 4


def cache_bytes_per_token(config: PretrainedConfig, dtype: torch.dtype) -> int:
    """Estimated attention-cache bytes of one token of one sequence in one block."""
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    hidden = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    key = int(getattr(config, "qk_head_dim", None) or head_dim)  # MLA: nope + rope dims
    value = int(getattr(config, "v_head_dim", None) or head_dim)
    return kv_heads * (key + value) * torch.empty((), dtype=dtype).element_size()


def _size(count: int) -> str:
    """Bytes for people: ``1.50 GiB``, ``320 KiB``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            value = count / (1 << shift)
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{count} B"


@dataclass(frozen=True, slots=True)
class Plan:
    """What a server will load.

    Attributes:
        count: how many blocks it serves.
        quantization: None, ``"int8"`` or ``"nf4"``.
        need: estimated bytes of the span's weights plus its attention-cache budget.
        free: the device's free memory, in bytes.
        why: one line saying how the plan was chosen.
    """

    count: int
    quantization: Quantization | None
    need: int
    free: int
    why: str


class DoesNotFit(ValueError):
    """Not even the smallest choice fits the device's free memory."""


def plan_span(
    weights: dict[Quantization | None, list[int]],
    *,
    start: int | None,
    count: int | None,
    quantization: str | None,
    cache_per_block: int,
    free: int,
    limit: int | None = None,
) -> Plan:
    """Choose the quantization (for ``"auto"``) and the block count (for ``count=None``).

    Args:
        weights: block weight bytes for each quantization that may be chosen (``None`` for
            none), as ``block_weight_bytes`` gives them, in the order ``"auto"`` tries them.
        start: the span's first block when it is fixed (``--blocks``), else None (the
            heaviest window of ``count`` blocks is assumed).
        count: the number of blocks, or None for as many as fit.
        quantization: ``"auto"``, or the quantization the operator asked for.
        cache_per_block: attention-cache budget bytes of one block.
        free: the device's free memory.
        limit: the operator's budget for weights and cache (``--memory``): the plan uses
            at most this, and at most ``free`` less a reserve.

    Returns:
        The plan.

    Raises:
        DoesNotFit: nothing the operator allows fits (explicit choices are never refused:
            the operator knows best; only ``"auto"`` choices are checked).
    """
    usable = usable_bytes(free) if limit is None else min(limit, usable_bytes(free))
    total = len(weights[None])
    auto = quantization == "auto"
    choices = list(weights) if auto else [q for q in weights if q == quantization]
    if not choices:
        raise ValueError(f"no block sizes for quantization {quantization!r}")

    def need(q: Quantization | None, n: int) -> int:
        sizes = weights[q]
        if start is not None:
            return sum(sizes[start : start + n]) + n * cache_per_block
        heaviest = max(sum(sizes[i : i + n]) for i in range(total - n + 1))
        return heaviest + n * cache_per_block

    def fitting(q: Quantization | None) -> int:
        """How many blocks fit at ``q``: ``count`` or 0 when it is fixed, else the most."""
        if count is not None:
            return count if need(q, count) <= usable else 0
        return max((n for n in range(1, total + 1) if need(q, n) <= usable), default=0)

    room = f"{_size(usable)} usable ({_size(free)} free)"
    for q in choices:
        n = fitting(q)
        if n or not auto:
            n = n or count or 1
            what = f"{n} blocks" if count is not None else f"{n} of {total} blocks"
            why = f"{what} fit at {q or 'full precision'}: {_size(need(q, n))} of {room}"
            return Plan(n, q, need(q, n), free, why)
    smallest = choices[-1] or "full precision"
    if count is None:
        what = f"not even one block fits: it needs {_size(need(choices[-1], 1))}"
    else:
        what = f"{count} blocks need {_size(need(choices[-1], count))} even"
    raise DoesNotFit(f"{what} at {smallest}, and {room}")
