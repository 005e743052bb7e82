"""Model-agnostic facts about a transformers architecture, found without per-model code.

Everything here works from the model's own config and classes (notes: models.md §4):

- ``cut_config`` makes the config of a model holding only blocks ``[start, end)``: the layer
  count shrinks and every per-layer list (``layer_types``, ...) is sliced.
- ``span_class`` makes a subclass of the base-model class whose blocks are built as the
  layers they are in the whole model: a block's structure may depend on its layer number
  (DeepSeek's dense first layers, Qwen-MoE's ``mlp_only_layers``, GPT-2's inverse-layer
  attention scale, ModernBERT's first layer without an attention norm), so block ``i`` of a
  span is constructed as layer ``start + i`` from the whole model's config, then only the
  span's blocks are kept.
- ``find_blocks`` builds the base model on the ``meta`` device (no memory, no init) and finds
  its block list: the shortest-path ``nn.ModuleList`` whose length is the layer count and whose
  elements are among the classes the model refuses to split (``_no_split_modules``).
- ``forward_params`` reads the names a forward accepts; transformers renamed
  ``past_key_values`` to ``cache`` in 5.24 and dropped ``cache_position`` after 5.3.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils import logging as _hf_logging

hf_logging: Any = _hf_logging

__all__ = [
    "Blocks",
    "cut_config",
    "find_blocks",
    "forward_params",
    "load_config",
    "quiet_loading",
    "span_class",
]

#: Config fields that are lists but not one entry per layer.
_NOT_PER_LAYER = frozenset({"architectures"})

#: Vocabulary size given to a span's config: a span never embeds tokens, so its (unused)
#: embedding table should cost nothing to build.
_SPAN_VOCAB = 8


def load_config(path: str) -> PretrainedConfig:
    """Read a checkpoint's config and return its text (language-model) part.

    Args:
        path: the checkpoint directory.

    Returns:
        The config; for composite configs, ``get_text_config()`` of it.
    """
    config: PretrainedConfig = AutoConfig.from_pretrained(path)
    text: PretrainedConfig = config.get_text_config()
    return text


def num_layers(config: PretrainedConfig) -> int:
    """The number of blocks the config describes."""
    return int(config.num_hidden_layers)


def cut_config(config: PretrainedConfig, start: int, end: int, *, span: bool) -> PretrainedConfig:
    """The config of a model made of blocks ``[start, end)`` of ``config``'s model.

    Args:
        config: the whole model's config.
        start: first block (inclusive).
        end: last block (exclusive); ``start <= end``.
        span: shrink the vocabulary too (for a span, which never embeds tokens).

    Returns:
        A modified deep copy.
    """
    sub = copy.deepcopy(config)
    for name, value in _per_layer(config).items():
        setattr(sub, name, type(value)(value[start:end]))
    sub.num_hidden_layers = end - start
    if span and getattr(sub, "vocab_size", None) is not None:
        sub.vocab_size = _SPAN_VOCAB
        if getattr(sub, "pad_token_id", None) is not None and sub.pad_token_id >= _SPAN_VOCAB:
            sub.pad_token_id = None
    return sub


def _per_layer(config: PretrainedConfig) -> dict[str, list[Any] | tuple[Any, ...]]:
    """The config's entries that hold one value per layer (``layer_types``, ...)."""
    total = num_layers(config)
    return {
        name: value
        for name, value in vars(config).items()
        if name not in _NOT_PER_LAYER and isinstance(value, list | tuple) and len(value) == total
    }


@dataclass(frozen=True, slots=True)
class Blocks:
    """Where a base model keeps its blocks.

    Attributes:
        model_class: the concrete base-model class (``LlamaModel``, ``BertModel``).
        path: dotted path of the block list inside it (``"layers"``, ``"encoder.layer"``).
    """

    model_class: type[nn.Module]
    path: str

    def of(self, model: nn.Module) -> nn.ModuleList:
        """The block list of a model of this class."""
        blocks = model.get_submodule(self.path)
        assert isinstance(blocks, nn.ModuleList)
        return blocks


