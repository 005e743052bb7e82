"""The reference peer: spans of Hugging Face models served over petalproto, and the client
model that runs ``generate()`` through a chain of them.

This is the only package of the project that imports torch.
"""

from __future__ import annotations

from ._chain import Chain, LocalChain
from ._convert import default_cache_dir, prepare_default_model
from ._errors import (
    BadTensor,
    OutOfCache,
    PeerError,
    SessionClosed,
    TooLong,
    TooManySessions,
    WrongSpan,
)
from ._loading import Quantization, pick_device
from ._local import DistributedModel, DistributedModelForCausalLM
from ._spans import SpanModel, SpanSession
from ._tensors import tensor_from_wire, tensor_to_wire

__all__ = [
    "BadTensor",
    "Chain",
    "DistributedModel",
    "DistributedModelForCausalLM",
    "LocalChain",
    "OutOfCache",
    "PeerError",
    "Quantization",
    "SessionClosed",
    "SpanModel",
    "SpanSession",
    "TooLong",
    "TooManySessions",
    "WrongSpan",
    "default_cache_dir",
    "pick_device",
    "prepare_default_model",
    "tensor_from_wire",
    "tensor_to_wire",
]
