"""The public test helpers of petalproto.testing._pairs."""

from __future__ import annotations

import pytest

from petalproto.core import (
    Config,
    ConnState,
    HandshakeFailed,
    Message,
    Open,
    Role,
    Settings,
    encode,
)
from petalproto.core._frames import FrameType as F
from petalproto.testing._pairs import (
    ConnectionPair,
    ScriptedPeer,
    deterministic_random,
    frame_bytes,
    make_connection,
    make_identity,
)


def test_deterministic_random_is_reproducible() -> None:
    a, b = deterministic_random("seed"), deterministic_random(b"seed")
    assert [a(n) for n in (0, 1, 31, 32, 33, 100)] == [b(n) for n in (0, 1, 31, 32, 33, 100)]
    assert len(deterministic_random()(1000)) == 1000
    assert deterministic_random("x")(32) != deterministic_random("y")(32)
    stream = deterministic_random("z")
    assert stream(16) + stream(16) == deterministic_random("z")(32)


def test_make_identity_is_reproducible() -> None:
    assert make_identity("a").peer_id == make_identity("a").peer_id
    assert make_identity("a").peer_id != make_identity("b").peer_id


def test_pairs_with_the_same_seed_write_the_same_bytes() -> None:
    first = [ConnectionPair(handshake=False, seed="s") for _ in range(2)]
    for pair in first:
        pair.initiator.start(0.0)
    assert first[0].initiator.data_to_send() == first[1].initiator.data_to_send()
    other = ConnectionPair(handshake=False, seed="t")
    other.initiator.start(0.0)
    assert other.initiator.data_to_send() != first[0].initiator.data_to_send()


def test_exchange_runs_until_both_sides_are_quiet() -> None:
    # A message beyond the window needs CREDIT to come back before its end goes out.
    small = Settings(stream_window=1 << 16, connection_window=1 << 16)
    pair = ConnectionPair(responder_config=Config(settings=small))
    body = b"x" * 50_000
    pair.initiator.send(Open(stream_id=1, method="m"), 0.0)
    for _ in range(2):
        pair.initiator.send(Message(stream_id=1, body=body), 0.0)
    at_initiator, at_responder = pair.exchange()
    assert at_initiator == [] and [type(e) for e in at_responder] == [Open, Message]
    pair.responder.acknowledge(1, len(encode(body)), 0.0)
    at_initiator, at_responder = pair.exchange()
    assert at_responder == [Message(stream_id=1, body=body)]


def test_handshake_failure_propagates() -> None:
    pair = ConnectionPair(handshake=False, expected_peer=make_identity("someone").peer_id)
    with pytest.raises(HandshakeFailed):
        pair.handshake()
    assert pair.initiator.state is ConnState.ERROR


def test_scripted_peer_opens_split_and_partial_messages() -> None:
    conn = make_connection(Role.RESPONDER)
    peer = ScriptedPeer(Role.INITIATOR)
    peer.establish(conn)
    conn.receive_data(peer.seal(frame_bytes(F.OPEN, 1, "m")), 0.0)
    conn.send(Message(stream_id=1, body=b"y" * 100_000), 0.0)  # two transport messages
    wire = conn.data_to_send()
    assert peer.receive(wire[:10]) == []
    frames = peer.receive(wire[10:70_000])  # the first transport message, and a bit
    assert [f[0] for f in frames] == [F.DATA]
    frames += peer.receive(wire[70_000:])
    assert [f[0] for f in frames] == [F.DATA, F.DATA]
    assert b"".join(bytes(f[3]) for f in frames) == encode(b"y" * 100_000)
    assert len(peer.seal(b"")) == 2 + 16
    assert len(peer.seal(b"z" * 70_000)) == 2 * (2 + 16) + 70_000