def find_blocks(config: PretrainedConfig) -> Blocks:
    """Find the base-model class and its block list for a config with at least one block.

    Args:
        config: a config with ``num_hidden_layers >= 1``.

    Returns:
        The base-model class and the block list's path.

    Raises:
        ValueError: no module list of the right length exists.
    """
    auto: Any = AutoModel
    with torch.device("meta"):
        skeleton = auto.from_config(config)
    wanted = num_layers(config)
    no_split = set(getattr(skeleton, "_no_split_modules", None) or ())
    candidates = [
        (name.count("."), name, module)
        for name, module in skeleton.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == wanted and name
    ]
    candidates.sort(key=lambda item: item[:2])
    for _, name, module in candidates:
        if not no_split or type(module[0]).__name__ in no_split:
            return Blocks(model_class=type(skeleton), path=name)
    raise ValueError(f"{type(skeleton).__name__} has no block list of length {wanted}")


def span_class(blocks: Blocks, config: PretrainedConfig, start: int, end: int) -> type[nn.Module]:
    """A subclass of ``blocks.model_class`` whose blocks are layers ``[start, end)`` of the
    model that ``config`` describes, each built as the layer it is there.

    The subclass takes the span's config (``cut_config(config, start, end, ...)``). While
    the base class builds its modules, that config shows the whole model's layer count and
    per-layer entries, so every layer is built with its own number (on the ``meta`` device
    under ``from_pretrained``, so the layers outside the span cost nothing); then the block
    list keeps only the span's layers, renumbered from 0 as the span's checkpoint names are,
    and the config shows the span again, as the model's forward expects. Blocks keep their
    layer numbers (``layer_idx``): they index the attention cache with them, so a span's
    cache must map layer ``start + i`` to its ``i``-th entry.

    Args:
        blocks: the base-model class and its block list, found from a config.
        config: the whole model's config.
        start: first block (inclusive).
        end: last block (exclusive).

    Returns:
        The subclass, named like its base class.
    """
    base: Any = blocks.model_class
    whole: dict[str, Any] = {name: copy.copy(value) for name, value in _per_layer(config).items()}
    whole["num_hidden_layers"] = num_layers(config)
    owner_path, _, leaf = blocks.path.rpartition(".")

    def __init__(self: Any, span_config: PretrainedConfig, *args: Any, **kwargs: Any) -> None:
        shown = {name: getattr(span_config, name) for name in whole}
        for name, value in whole.items():
            setattr(span_config, name, copy.copy(value))
        try:
            base.__init__(self, span_config, *args, **kwargs)
        finally:
            for name, value in shown.items():
                setattr(span_config, name, value)
        owner = self.get_submodule(owner_path) if owner_path else self
        setattr(owner, leaf, nn.ModuleList(list(getattr(owner, leaf))[start:end]))

    namespace = {
        "__init__": __init__,
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
    }
    made: type[nn.Module] = type(base.__name__, (base,), namespace)
    return made


def forward_params(module: nn.Module | type[nn.Module]) -> frozenset[str]:
    """The parameter names of a module's ``forward``.

    Args:
        module: a module or module class.

    Returns:
        The names, ``self`` excluded.
    """
    cls: Any = module if isinstance(module, type) else type(module)
    params = inspect.signature(cls.forward).parameters
    return frozenset(name for name in params if name != "self")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' load report and progress bars while we load a partial model.

    A span or a client head is partial by design, so the report's list of "MISSING" weights
    (everything outside the span) is noise. Errors still propagate as exceptions.

    Yields:
        Nothing; the previous settings come back on exit.
    """
    logger = logging.getLogger("transformers.modeling_utils")
    report = _DropLoadReport()
    bars = hf_logging.is_progress_bar_enabled()
    # A filter, not a level: transformers runs extra checks when this logger's level is high.
    logger.addFilter(report)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.removeFilter(report)
        if bars:
            hf_logging.enable_progress_bar()


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)
