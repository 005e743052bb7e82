"""Generation through peers over real TCP equals local generation, for every family."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import trio
from transformers import AutoModel, AutoModelForCausalLM

from petalproto.core import ErrorCode
from petalproto.net import RpcError, call, open_connection
from reference_peer import DistributedModel, DistributedModelForCausalLM
from reference_peer._remote import NoChain, RemoteChain, Swarm
from reference_peer._tensors import tensor_to_wire

from .swarm import InProcessSwarm
from .tiny import CONFIGS, LAYERS

pytestmark = [pytest.mark.model, pytest.mark.slow]

SPANS = [(0, 2), (2, 4), (4, LAYERS)]


@pytest.fixture
def servers() -> Iterator[InProcessSwarm]:
    swarm = InProcessSwarm()
    yield swarm
    swarm.close()


def _client(
    path: Path, servers: InProcessSwarm, *, encoder: bool = False
) -> tuple[object, Swarm, RemoteChain]:
    swarm = Swarm(servers.addresses, use_dht=False)
    chain = RemoteChain(swarm, "tiny", LAYERS)
    cls = DistributedModel if encoder else DistributedModelForCausalLM
    return cls.from_pretrained(path, chain=chain), swarm, chain


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_greedy_tokens_and_logits_match_local(
    family: str, tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm
) -> None:
    path = tiny_checkpoint(family)
    for start, end in SPANS:
        servers.add(path, start, end)
    model, swarm, chain = _client(path, servers)
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    try:
        ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
        ours = model.generate(ids, max_new_tokens=12, do_sample=False)  # type: ignore[attr-defined]
        theirs = local.generate(ids, max_new_tokens=12, do_sample=False)
        assert torch.equal(ours, theirs)
        assert [(s.start, s.end) for s in chain.route] == SPANS
        with torch.no_grad():
            a = model(ours).logits  # type: ignore[operator]
            b = local(ours).logits
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    finally:
        chain.close()
        swarm.close()


@pytest.mark.parametrize("inline_rows", [0, 1 << 20])
def test_steps_on_the_loop_thread_or_their_own_give_the_same_tokens(
    inline_rows: int, tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm
) -> None:
    """Every request in a thread of its own (0), or every one on the loop's thread."""
    path = tiny_checkpoint("llama")
    for start, end in SPANS:
        servers.add(path, start, end, inline_rows=inline_rows)
    model, swarm, chain = _client(path, servers)
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    threads = threading.active_count()
    try:
        ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
        ours = model.generate(ids, max_new_tokens=6, do_sample=False)  # type: ignore[attr-defined]
        assert torch.equal(ours, local.generate(ids, max_new_tokens=6, do_sample=False))
        assert threading.active_count() <= threads  # no compute thread outlives its request
    finally:
        chain.close()
        swarm.close()


def test_left_padded_batch_and_a_prompt_over_one_frame(
    tiny_checkpoint: Callable[[str], Path],
    servers: InProcessSwarm,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tiny_checkpoint("llama")
    for start, end in SPANS:
        servers.add(path, start, end)
    model, swarm, chain = _client(path, servers)
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    try:
        ids = torch.tensor([[0, 0, 0, 7, 8, 9], [4, 5, 6, 7, 8, 9]])
        mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
        kwargs = {
            "attention_mask": mask,
            "max_new_tokens": 8,
            "do_sample": False,
            "pad_token_id": 0,
        }
        assert torch.equal(model.generate(ids, **kwargs), local.generate(ids, **kwargs))  # type: ignore[attr-defined]
        # 505 tokens of 32 floats: more than one DATA frame (65488 bytes) per message; with
        # a small step budget the client also sends the prompt in several steps.
        monkeypatch.setattr("reference_peer._remote.STEP_BYTES", 24_000)
        long_ids = torch.randint(3, 100, (1, 505))
        kwargs = {"max_new_tokens": 3, "do_sample": False}
        assert torch.equal(
            model.generate(long_ids, **kwargs),  # type: ignore[attr-defined]
            local.generate(long_ids, **kwargs),
        )
    finally:
        chain.close()
        swarm.close()


def test_generation_survives_a_peer_failure(
    tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm
) -> None:
    path = tiny_checkpoint("llama")
    for start, end in [*SPANS, (2, 4)]:  # two servers for the middle span
        servers.add(path, start, end)
    model, swarm, chain = _client(path, servers)
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    steps = 0
    real_step = chain.step

    def step_then_kill(*args: torch.Tensor) -> torch.Tensor:
        nonlocal steps
        steps += 1
        if steps == 4:  # mid-generation: kill whichever server holds the middle span
            middle = next(s for s in chain.route if s.start == 2)
            servers.stop(servers.addresses.index(middle.address))
        return real_step(*args)

    chain.step = step_then_kill  # type: ignore[method-assign,assignment]
    try:
        ids = torch.tensor([[1, 5, 9, 13, 17]])
        ours = model.generate(ids, max_new_tokens=10, do_sample=False)  # type: ignore[attr-defined]
        assert torch.equal(ours, local.generate(ids, max_new_tokens=10, do_sample=False))
        assert chain.recoveries == 1
    finally:
        chain.close()
        swarm.close()


def test_missing_blocks_are_named(
    tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm
) -> None:
    path = tiny_checkpoint("llama")
    servers.add(path, 0, 2)
    model, swarm, chain = _client(path, servers)
    try:
        with pytest.raises(NoChain, match=r"2:6"):
            model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2)  # type: ignore[attr-defined]
    finally:
        chain.close()
        swarm.close()


