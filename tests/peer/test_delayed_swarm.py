"""``LocalSwarm(delay_ms=...)``: a DHT node and a `petal serve` process behind delay proxies.

Both announce their proxy's port rather than the one they listen on; a client that finds
the peer through the DHT generates the local model's tokens through the proxies, each step
paying at least the emulated round trip; a stall holds the step until resumed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from reference_peer import DistributedModelForCausalLM
from reference_peer._local_swarm import LocalSwarm

from .tiny import LAYERS

pytestmark = [pytest.mark.model, pytest.mark.slow]

DELAY_MS = 20.0


def test_a_delayed_swarm_announces_its_proxies_and_serves_through_them(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    path = tiny_checkpoint("llama")
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    ids = torch.randint(3, 98, (1, 8), generator=torch.Generator().manual_seed(5))
    new_tokens = 4
    expected = local.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    with LocalSwarm(path, spans=[(0, LAYERS)], delay_ms=DELAY_MS) as swarm:
        assert swarm.dht is not None and swarm.proxies is not None
        (peer, _), *_ = swarm.servers
        # Both announced ports are proxies' (``proxy`` knows no other), in front of another.
        for address in (swarm.dht, peer):
            assert swarm.proxies.proxy(address.port).target_port != address.port
            assert swarm.proxies.proxy(address.port).delay_ms == DELAY_MS
        model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=[swarm.dht])
        try:
            started = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
            elapsed = time.perf_counter() - started
            assert torch.equal(out, expected)
            # The chain found the peer at its proxy, through the DHT's proxy.
            chain: Any = model.chain
            assert [s.address for s in chain.route] == [peer]
            # Every token is at least one round trip to the peer.
            assert elapsed >= new_tokens * 2 * DELAY_MS / 1000
            swarm.stall(peer)
            resumed_at: list[float] = []

            def resume_soon() -> None:
                time.sleep(0.3)
                resumed_at.append(time.perf_counter())
                swarm.resume(peer)

            threading.Thread(target=resume_soon, daemon=True).start()
            again = model.generate(ids, max_new_tokens=1, do_sample=False)
            assert resumed_at and time.perf_counter() >= resumed_at[0]
            assert torch.equal(again, expected[:, : ids.shape[1] + 1])
        finally:
            model.close()
