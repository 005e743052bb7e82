"""Reusable, pytest-free conformance checks (modelled on trio's ``check_two_way_stream``).

Another implementation of the sans-IO API runs them by passing a factory that returns a
fresh ``(initiator, responder)`` pair; the async checks take a factory of connected
``PeerConnection`` pairs.  Each check raises ``AssertionError`` with a reason on failure.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from petalproto.core import (
    Connection,
    ConnState,
    EndStream,
    Event,
    HandshakeCompleted,
    Message,
    Open,
    RemoteProtocolError,
)

__all__ = [
    "check_byte_at_a_time",
    "check_flow_control",
    "check_garbage_is_fatal",
    "check_handshake",
    "check_peer_connections",
    "check_request_response",
]

MakePair = Callable[[], tuple[Connection, Connection]]


def _deliver(source: Connection, target: Connection, *, step: int = 0) -> list[Event]:
    data = source.data_to_send()
    if not data:
        return []
    if step <= 0:
        return target.receive_data(data, 0.0)
    events: list[Event] = []
    for at in range(0, len(data), step):
        events += target.receive_data(data[at : at + step], 0.0)
    return events


def _shake(initiator: Connection, responder: Connection, *, step: int = 0) -> list[Event]:
    initiator.start(0.0)
    responder.start(0.0)
    events = _deliver(initiator, responder, step=step)
    events += _deliver(responder, initiator, step=step)
    events += _deliver(initiator, responder, step=step)
    return events


def check_handshake(make_pair: MakePair) -> None:
    """Both sides complete the handshake, learn each other's ids and agree on the hash."""
    initiator, responder = make_pair()
    _shake(initiator, responder)
    assert initiator.state is ConnState.OPEN, initiator.state
    assert responder.state is ConnState.OPEN, responder.state
    assert initiator.peer_id == responder.identity.peer_id
    assert responder.peer_id == initiator.identity.peer_id


def _call(initiator: Connection, responder: Connection, body: Any, *, step: int = 0) -> Any:
    stream_id = initiator.next_stream_id()
    initiator.send(Open(stream_id=stream_id, method="echo"), 0.0)
    initiator.send(Message(stream_id=stream_id, body=body, end_stream=True), 0.0)
    events = _deliver(initiator, responder, step=step)
    kinds = [type(e) for e in events]
    assert Open in kinds and Message in kinds, f"responder saw {kinds}"
    request = next(e for e in events if isinstance(e, Message))
    responder.acknowledge(stream_id, request.size, 0.0)
    responder.send(Message(stream_id=stream_id, body={"echo": request.body}, end_stream=True), 0.0)
    reply = [e for e in _deliver(responder, initiator, step=step) if isinstance(e, Message)]
    assert len(reply) == 1 and reply[0].end_stream, reply
    return reply[0].body


def check_request_response(make_pair: MakePair) -> None:
    """A unary exchange round-trips every msgpack type and leaves no stream behind."""
    initiator, responder = make_pair()
    _shake(initiator, responder)
    body = {
        "n": -3,
        "big": 2**63,
        "f": 1.5,
        "s": "ünïcode",
        "b": b"\x00\xff" * 1000,
        "l": [None, True, False, []],
        "m": {"x": {}},
    }
    assert _call(initiator, responder, body) == {"echo": body}
    assert initiator.active_streams == 0 and responder.active_streams == 0


def check_byte_at_a_time(make_pair: MakePair) -> None:
    """Delivering every byte separately changes nothing."""
    initiator, responder = make_pair()
    events = _shake(initiator, responder, step=1)
    assert sum(isinstance(e, HandshakeCompleted) for e in events) == 2
    body = {"x": b"y" * 60000}  # several frames, within a 64 KiB window
    assert _call(initiator, responder, body, step=1) == {"echo": body}


def check_flow_control(make_pair: MakePair) -> None:
    """A sender stops at the receiver's stream window and resumes once credit returns."""
    initiator, responder = make_pair()
    _shake(initiator, responder)
    window = responder.config.settings.stream_window
    stream_id = initiator.next_stream_id()
    initiator.send(Open(stream_id=stream_id, method="sink"), 0.0)
    first = b"a" * (window // 2)
    initiator.send(Message(stream_id=stream_id, body=first), 0.0)
    initiator.send(Message(stream_id=stream_id, body=first), 0.0)
    assert initiator.buffered(stream_id) > 0, "sent beyond the window"
    got = [e for e in _deliver(initiator, responder) if isinstance(e, Message)]
    assert len(got) == 1, "the second message cannot have fitted"
    responder.acknowledge(stream_id, got[0].size, 0.0)
    _deliver(responder, initiator)
    assert initiator.buffered(stream_id) == 0, "credit did not release the queue"
    got = [e for e in _deliver(initiator, responder) if isinstance(e, Message)]
    assert len(got) == 1 and got[0].body == first
    initiator.send(EndStream(stream_id=stream_id), 0.0)


def check_garbage_is_fatal(make_pair: MakePair) -> None:
    """Garbage after the handshake raises the remote error type and ends the connection."""
    initiator, responder = make_pair()
    _shake(initiator, responder)
    try:
        responder.receive_data(b"\x00\x40" + os.urandom(64), 0.0)
    except RemoteProtocolError:
        pass
    else:
        raise AssertionError("garbage was accepted")
    assert responder.state is ConnState.ERROR, responder.state


MakePeers = Callable[[trio.Nursery], Awaitable[tuple[Any, Any]]]


async def check_peer_connections(make_peers: MakePeers) -> None:
    """Over a shell: streams in both directions, concurrently, and a clean close.

    ``make_peers(nursery)`` returns two connected peers whose handlers echo every
    message on a stream back and end it when the caller ends theirs.
    """
    async with trio.open_nursery() as nursery:
        left, right = await make_peers(nursery)

        async def exchange(peer: Any, n: int) -> None:
            stream = await peer.open_stream("echo")
            for i in range(n):
                await stream.send({"i": i})
                assert await stream.receive() == {"i": i}
            await stream.end()

        async with trio.open_nursery() as calls:
            for n in (1, 5, 20):
                calls.start_soon(exchange, left, n)
                calls.start_soon(exchange, right, n)
        await left.aclose()
        with trio.fail_after(5):
            await right.closed.wait()
        nursery.cancel_scope.cancel()
