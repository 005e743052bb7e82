"""Tensors on the wire: dtype name, shape, and raw little-endian bytes (SPEC.md §13.2).

A tensor travels as the map ``{"dtype": str, "shape": [int, ...], "data": bytes}``: the
elements in C order, each in the little-endian layout of its dtype. ``bfloat16`` has no NumPy
counterpart, so both directions reinterpret its bits as 16-bit integers; ``bool`` is one byte
per element, 0 or 1. Never pickle: the receiver builds the tensor from validated numbers and
bytes only, and checks the declared size against its limit before it copies anything.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Final

import torch

from ._errors import BadTensor

__all__ = ["DTYPES", "MAX_RANK", "BadTensor", "tensor_from_wire", "tensor_to_wire"]

#: Wire name -> torch dtype. The names are torch's own, without the ``torch.`` prefix.
DTYPES: Final[dict[str, torch.dtype]] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}
_NAMES: Final[dict[torch.dtype, str]] = {dtype: name for name, dtype in DTYPES.items()}

#: Highest rank a wire tensor may have: hidden states are [batch, tokens, hidden].
MAX_RANK: Final = 4

_KEYS: Final = frozenset(("dtype", "shape", "data"))

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships wheels for
    raise ImportError("the tensor codec assumes a little-endian host")


def tensor_to_wire(tensor: torch.Tensor) -> dict[str, Any]:
    """Encode a tensor for the wire.

    Args:
        tensor: any tensor of an allowed dtype and rank; it is copied to the CPU if needed.

    Returns:
        ``{"dtype": name, "shape": [..], "data": bytes}``, ready for msgpack.

    Raises:
        BadTensor: the dtype is not on the wire's list or the rank exceeds ``MAX_RANK``.
    """
    name = _NAMES.get(tensor.dtype)
    if name is None:
        raise BadTensor(f"dtype {tensor.dtype} cannot travel")
    if tensor.dim() > MAX_RANK:
        raise BadTensor(f"rank {tensor.dim()} exceeds {MAX_RANK}")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return {"dtype": name, "shape": list(tensor.shape), "data": data}


def tensor_from_wire(wire: object, *, max_bytes: int) -> torch.Tensor:
    """Decode and validate a tensor received from the wire.

    Args:
        wire: the decoded msgpack object that should hold a tensor.
        max_bytes: the largest ``data`` this receiver accepts.

    Returns:
        A new, writable CPU tensor that owns its memory.

    Raises:
        BadTensor: the object is not a well-formed tensor map, the dtype is not allowed, the
            shape is not a list of at most ``MAX_RANK`` non-negative ints, the data length
            differs from what dtype and shape imply or exceeds ``max_bytes``, or a ``bool``
            element is neither 0 nor 1.
    """
    dtype, shape, data = _fields(wire)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise BadTensor(f"tensor of {nbytes} bytes exceeds the limit of {max_bytes}")
    if len(data) != nbytes:
        raise BadTensor(f"data has {len(data)} bytes, dtype and shape imply {nbytes}")
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    if dtype is torch.bool and data.translate(None, b"\x00\x01"):
        raise BadTensor("bool elements must be 0 or 1")
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def _fields(wire: object) -> tuple[torch.dtype, list[int], bytes]:
    if not isinstance(wire, dict) or set(wire) != _KEYS:
        raise BadTensor("a tensor is a map with exactly the keys dtype, shape and data")
    name, shape, data = wire["dtype"], wire["shape"], wire["data"]
    if not isinstance(name, str) or name not in DTYPES:
        raise BadTensor(f"dtype {name!r} is not allowed")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise BadTensor(f"shape must be a list of at most {MAX_RANK} ints")
    if not all(type(dim) is int and dim >= 0 for dim in shape):
        raise BadTensor("shape entries must be non-negative ints")
    if not isinstance(data, bytes):
        raise BadTensor("data must be bytes")
    return DTYPES[name], shape, data
