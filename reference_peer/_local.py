"""The client side of a distributed model: embeddings and head here, blocks along a chain.

Theory of operation. The client model is the architecture's own ``*ForCausalLM`` (or base
model, for encoders) built with a single block, whose block list slot is then taken by
``_ChainBlock``, a module that hands the hidden states to a ``Chain`` and returns what comes
back. Everything before the blocks (token and position embeddings, embedding norms, Gemma's
embedding scale) and after them (final norm, LM head, logit soft-capping) is the model's own
code, so ``generate()`` and its logits processors, stop strings and streamers behave exactly as
for the local model. Only the non-block tensors are read from the checkpoint; the one real
block that the loader builds is dropped right away.

The chain needs the 2-D attention mask and the position ids, which blocks do not receive in a
portable form, so a forward pre-hook on the base model captures them from the arguments the
model's own forward passes down. The cache is taken from the block call itself, because the
base model may create one after the hook ran (``use_cache=True`` without a cache).

Sessions. ``generate()`` makes one attention cache per call. We never fill it with keys and
values (the peers hold those); ``_ChainBlock`` appends a zero-width entry per step so that its
``get_seq_length()`` advances and the model's own bookkeeping (position ids, masks, input
slicing) sees the true length. A cache of length 0 starts a new chain session; a cache already
in use continues it; ``generate()`` ends the session when it returns. Hence one session per
``generate()`` call, whatever the number of steps.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    Cache,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)

from ._chain import Chain
from ._errors import TooLong
from ._loading import load_client_model

__all__ = ["DistributedModel", "DistributedModelForCausalLM"]

#: What generate() produces when told neither max_new_tokens nor max_length (transformers' 20).
_DEFAULT_NEW_TOKENS = 20


class _ChainBlock(nn.Module):
    """Stands in for the block list: sends hidden states along the chain."""

    _owner: _ChainClient

    def __init__(self, owner: _ChainClient) -> None:
        super().__init__()
        # A plain attribute, not a submodule: the owner contains this module.
        object.__setattr__(self, "_owner", owner)
        self.returns_tuple = False
        self.probing = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden: torch.Tensor = args[0] if args else kwargs["hidden_states"]
        if self.probing:
            out = hidden
        else:
            # The cache the model really uses: it may have made one itself after our
            # pre-hook ran (``use_cache=True`` without a cache).
            values = (*args[1:], *kwargs.values())
            cache = next((value for value in values if isinstance(value, Cache)), None)
            out = self._owner._run_chain(hidden, cache)
        return (out,) if self.returns_tuple else out


def _plain_attributes(module: nn.Module) -> dict[str, Any]:
    """A module's public instance attributes that are neither tensors nor modules."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and name != "training"
    }


