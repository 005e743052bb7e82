"""A span: blocks ``[start, end)`` of a Hugging Face model, run through the model's own code.

Theory of operation (notes: models.md §4.3). We build the architecture's own base model with
``num_hidden_layers`` cut to the span, load only the span's tensors into it through
transformers' loader (so weight conversions, dtypes and bitsandbytes quantization apply), and
run it by calling the base model's ``forward``. The model computes what its blocks need
(causal or sliding-window masks, rotary tables, ALiBi) from the 2-D attention mask, the
position ids and the cache. Two hooks, registered once at load, make the call a span:

- a forward pre-hook on the first block swaps its ``hidden_states`` for the activations we
  were given (whatever the embedding layers made of them is discarded);
- a forward hook on the last block raises ``_SpanOutput`` carrying the block's output, so the
  final norm and anything after it never run.

Each block is built as the layer it is in the whole model (``_arch.span_class``): a block's
structure may depend on its layer number, and some blocks use the number when they run
(GPT-2's inverse-layer attention scale), so blocks keep it. They index the attention cache
with it, too; a ``SpanCache`` is a ``DynamicCache`` of the cut config whose ``update`` maps
layer ``start + i`` to entry ``i``. Everything the model itself asks of the cache (its
length, the sliding/full layout behind the masks) counts entries from the span's first
block, so ``get_seq_length()`` is the number of tokens the span has seen. A ``SpanSession``
owns one such cache.

Invariants: ``_incoming`` is set only while ``_lock`` is held, so concurrent callers (threads
of an RPC server) never see each other's activations; a session whose step failed half way
is closed, because its cache may hold some layers' entries for the failed tokens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig

from . import _arch
from ._errors import BadTensor, OutOfCache, SessionClosed, TooLong, TooManySessions, WrongSpan
from ._loading import Quantization, load_span_model, pick_device

__all__ = ["Quantization", "SpanCache", "SpanModel", "SpanSession", "pick_device"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK_DTYPES = (torch.int64, torch.int32, torch.bool)
_POSITION_DTYPES = (torch.int64, torch.int32)


class SpanCache(DynamicCache):
    """The attention cache of a span that starts at block ``start``.

    The span's blocks update it with their layer numbers in the whole model; entry ``i``
    holds layer ``start + i``. Every other method counts entries from 0, as the model's own
    code (mask sizes, sequence length) expects of a cache built from the span's config.
    """

    def __init__(self, config: PretrainedConfig, start: int) -> None:
        # A config whose layer types name sliding windows but no window size (ModernBERT's
        # local attention is ``local_attention``) cannot lay out a cache on transformers 5.0;
        # such a model is an encoder, which never fills one: lay its layers out lazily.
        types = getattr(config, "layer_types", None) or ()
        window = getattr(config, "sliding_window", None) or getattr(
            config, "attention_chunk_size", None
        )
        sliding = any(kind in ("sliding_attention", "chunked_attention") for kind in types)
        super().__init__(config=None if sliding and window is None else config)
        self.start = start

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``DynamicCache.update`` of layer ``layer_idx`` of the whole model."""
        keys, values = super().update(
            key_states, value_states, layer_idx - self.start, *args, **kwargs
        )
        return keys, values


class _SpanOutput(Exception):
    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


@dataclass(frozen=True, slots=True)
class _Call:
    """How to call the base model's forward in this transformers version."""

    cache_kw: str
    position_ids: bool
    cache_position: bool


