"""A peer that hangs without closing (SIGSTOP) mid-generation costs one unanswered health
ping (``HUNG_AFTER``), well within the step deadline set from ``from_pretrained``: the client
replaces it with the other copy of its span, replays its inputs, and the tokens do not
change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from reference_peer import DistributedModelForCausalLM
from reference_peer._local_swarm import LocalSwarm

from .tiny import LAYERS, local_greedy

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_a_hung_peer_is_replaced_when_it_stops_answering_pings(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    path = tiny_checkpoint("llama")
    ids, kwargs, expected = local_greedy(path, 12)
    with LocalSwarm(path, spans=[(0, LAYERS), (0, LAYERS)]) as swarm:
        model: Any = DistributedModelForCausalLM.from_pretrained(
            path, initial_peers=[swarm.dht], step_timeout=30.0, max_retries=2
        )
        chain = model.chain
        paused: list[Any] = []
        real_step = chain.step
        steps = 0

        def step_then_hang(*args: torch.Tensor) -> torch.Tensor:
            nonlocal steps
            steps += 1
            if steps == 4:
                paused.append(chain.route[0].address)
                swarm.pause(paused[0])
            out: torch.Tensor = real_step(*args)
            return out

        chain.step = step_then_hang
        try:
            assert torch.equal(model.generate(ids, **kwargs), expected)
            assert chain.recoveries == 1
            assert [s.address for s in chain.route] != paused
            assert paused[0].peer_id in chain.swarm.avoided()
            assert "PeerHung" in chain.swarm.failures[paused[0].peer_id][1]
        finally:
            model.close()
            if paused:
                swarm.unpause(paused[0])
