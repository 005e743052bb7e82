"""Spans that start mid-model, served by real `petal serve` processes, build their blocks as
the layers they are in the whole model.

Each family of ``LAYER_DEPENDENT`` builds some layers unlike others by layer number (dense
and mixture-of-experts blocks, a per-layer attention scale, sliding and global attention, a
first layer without a norm). A `petal serve` process serves blocks 3:6 of each, a server in
this process blocks 0:3 (over real TCP and Noise as well); a client of both must give the
local model's greedy tokens and logits (hidden states, for the encoder). A span whose
checkpoint holds a tensor its blocks have no place for, or lacks one, is refused by name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM

from reference_peer import DistributedModel, DistributedModelForCausalLM, SpanModel
from reference_peer._local_swarm import LocalSwarm
from reference_peer._remote import RemoteChain, Swarm

from .swarm import InProcessSwarm
from .tiny import ENCODERS, LAYER_DEPENDENT, LAYERS

pytestmark = [pytest.mark.model, pytest.mark.slow]

SPANS = [(0, 3), (3, LAYERS)]


class Peers:
    """For every family: blocks 3:6 in a `petal serve` process, 0:3 in this process."""

    def __init__(self, checkpoint: Callable[[str], Path]) -> None:
        self.checkpoint = checkpoint
        self.processes: dict[str, LocalSwarm] = {}
        self.here = InProcessSwarm()
        self.addresses: dict[str, list[Any]] = {}

    def start(self) -> None:
        families = sorted(LAYER_DEPENDENT)
        dht: Any = None
        for family in families:
            swarm = LocalSwarm(self.checkpoint(family), spans=[SPANS[1]], join=dht).launch()
            dht = swarm.dht
            self.processes[family] = swarm
        for family in families:
            near = self.here.add(self.checkpoint(family), *SPANS[0], model=family)
            far = self.processes[family].wait().servers[0][0]
            self.addresses[family] = [near, far]

    def client(self, family: str, cls: Any) -> tuple[Any, Swarm]:
        swarm = Swarm(self.addresses[family], use_dht=False)
        chain = RemoteChain(swarm, family, LAYERS)
        return cls.from_pretrained(self.checkpoint(family), chain=chain), swarm

    def stop(self) -> None:
        # The process that runs the DHT node (the first) stops last.
        for swarm in reversed(list(self.processes.values())):
            swarm.stop()
        self.here.close()


@pytest.fixture(scope="module")
def peers(tiny_checkpoint: Callable[[str], Path]) -> Iterator[Peers]:
    started = Peers(tiny_checkpoint)
    try:
        started.start()
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("family", sorted(LAYER_DEPENDENT - set(ENCODERS)))
def test_decoder_spans_from_mid_model_give_the_local_tokens(family: str, peers: Peers) -> None:
    model, swarm = peers.client(family, DistributedModelForCausalLM)
    local: Any = AutoModelForCausalLM.from_pretrained(peers.checkpoint(family))
    local.eval()
    try:
        # 24 prompt tokens: longer than Gemma 3's sliding window of 16.
        ids = torch.randint(3, 98, (1, 24), generator=torch.Generator().manual_seed(3))
        expected = local.generate(ids, max_new_tokens=10, do_sample=False)
        assert torch.equal(model.generate(ids, max_new_tokens=10, do_sample=False), expected)
        assert [(s.start, s.end) for s in model.chain.route] == SPANS
        with torch.no_grad():
            torch.testing.assert_close(
                model(expected).logits, local(expected).logits, rtol=1e-4, atol=1e-4
            )
    finally:
        model.close()
        swarm.close()


@pytest.mark.parametrize("family", sorted(LAYER_DEPENDENT & set(ENCODERS)))
def test_encoder_spans_from_mid_model_give_the_local_hidden_states(
    family: str, peers: Peers
) -> None:
    model, swarm = peers.client(family, DistributedModel)
    local: Any = AutoModel.from_pretrained(peers.checkpoint(family))
    local.eval()
    try:
        ids = torch.randint(3, 98, (2, 13), generator=torch.Generator().manual_seed(4))
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0
        with torch.no_grad():
            ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
            theirs = local(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    finally:
        model.close()
        swarm.close()


def test_the_scaled_gpt2_weights_are_large_enough_to_show_a_wrong_scale(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    """The negative control: blocks 3:6 scaled as layers 0:3 (the old bug) change the tokens
    that the model predicts."""
    path = tiny_checkpoint("gpt2-scaled")
    # Eager attention: transformers 5.0's SDPA path of GPT-2 leaves the inverse-layer scale
    # out (local models and peers alike), later releases apply it in every path.
    local: Any = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    local.eval()
    ids = torch.randint(3, 98, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = local(ids, use_cache=False).logits.argmax(-1)
        for index, block in enumerate(local.transformer.h):
            # transformers 5.0 divides by layer_idx + 1 as it runs, later releases at build.
            block.attn.layer_idx = index % 3
            block.attn.scaling = block.attn.head_dim**-0.5 / (index % 3 + 1)
        wrong = local(ids, use_cache=False).logits.argmax(-1)
    assert not torch.equal(wrong, expected)


def _edit_block_tensors(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Apply ``edit`` to the tensors of the shard that holds block 4, and fix the index."""
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = next(f for name, f in index["weight_map"].items() if ".layers.4." in name)
    tensors = load_file(path / shard)
    edit(tensors)
    save_file(tensors, path / shard, metadata={"format": "pt"})
    kept = {name: f for name, f in index["weight_map"].items() if f != shard}
    index["weight_map"] = kept | dict.fromkeys(tensors, shard)
    index_file.write_text(json.dumps(index))


@pytest.fixture
def faulty(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> Callable[[str], Path]:
    """``faulty(kind)``: a copy of the tiny Llama with a stray or a missing block-4 tensor."""

    def make(kind: str) -> Path:
        path = tmp_path / kind
        shutil.copytree(tiny_checkpoint("llama"), path)
        if kind == "stray":
            extra = torch.zeros(4, 4)
            _edit_block_tensors(path, lambda t: t.__setitem__(f"model.{STRAY}", extra))
        else:
            _edit_block_tensors(path, lambda t: t.__delitem__(f"model.{GONE}"))
        return path

    return make


STRAY = "layers.4.mlp.extra_proj.weight"
GONE = "layers.4.post_attention_layernorm.weight"


@pytest.mark.parametrize(
    ("kind", "named", "why"), [("stray", STRAY, "no place for"), ("missing", GONE, "lacks")]
)
def test_a_span_with_a_stray_or_missing_tensor_is_refused_by_name(
    kind: str, named: str, why: str, faulty: Callable[[str], Path]
) -> None:
    path = faulty(kind)
    with pytest.raises(ValueError, match=why) as refused:
        SpanModel(path, 3, LAYERS, device="cpu")
    assert named in str(refused.value)
    SpanModel(path, 0, 3, device="cpu")  # blocks without the fault load


def test_petal_serve_refuses_a_stray_tensor_in_one_line(faulty: Callable[[str], Path]) -> None:
    path = faulty("stray")
    args = ["serve", "--model", str(path), "--blocks", "3:6", "--listen", "127.0.0.1:0"]
    done = subprocess.run(
        [sys.executable, "-m", "petalproto.cli", *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert STRAY in lines[-1] and "no place for" in lines[-1]
