"""A server that says it is full is routed around, not blamed (SPEC.md §10.6, §13.5).

Server A has room for 20 tokens of attention cache, server B for plenty; the client prefers
A (it announces more throughput). A generation that needs more than 20 tokens hears
OUT_OF_CACHE from A, goes to B without putting A in backoff, and the next generation that
fits uses A again. With A alone, the error names A's answer. A prompt longer than the model
is refused before any peer works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from petalproto.core._route import NoChain, SpanInfo
from reference_peer import DistributedModelForCausalLM, TooLong
from reference_peer._remote import RemoteChain, Swarm

from .swarm import InProcessSwarm
from .tiny import LAYERS

pytestmark = [pytest.mark.model, pytest.mark.slow]

ROOM = 20  # tokens of cache on server A


@pytest.fixture
def servers() -> Iterator[InProcessSwarm]:
    swarm = InProcessSwarm()
    yield swarm
    swarm.close()


def _small(servers: InProcessSwarm, path: Path) -> None:
    servers.add(path, 0, LAYERS)
    span = servers.servers[-1].span
    span.cache_budget_bytes = ROOM * span.cache_bytes_per_token


def _client(path: Path, servers: InProcessSwarm) -> tuple[Any, Swarm, RemoteChain]:
    """A client that knows the servers, the first announcing the highest throughput (ten
    times the next one's: a step time 9 ms shorter, more than loopback round trips differ
    by, which the planner counts too)."""
    spans = [
        SpanInfo(address, "tiny", 0, LAYERS, throughput=1000.0 / 10**i)
        for i, address in enumerate(servers.addresses)
    ]

    async def discover(model: str) -> list[SpanInfo]:
        return spans

    swarm = Swarm(servers.addresses, discover=discover)
    chain = RemoteChain(swarm, "tiny", LAYERS)
    model = DistributedModelForCausalLM.from_pretrained(path, chain=chain)
    return model, swarm, chain


def test_a_full_server_is_passed_over_for_the_session_and_used_again_after(
    tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm
) -> None:
    path = tiny_checkpoint("llama")
    _small(servers, path)
    servers.add(path, 0, LAYERS)
    small, big = servers.addresses
    model, swarm, chain = _client(path, servers)
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    try:
        ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
        long = {"max_new_tokens": 24, "min_new_tokens": 24, "do_sample": False}
        assert torch.equal(model.generate(ids, **long), local.generate(ids, **long))
        assert [s.address for s in chain.route] == [big]
        assert small.peer_id not in swarm.avoided()  # full is not broken
        assert "OUT_OF_CACHE" in swarm.failures[small.peer_id][1]
        short = {"max_new_tokens": 4, "do_sample": False}
        assert torch.equal(model.generate(ids[:, :4], **short), local.generate(ids[:, :4], **short))
        assert [s.address for s in chain.route] == [small]
    finally:
        chain.close()
        swarm.close()


def test_with_only_full_servers_the_error_names_their_answer(
    tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm
) -> None:
    path = tiny_checkpoint("llama")
    _small(servers, path)
    model, swarm, chain = _client(path, servers)
    try:
        ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
        with pytest.raises(NoChain) as caught:
            model.generate(ids, max_new_tokens=24, do_sample=False)
        text = str(caught.value)
        assert "no peer serves blocks 0:6 of 'tiny'" in text
        assert f"peer {servers.addresses[0].peer_id.short()}: OUT_OF_CACHE" in text
        assert servers.addresses[0].peer_id not in swarm.avoided()
    finally:
        chain.close()
        swarm.close()


def test_a_prompt_longer_than_the_model_is_refused_before_any_peer_works(
    tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm
) -> None:
    path = tiny_checkpoint("llama")
    servers.add(path, 0, LAYERS)
    model, swarm, chain = _client(path, servers)
    try:
        too_long = torch.randint(3, 98, (1, 513))  # max_position_embeddings is 512
        with pytest.raises(TooLong, match="513 tokens; the model takes at most 512"):
            model.generate(too_long, max_new_tokens=2)
        assert chain.route == []  # no session was ever opened
    finally:
        chain.close()
        swarm.close()