class SpanModel:
    """Blocks ``[start, end)`` of a checkpoint, ready to run.

    Thread-safe: calls are serialized by an internal lock.
    """

    def __init__(
        self,
        path: str | Path,
        start: int,
        end: int,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        quantization: Quantization | None = None,
        cache_budget_bytes: int | None = None,
        max_sessions: int | None = None,
    ) -> None:
        """Load the span.

        Args:
            path: a checkpoint directory (config.json plus safetensors, sharded or not).
            start: first block (inclusive).
            end: last block (exclusive).
            device: ``"auto"`` or a torch device.
            dtype: compute dtype; by default bf16/fp16 on CUDA, fp32 on CPU.
            quantization: ``"int8"`` or ``"nf4"`` through bitsandbytes (CUDA).
            cache_budget_bytes: the most attention-cache memory open sessions may reserve.
            max_sessions: the most sessions open at once.

        Raises:
            WrongSpan: ``[start, end)`` is empty or outside the model.
            ValueError: the checkpoint lacks some tensors of the span.
        """
        self.path = Path(path)
        self.full_config = _arch.load_config(str(self.path))
        total = _arch.num_layers(self.full_config)
        if not 0 <= start < end <= total:
            raise WrongSpan(f"span [{start}, {end}) is outside the model's {total} blocks")
        self.start, self.end = start, end
        self.device, self.dtype = pick_device(device, dtype)
        #: bitsandbytes quantization of the span's linear layers (SPEC.md §13.8), or None.
        self.quantization: Quantization | None = quantization
        self.config: PretrainedConfig = _arch.cut_config(self.full_config, start, end, span=True)
        self.hidden_size = int(self.full_config.hidden_size)
        self.model, where = load_span_model(
            self.path,
            self.config,
            start,
            whole=self.full_config,
            device=self.device,
            dtype=self.dtype,
            quantization=quantization,
        )
        blocks = where.of(self.model)
        params = _arch.forward_params(self.model)
        self._call = _Call(
            cache_kw="cache" if "cache" in params else "past_key_values",
            position_ids="position_ids" in params,
            cache_position="cache_position" in params,
        )
        self._lock = threading.Lock()
        self._incoming: torch.Tensor | None = None
        blocks[0].register_forward_pre_hook(self._swap_input, with_kwargs=True)
        blocks[-1].register_forward_hook(self._stop)
        self.cache_budget_bytes = cache_budget_bytes
        self.max_sessions = max_sessions
        self._reserved = 0
        self._sessions = 0
        self._bytes_per_token: int | None = None

    # --- hooks -------------------------------------------------------------------------

    def _swap_input(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (self._incoming, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self._incoming}

    def _stop(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        raise _SpanOutput(output[0] if isinstance(output, tuple) else output)

    # --- running -----------------------------------------------------------------------

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Run the span over whole sequences, without a cache.

        Args:
            hidden: ``[batch, tokens, hidden_size]`` activations entering block ``start``.
            attention_mask: ``[batch, tokens]``, 1 for real tokens and 0 for padding.
            position_ids: ``[batch, tokens]``.

        Returns:
            ``[batch, tokens, hidden_size]`` activations leaving block ``end - 1``, in the
            span's dtype, on its device.

        Raises:
            BadTensor: a shape or dtype is wrong.
        """
        batch, tokens = self._check_hidden(hidden, None)
        _check_mask_and_positions(attention_mask, position_ids, (batch, tokens), tokens)
        return self._run(hidden, attention_mask, position_ids, None, 0)

    def _run(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: SpanCache | None,
        past: int,
    ) -> torch.Tensor:
        hidden = hidden.to(self.device, self.dtype)
        kwargs: dict[str, Any] = {
            "inputs_embeds": hidden,
            "attention_mask": attention_mask.to(self.device, torch.long),
            "use_cache": cache is not None,
        }
        if self._call.position_ids:
            kwargs["position_ids"] = position_ids.to(self.device, torch.long)
        if cache is not None:
            kwargs[self._call.cache_kw] = cache
        if self._call.cache_position:
            kwargs["cache_position"] = torch.arange(
                past, past + hidden.shape[1], device=self.device
            )
        with self._lock, torch.inference_mode():
            self._incoming = hidden
            try:
                self.model(**kwargs)
            except _SpanOutput as done:
                return done.hidden
            finally:
                self._incoming = None
        raise AssertionError("the last block of the span did not run")

    def _check_hidden(self, hidden: torch.Tensor, batch: int | None) -> tuple[int, int]:
        if hidden.dtype not in _FLOAT_DTYPES:
            raise BadTensor(f"hidden states must be floating point, not {hidden.dtype}")
        if hidden.dim() != 3 or hidden.shape[2] != self.hidden_size or hidden.shape[1] == 0:
            raise BadTensor(f"hidden states must be [batch, tokens>0, {self.hidden_size}]")
        if batch is not None and hidden.shape[0] != batch:
            raise BadTensor(f"the session's batch is {batch}, got {hidden.shape[0]}")
        return int(hidden.shape[0]), int(hidden.shape[1])

    # --- sessions ----------------------------------------------------------------------

    @property
    def cache_bytes_per_token(self) -> int:
        """Attention-cache bytes one token of one sequence costs in this span.

        Measured once, by running one token through a throw-away session, so it is right
        for any attention layout (grouped or multi-query heads, MLA, per-layer head dims).
        For sliding-window layers it is an upper bound.
        """
        if self._bytes_per_token is None:
            cache = SpanCache(self.config, self.start)
            hidden = torch.zeros(1, 1, self.hidden_size)
            ones = torch.ones(1, 1, dtype=torch.long)
            self._run(hidden, ones, ones - 1, cache, 0)
            self._bytes_per_token = _cache_nbytes(cache)
        return self._bytes_per_token

    def open_session(self, batch: int, max_length: int) -> SpanSession:
        """Open an inference session with its own attention cache.

        Args:
            batch: sequences per step.
            max_length: the most tokens (per sequence) the session will hold.

        Returns:
            The session; close it (or use it as a context manager) to release its budget.

        Raises:
            ValueError: ``batch`` or ``max_length`` is not positive.
            TooManySessions: ``max_sessions`` sessions are open already.
            OutOfCache: the session's worst-case cache exceeds what the budget has left.
        """
        if batch <= 0 or max_length <= 0:
            raise ValueError("batch and max_length must be positive")
        need = batch * max_length * self.cache_bytes_per_token if self.cache_budget_bytes else 0
        with self._lock:
            if self.max_sessions is not None and self._sessions >= self.max_sessions:
                raise TooManySessions(f"{self._sessions} sessions are open")
            free = self.cache_free_bytes
            if free is not None and need > free:
                raise OutOfCache(f"the session needs {need} cache bytes, {free} are free")
            self._sessions += 1
            self._reserved += need
        return SpanSession(self, batch, max_length, need)

    @property
    def cache_free_bytes(self) -> int | None:
        """Cache budget not reserved by open sessions (None without a budget)."""
        if self.cache_budget_bytes is None:
            return None
        return self.cache_budget_bytes - self._reserved

    def _release(self, reserved: int) -> None:
        with self._lock:
            self._sessions -= 1
            self._reserved -= reserved


class SpanSession:
    """One inference session on a span: an attention cache and its length.

    Not thread-safe: steps of one session must not overlap (they are ordered anyway).
    """

    def __init__(self, span: SpanModel, batch: int, max_length: int, reserved: int) -> None:
        self.span, self.batch, self.max_length = span, batch, max_length
        self._reserved = reserved
        self._cache: SpanCache | None = SpanCache(span.config, span.start)
        self.length = 0

    def step(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Run new tokens through the span, attending to everything the session has seen.

        Args:
            hidden: ``[batch, new, hidden_size]`` activations of the new tokens.
            attention_mask: ``[batch, length + new]``: the mask of the whole sequence so far.
            position_ids: ``[batch, new]``: positions of the new tokens.

        Returns:
            ``[batch, new, hidden_size]`` in the span's dtype, on its device.

        Raises:
            SessionClosed: the session was closed or broken.
            BadTensor: a shape or dtype is wrong.
            TooLong: the session would exceed ``max_length``.
        """
        if self._cache is None:
            raise SessionClosed("the session is closed")
        _, new = self.span._check_hidden(hidden, self.batch)
        total = self.length + new
        _check_mask_and_positions(attention_mask, position_ids, (self.batch, total), new)
        if total > self.max_length:
            raise TooLong(f"{total} tokens exceed the session's max_length {self.max_length}")
        try:
            out = self.span._run(hidden, attention_mask, position_ids, self._cache, self.length)
        except BaseException:
            self.close()
            raise
        self.length = total
        return out

    def close(self) -> None:
        """Free the cache and the budget. Idempotent."""
        if self._cache is not None:
            self._cache = None
            self.span._release(self._reserved)

    def __enter__(self) -> SpanSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_mask_and_positions(
    mask: torch.Tensor, positions: torch.Tensor, mask_shape: tuple[int, int], new: int
) -> None:
    """SPEC.md §13.2: 0/1 masks of the whole sequence, non-negative positions of new tokens."""
    _check_ids("attention_mask", mask, mask_shape, _MASK_DTYPES)
    _check_ids("position_ids", positions, (mask_shape[0], new), _POSITION_DTYPES)
    if mask.dtype is not torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise BadTensor("attention_mask values must be 0 or 1")
    if bool((positions < 0).any()):
        raise BadTensor("position_ids must not be negative")


def _check_ids(
    name: str, tensor: torch.Tensor, shape: tuple[int, int], dtypes: tuple[torch.dtype, ...]
) -> None:
    if tensor.dtype not in dtypes:
        raise BadTensor(f"{name} must be one of {dtypes}, not {tensor.dtype}")
    if tuple(tensor.shape) != shape:
        raise BadTensor(f"{name} must have shape {list(shape)}, not {list(tensor.shape)}")


def _cache_nbytes(cache: DynamicCache) -> int:
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total