def test_encoder_hidden_states_match(
    tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm
) -> None:
    path = tiny_checkpoint("bert")
    for start, end in SPANS:
        servers.add(path, start, end)
    model, swarm, chain = _client(path, servers, encoder=True)
    local: Any = AutoModel.from_pretrained(path)
    local.eval()
    try:
        ids = torch.tensor([[1, 7, 8, 9, 2], [1, 7, 8, 2, 0]])
        mask = (ids != 0).long()
        with torch.no_grad():
            ours = model(input_ids=ids, attention_mask=mask).last_hidden_state  # type: ignore[operator]
            theirs = local(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    finally:
        chain.close()
        swarm.close()


async def _call(address: object, method: str, body: object) -> object:
    from petalproto.core import Address, Identity

    assert isinstance(address, Address)
    import os

    async with open_connection(address, Identity.from_seed(os.urandom(32))) as peer:
        return await call(peer, method, body)


def test_bad_requests_get_their_codes_and_the_peer_keeps_serving(
    tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm
) -> None:
    path = tiny_checkpoint("llama")
    address = servers.add(path, 0, 2, max_sessions=1)
    hidden = tensor_to_wire(torch.zeros(1, 3, 32))
    ids = tensor_to_wire(torch.ones(1, 3, dtype=torch.long))
    good = {
        "model": "tiny",
        "start": 0,
        "end": 2,
        "hidden": hidden,
        "attention_mask": ids,
        "position_ids": ids,
    }
    cases = [
        ({**good, "model": "other"}, ErrorCode.UNKNOWN_MODEL),
        ({**good, "end": 3}, ErrorCode.WRONG_SPAN),
        (
            {**good, "hidden": {"dtype": "complex64", "shape": [1], "data": b""}},
            ErrorCode.BAD_TENSOR,
        ),
        ({**good, "hidden": tensor_to_wire(torch.zeros(1, 3, 31))}, ErrorCode.BAD_TENSOR),
        ({**good, "start": "zero"}, ErrorCode.BAD_REQUEST),
    ]
    for body, code in cases:
        with pytest.raises(RpcError) as info:
            trio.run(_call, address, "inference.forward", body)
        assert info.value.code is code, body
    out = trio.run(_call, address, "inference.forward", good)
    assert isinstance(out, dict) and out["hidden"]["shape"] == [1, 3, 32]
    info_reply = trio.run(_call, address, "peer.info", {})
    assert isinstance(info_reply, dict) and info_reply["start"] == 0 and info_reply["end"] == 2


def test_session_limits(tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm) -> None:
    path = tiny_checkpoint("llama")
    address = servers.add(path, 0, LAYERS, max_sessions=1)

    async def scenario() -> None:
        import os

        from petalproto.core import Identity
        from petalproto.net import StreamReset

        async with open_connection(address, Identity.from_seed(os.urandom(32))) as peer:
            opening = {"model": "tiny", "start": 0, "end": LAYERS, "batch": 1, "max_length": 4}
            first = await peer.open_stream("inference.session")
            await first.send(opening)
            step = {
                "hidden": tensor_to_wire(torch.zeros(1, 3, 32)),
                "attention_mask": tensor_to_wire(torch.ones(1, 3, dtype=torch.long)),
                "position_ids": tensor_to_wire(torch.arange(3).unsqueeze(0)),
            }
            await first.send(step)
            assert (await first.receive())["hidden"]["shape"] == [1, 3, 32]
            second = await peer.open_stream("inference.session")
            await second.send(opening)
            with pytest.raises(StreamReset) as info:
                await second.receive()
            assert info.value.code is ErrorCode.TOO_MANY_SESSIONS
            await first.send(
                {**step, "attention_mask": tensor_to_wire(torch.ones(1, 6, dtype=torch.long))}
            )
            with pytest.raises(StreamReset) as info:
                await first.receive()
            assert info.value.code is ErrorCode.TOO_LONG

    trio.run(scenario)
