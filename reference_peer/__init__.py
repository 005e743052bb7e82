"""The reference peer: spans of Hugging Face models served over petalproto, and the client
model that runs ``generate()`` through a chain of them.

This is the only package of the project that imports torch. Its public names load on first
use (PEP 562), so that importing a submodule that needs no torch, such as the ``petal``
command modules in ``reference_peer._commands``, does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "Chain": "._chain",
    "LocalChain": "._chain",
    "default_cache_dir": "._convert",
    "prepare_default_model": "._convert",
    "BadTensor": "._errors",
    "OutOfCache": "._errors",
    "PeerError": "._errors",
    "SessionClosed": "._errors",
    "TooLong": "._errors",
    "TooManySessions": "._errors",
    "WrongSpan": "._errors",
    "Quantization": "._loading",
    "pick_device": "._loading",
    "DistributedModel": "._local",
    "DistributedModelForCausalLM": "._local",
    "SpanModel": "._spans",
    "SpanSession": "._spans",
    "tensor_from_wire": "._tensors",
    "tensor_to_wire": "._tensors",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
