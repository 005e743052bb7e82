"""Push (SPEC.md §13.9): servers hand each step's output to the next server.

Real ``petal serve`` processes on a tiny checkpoint: with push the tokens are those of local
transformers and every hop after the first is pushed; when servers cannot dial each other
(the client names addresses they cannot reach, as behind a NAT) every answer says
``pushed: false``, the client relays, and the tokens do not change. The parsers of the push
fields get hypothesis tests and the fuzz harness ``fuzz/push_messages.py`` its corpus.
"""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from petalproto.core import Address, ErrorCode, Identity, encode
from petalproto.net import RpcError
from reference_peer import DistributedModelForCausalLM
from reference_peer._local_swarm import LocalSwarm
from reference_peer._push import (
    MAX_PUSH_HOPS,
    PUSH_ID_BYTES,
    PushTarget,
    parse_push,
    parse_push_id,
)
from reference_peer._remote import _Hop

from .tiny import LAYERS, local_greedy

_FUZZ = pathlib.Path(__file__).parents[2] / "fuzz" / "push_messages.py"
_PEERS = [Identity.from_seed(bytes([i]) * 32).peer_id for i in range(4)]


def _harness() -> Callable[[bytes], None]:
    spec = importlib.util.spec_from_file_location("fuzz_push_messages", _FUZZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(Callable[[bytes], None], module.TestOneInput)


TEST_ONE_INPUT = _harness()


# Parsing -------------------------------------------------------------------------------------

addresses = st.builds(
    Address,
    st.sampled_from(_PEERS),
    st.sampled_from(["127.0.0.1", "10.1.2.3", "::1", "example.org"]),
    st.integers(1, 65535),
)
targets = st.builds(PushTarget, addresses, st.binary(min_size=16, max_size=16))


@given(st.lists(targets, max_size=MAX_PUSH_HOPS))
def test_push_round_trips(chain: list[PushTarget]) -> None:
    assert parse_push({"push": [t.to_wire() for t in chain]}) == chain


def test_no_push_is_an_empty_chain() -> None:
    assert parse_push({}) == [] == parse_push({"push": None}) == parse_push({"push": []})


def _refused(step: dict[str, Any]) -> ErrorCode:
    with pytest.raises(RpcError) as caught:
        parse_push(step)
    return caught.value.code


@given(st.binary().filter(lambda b: len(b) != PUSH_ID_BYTES) | st.integers() | st.text())
def test_a_push_id_is_16_bytes(value: Any) -> None:
    with pytest.raises(RpcError) as caught:
        parse_push_id(value)
    assert caught.value.code is ErrorCode.BAD_REQUEST
    assert parse_push_id(bytes(16)) == bytes(16)


@pytest.mark.parametrize(
    "push",
    [
        "x",
        {"addr": "a"},
        [1],
        [{"session": bytes(16)}],
        [{"addr": 5, "session": bytes(16)}],
        [{"addr": "no-peer-id:1", "session": bytes(16)}],
        [{"addr": f"{_PEERS[0]}@h:1", "session": b"short"}],
        [{"addr": f"{_PEERS[0]}@h:1", "session": bytes(16)}] * (MAX_PUSH_HOPS + 1),
    ],
)
def test_a_bad_push_is_bad_request(push: Any) -> None:
    assert _refused({"push": push}) is ErrorCode.BAD_REQUEST


_CORPUS = [
    encode({"session": bytes(16), "push": []}),
    encode({"push": [{"addr": f"{_PEERS[1]}@127.0.0.1:4001", "session": bytes(16)}]}),
    encode({"session": b"abc", "hidden": {"dtype": "float32", "shape": [1], "data": bytes(4)}}),
    encode({"hidden": {"dtype": "int9", "shape": [], "data": b""}, "push": [[]]}),
    encode([1, 2]),
    b"",
    b"\xc1",
]


def test_fuzz_seed_corpus() -> None:
    for data in _CORPUS:
        TEST_ONE_INPUT(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_CORPUS[:4]), st.integers(0, 200), st.integers(0, 255))
def test_fuzz_mutations(seed: bytes, at: int, value: int) -> None:
    data = bytearray(seed)
    if data:
        data[at % len(data)] = value
    TEST_ONE_INPUT(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    TEST_ONE_INPUT(data)


# Real processes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generation(tiny_checkpoint: Callable[[str], Path]) -> tuple[Path, torch.Tensor, dict[str, Any]]:
    path = tiny_checkpoint("llama")
    ids, kwargs, expected = local_greedy(path, 10)
    return path, ids, {**kwargs, "expected": expected}


def _unreachable(hop: _Hop) -> dict[str, Any]:
    """A push target the servers cannot dial: a port nobody serves (under a peer id they
    hold no connection to, or the pool would reuse the one it has)."""
    assert hop.push_id is not None
    nowhere = Address(_PEERS[3], "127.0.0.1", 1)
    return PushTarget(nowhere, hop.push_id).to_wire()


@pytest.mark.model
@pytest.mark.slow
def test_servers_push_and_fall_back_to_relaying(
    generation: tuple[Path, torch.Tensor, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, ids, kwargs = generation
    expected = kwargs.pop("expected")
    third = LAYERS // 3
    spans = [(0, third), (third, 2 * third), (2 * third, LAYERS)]
    with LocalSwarm(path, spans=spans) as swarm:
        model: Any = DistributedModelForCausalLM.from_pretrained(path, initial_peers=[swarm.dht])
        try:
            chain = model.chain
            assert torch.equal(model.generate(ids, **kwargs), expected)
            steps = chain.relayed_hops  # one relayed hop (the first) per step
            assert steps > 0 and chain.pushed_hops == 2 * steps
            model.chain.reset()
            monkeypatch.setattr(_Hop, "target", _unreachable)
            chain.pushed_hops = chain.relayed_hops = 0
            assert torch.equal(model.generate(ids, **kwargs), expected)
            assert chain.pushed_hops == 0 and chain.relayed_hops == 3 * steps
            assert chain.recoveries == 0
        finally:
            model.close()