class _ChainClient:
    """What the causal-LM and the encoder client models share."""

    chain: Chain
    full_config: PretrainedConfig
    _chain_block: _ChainBlock
    _inputs: tuple[torch.Tensor | None, torch.Tensor | None]
    _session_cache: Cache | None
    _planned_length: int | None
    _base_signature: inspect.Signature
    _is_causal: ClassVar[bool]
    _loader_class: ClassVar[Any]  # the Auto class that loads the checkpoint's own model

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        chain: Chain | None = None,
        initial_peers: Sequence[Any] | None = None,
        model_name: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        min_precision: str | None = None,
        step_timeout: float | None = None,
        max_retries: int | None = None,
        deadline_floor: float | None = None,
        push: bool | None = None,
    ) -> Self:
        """Load the client's part of a checkpoint (embeddings; for a causal LM also the final
        norm and head; for an encoder its pooler) and attach a chain.

        Args:
            path: checkpoint directory (config, safetensors, generation config).
            chain: what runs the blocks; or, with ``initial_peers``, the swarm does.
            initial_peers: addresses (``PEERID@HOST:PORT``) of the swarm's DHT nodes.
            model_name: the model's name in the swarm (default: the directory's name).
            device: where the client's tensors live.
            dtype: their dtype; fp32 on CPU by default.
            min_precision: with ``initial_peers``, plan only through spans of this
                precision or better (SPEC.md §13.8): ``"float32"``, ``"bfloat16"`` (or
                ``"bf16"``), ``"float16"`` (``"fp16"``), ``"int8"`` or ``"nf4"``; by
                default any.
            step_timeout: with ``initial_peers``, seconds one span may take for one step
                before the client replaces it (default 60).
            max_retries: with ``initial_peers``, peer failures tolerated within one step
                (default 4).
            deadline_floor: with ``initial_peers``, the shortest step deadline in seconds
                (default 3). Within ``step_timeout``, a step's deadline is ten times the
                span's measured step time plus its round trip, and a span that does not
                answer health pings for ``max(0.75 s, 4 round trips)`` is replaced sooner.
            push: with ``initial_peers``, whether servers hand hidden states straight to
                the next server of the chain (SPEC.md §13.9; default True) rather than
                back through the client.

        Returns:
            The model, in eval mode. ``close()`` releases its chain (and swarm).

        Raises:
            ValueError: the checkpoint lacks non-block tensors, the architecture's blocks
                cannot be replaced, neither ``chain`` nor ``initial_peers`` was given, or
                ``min_precision`` names no precision (or comes with a ``chain``).
            ConnectionError: the swarm could not be joined.
        """
        model = _build(
            cls,
            Path(path),
            cls._loader_class,
            chain,
            initial_peers=initial_peers,
            model_name=model_name,
            device=device,
            dtype=dtype,
            remote={
                "min_precision": min_precision,
                "step_timeout": step_timeout,
                "max_retries": max_retries,
                "deadline_floor": deadline_floor,
                "push": push,
            },
        )
        assert isinstance(model, cls)
        return model

    def close(self) -> None:
        """End the chain's session and release it (and a swarm it owns)."""
        self.chain.close()

    def _install_chain(self, chain: Chain, blocks: nn.ModuleList, base: nn.Module) -> None:
        self.chain = chain
        self._chain_block = _ChainBlock(self)
        # Model loops read plain attributes of their blocks (transformers 5.0 looks up
        # ``decoder_layer.attention_type``, or ``decoder_layer.self_attn.attention_type``, to
        # pick a mask): keep those of the block we replace, and of its direct submodules as
        # plain namespaces, so that the block's weights can go.
        for name, value in _plain_attributes(blocks[0]).items():
            if name not in vars(self._chain_block):
                object.__setattr__(self._chain_block, name, value)
        for name, child in blocks[0].named_children():
            object.__setattr__(
                self._chain_block, name, types.SimpleNamespace(**_plain_attributes(child))
            )
        blocks[0] = self._chain_block
        self._inputs = (None, None)
        self._session_cache = None
        self._planned_length = None
        self._base_signature = inspect.signature(base.forward)
        base.register_forward_pre_hook(self._capture_inputs, with_kwargs=True)

    def _capture_inputs(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        bound = self._base_signature.bind_partial(*args, **kwargs).arguments
        extra = bound.get("kwargs", {})
        mask = bound.get("attention_mask", extra.get("attention_mask"))
        positions = bound.get("position_ids", extra.get("position_ids"))
        self._inputs = (mask, positions)

    def _run_chain(self, hidden: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        mask, positions = self._inputs
        batch, tokens = int(hidden.shape[0]), int(hidden.shape[1])
        past = cache.get_seq_length() if cache is not None else 0
        if mask is None:
            mask = torch.ones(batch, past + tokens, dtype=torch.long, device=hidden.device)
        elif mask.dim() != 2:
            raise ValueError("a distributed model needs a 2-D attention mask (or none)")
        if positions is None:
            positions = torch.arange(past, past + tokens, device=hidden.device)
        positions = positions.expand(batch, tokens)
        if cache is None or not self._is_causal:
            out = self.chain.forward(hidden, mask, positions)
        else:
            out = self._chain_step(hidden, mask, positions, cache, past)
        out = out.to(hidden.device, hidden.dtype)
        # Spans compute in inference mode; autograd cannot record inference tensors.
        return out.clone() if torch.is_grad_enabled() and out.is_inference() else out

    def _chain_step(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Cache,
        past: int,
    ) -> torch.Tensor:
        if past == 0:
            self.chain.reset(max_length=self._planned_length)
            self._session_cache = cache
        elif cache is not self._session_cache:
            raise ValueError("this cache belongs to a session that has ended")
        out = self.chain.step(hidden, mask, positions)
        # One scalar per token: a cache layer reports length 0 while its tensors are empty.
        marker = hidden.new_zeros(hidden.shape[0], 1, hidden.shape[1], 1)
        cache.update(marker, marker, 0)
        return out

    def _end_session(self) -> None:
        self._session_cache = None
        self._planned_length = None
        self.chain.reset()

    def _probe_block_output(self, model: nn.Module) -> None:
        """Find out whether the model expects its blocks to return a tuple (BLOOM, Falcon)."""
        ids = torch.zeros(2, 3, dtype=torch.long, device=next(model.parameters()).device)
        block = self._chain_block
        block.probing = True
        try:
            for returns_tuple in (False, True):
                block.returns_tuple = returns_tuple
                try:
                    with torch.no_grad():
                        out = model(
                            input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False
                        )
                except (AttributeError, IndexError, TypeError, RuntimeError):
                    continue
                if tuple(out[0].shape[:2]) == (2, 3):
                    return
            raise ValueError(f"cannot drive the blocks of {type(model).__name__}")
        finally:
            block.probing = False


class DistributedModelForCausalLM(_ChainClient, PreTrainedModel, GenerationMixin):  # type: ignore[no-untyped-call,misc]
    """A causal LM whose blocks run along a chain; ``generate()`` works as usual.

    Instances are made by ``from_pretrained`` only: their class is a subclass of both this
    class and the checkpoint's own ``*ForCausalLM`` class.
    """

    _is_causal = True
    _loader_class = AutoModelForCausalLM
    _classes: ClassVar[dict[type, type]] = {}

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``GenerationMixin.generate`` within one chain session.

        The session is opened for the prompt length plus ``max_new_tokens`` (or
        ``max_length``) and closed when generation ends. Beam search and assisted decoding
        are refused: they reorder or rewind the cache, which the peers would have to do too.

        Raises:
            ValueError: ``num_beams > 1`` or an assistant model was given.
            TooLong: the prompt is longer than the model's positions; refused here, before
                any peer computes anything.
        """
        config = kwargs.get("generation_config") or self.generation_config
        beams = kwargs.get("num_beams", config.num_beams) or 1
        if beams > 1 or kwargs.get("assistant_model") is not None:
            raise ValueError("beam search and assisted decoding are not supported")
        prompt = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
        limit = getattr(self.full_config, "max_position_embeddings", None)
        if isinstance(prompt, torch.Tensor) and limit and prompt.shape[-1] > int(limit):
            raise TooLong(
                f"the prompt has {prompt.shape[-1]} tokens; the model takes at most "
                f"{int(limit)} (max_position_embeddings)"
            )
        self._planned_length = self._plan_length(args, kwargs, config)
        try:
            return super().generate(*args, **kwargs)
        finally:
            self._end_session()

    def _plan_length(self, args: tuple[Any, ...], kwargs: dict[str, Any], config: Any) -> int:
        """An upper bound of the tokens one generate() call puts through the chain."""
        prompt = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
        length = int(prompt.shape[-1]) if isinstance(prompt, torch.Tensor) else 0
        new = kwargs.get("max_new_tokens", config.max_new_tokens)
        if new is None:
            new = kwargs.get("max_length", config.max_length) or _DEFAULT_NEW_TOKENS
        planned = length + int(new)
        limit = getattr(self.full_config, "max_position_embeddings", None)
        return min(planned, int(limit)) if limit else planned


class DistributedModel(_ChainClient, PreTrainedModel):  # type: ignore[no-untyped-call,misc]
    """An encoder (BERT-style base model) whose blocks run along a chain."""

    _is_causal = False
    _loader_class = AutoModel
    _classes: ClassVar[dict[type, type]] = {}


def _build(
    cls: type,
    path: Path,
    auto: Any,
    chain: Chain | None,
    *,
    initial_peers: Sequence[Any] | None,
    model_name: str | None,
    device: str | torch.device,
    dtype: torch.dtype | None,
    remote: dict[str, Any],
) -> Any:
    """Load a checkpoint's client parts as ``cls`` and attach the chain of its blocks.

    ``remote`` holds the ``RemoteChain`` options the caller set (None for the default)."""
    from petalproto.core._route import parse_precision

    remote = {name: value for name, value in remote.items() if value is not None}
    if remote and chain is not None:
        raise ValueError(f"{', '.join(remote)} apply to the swarm's spans: give initial_peers")
    if "min_precision" in remote:
        remote["min_precision"] = parse_precision(remote["min_precision"])
    model: Any
    model, blocks, config = load_client_model(path, auto, device=device, dtype=dtype)
    model.__class__ = _distributed_class(cls, type(model))
    model.full_config = config
    chain = _resolve_chain(chain, initial_peers, model_name, path, config, remote=remote)
    base = model.base_model if getattr(cls, "_is_causal", False) else model
    model._install_chain(chain, blocks.of(base), base)
    model._probe_block_output(model)
    return model


def _resolve_chain(
    chain: Chain | None,
    initial_peers: Sequence[Any] | None,
    model_name: str | None,
    path: Path,
    config: PretrainedConfig,
    *,
    remote: dict[str, Any],
) -> Chain:
    """The given chain, or a chain of remote spans found through the swarm."""
    if chain is not None:
        return chain
    if not initial_peers:
        raise ValueError("give a chain or the swarm's initial_peers")
    from petalproto.core import Address

    from ._remote import RemoteChain, Swarm

    peers = [p if isinstance(p, Address) else Address.parse(str(p)) for p in initial_peers]
    swarm = Swarm(peers)
    name = model_name or path.resolve().name
    return RemoteChain(swarm, name, int(config.num_hidden_layers), owns_swarm=True, **remote)


def _distributed_class(kind: Any, model_class: type) -> type:
    classes: dict[type, type] = kind._classes
    if model_class not in classes:
        name = f"Distributed{model_class.__name__}"
        # The architecture's module, because transformers inspects the source file of a
        # model's module to decide what the class supports (5.0's experts implementation).
        classes[model_class] = type(
            name, (kind, model_class), {"__module__": model_class.__module__}
        )
    return classes[model_class]
