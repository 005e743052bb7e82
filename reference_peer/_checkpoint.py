"""Reading parts of a sharded safetensors checkpoint without loading the rest.

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or
``model.safetensors.index.json`` plus the shards it names. Block ``N`` of a model owns every
tensor whose name contains ``<blocks>.N.``, where ``<blocks>`` is the block list's path inside
the base model (``layers``, ``h``, ``encoder.layer``) and whatever prefix the checkpoint put in
front of it (``model.``, ``transformer.``, ``bert.`` or nothing) is kept as it is, because
transformers' loader strips or adds it for us.

Tensors are handed out as lazy safetensors slices: transformers materializes each one
straight into its parameter, so a span never holds two copies of its weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

__all__ = ["BlockKeys", "find_block_keys", "open_tensors", "read_weight_map"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_weight_map(path: Path) -> dict[str, str]:
    """Map every tensor name of a checkpoint to the file that holds it.

    Args:
        path: the checkpoint directory.

    Returns:
        ``{tensor name: file name relative to path}``.

    Raises:
        FileNotFoundError: the directory has neither an index nor ``model.safetensors``.
    """
    index = path / INDEX_FILE
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return dict(weight_map)
    single = path / SINGLE_FILE
    if not single.is_file():
        raise FileNotFoundError(f"{path} holds neither {INDEX_FILE} nor {SINGLE_FILE}")
    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), SINGLE_FILE)


@dataclass(frozen=True, slots=True)
class BlockKeys:
    """Where the blocks of a checkpoint live.

    Attributes:
        prefix: what the checkpoint puts before the block path (``"model."``, ``""``).
        blocks_path: the block list's path in the base model (``"layers"``).
        by_block: block index -> names of that block's tensors.
    """

    prefix: str
    blocks_path: str
    by_block: dict[int, list[str]]

    def block_name(self, index: int) -> str:
        """The checkpoint name prefix of block ``index``, dot included."""
        return f"{self.prefix}{self.blocks_path}.{index}."


def find_block_keys(names: list[str], blocks_path: str) -> BlockKeys:
    """Group checkpoint tensor names by block.

    Several prefixes can match (a multimodal checkpoint may hold a vision tower with its own
    ``layers``); the shortest one is the language model's.

    Args:
        names: every tensor name in the checkpoint.
        blocks_path: the block list's path in the base model.

    Returns:
        The prefix and the tensors of each block.

    Raises:
        ValueError: no tensor name contains the block path.
    """
    pattern = re.compile(rf"^(?P<prefix>(?:.+\.)?){re.escape(blocks_path)}\.(?P<index>\d+)\.")
    found: dict[str, dict[int, list[str]]] = {}
    for name in names:
        match = pattern.match(name)
        if match is not None:
            by_block = found.setdefault(match["prefix"], {})
            by_block.setdefault(int(match["index"]), []).append(name)
    if not found:
        raise ValueError(f"no tensor of the checkpoint lies under {blocks_path!r}")
    prefix = min(found, key=len)
    return BlockKeys(prefix=prefix, blocks_path=blocks_path, by_block=found[prefix])


@contextmanager
def open_tensors(
    path: Path,
    weight_map: dict[str, str],
    names: list[str],
    rename: Callable[[str], str] = str,
) -> Iterator[dict[str, Any]]:
    """Open some tensors of a checkpoint lazily, touching only the shards that hold them.

    Args:
        path: the checkpoint directory.
        weight_map: the checkpoint's tensor name -> file map.
        names: the tensors to open.
        rename: maps a checkpoint name to the name the caller wants.

    Yields:
        ``{new name: safetensors slice}``; the slices are valid inside the ``with`` block.

    Raises:
        KeyError: a name is not in the weight map.
    """
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(weight_map[name], []).append(name)
    with ExitStack() as stack:
        slices: dict[str, Any] = {}
        for file, file_names in sorted(by_file.items()):
            handle = stack.enter_context(safe_open(str(path / file), framework="pt"))
            for name in file_names:
                slices[rename(name)] = handle.get_slice(name)
        yield slices
