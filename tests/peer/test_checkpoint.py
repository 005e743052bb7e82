"""Finding a span's tensors in sharded and single-file checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from reference_peer._checkpoint import find_block_keys, open_tensors, read_weight_map

pytestmark = pytest.mark.model


def test_prefixes_are_kept() -> None:
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.up.weight",
        "model.layers.10.mlp.up.weight",
        "model.layers.1.self_attn.q.weight",
        "model.vision.encoder.layers.0.q.weight",
        "lm_head.weight",
    ]
    keys = find_block_keys(names, "layers")
    assert keys.prefix == "model."
    assert keys.by_block == {
        0: ["model.layers.0.mlp.up.weight"],
        1: ["model.layers.1.self_attn.q.weight"],
        10: ["model.layers.10.mlp.up.weight"],
    }
    assert keys.block_name(3) == "model.layers.3."


def test_no_prefix_and_dotted_block_path() -> None:
    keys = find_block_keys(["encoder.layer.2.output.dense.weight", "pooler.w"], "encoder.layer")
    assert (keys.prefix, list(keys.by_block)) == ("", [2])


def test_missing_block_path() -> None:
    with pytest.raises(ValueError, match="layers"):
        find_block_keys(["a.b", "layersx.0.w"], "layers")


def test_sharded_checkpoint_maps_names_to_shards(tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint("llama")
    weight_map = read_weight_map(path)
    assert len(set(weight_map.values())) > 3
    keys = find_block_keys(list(weight_map), "layers")
    names = keys.by_block[4]
    with open_tensors(path, weight_map, names, lambda n: n.replace(".4.", ".0.")) as tensors:
        assert sorted(tensors) == sorted(n.replace(".4.", ".0.") for n in names)
        assert all(len(s.get_shape()) >= 1 for s in tensors.values())


def test_single_file_and_missing_checkpoint(tmp_path: Path) -> None:
    save_file({"h.0.w": torch.zeros(2), "wte": torch.ones(1)}, str(tmp_path / "model.safetensors"))
    assert read_weight_map(tmp_path) == {"h.0.w": "model.safetensors", "wte": "model.safetensors"}
    with pytest.raises(FileNotFoundError):
        read_weight_map(tmp_path / "nowhere")
