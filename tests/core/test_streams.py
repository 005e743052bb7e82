"""Streams and messages over a Connection (SPEC.md §8)."""

from __future__ import annotations

from typing import Any

import pytest

from petalproto.core import (
    Config,
    ConnectionClosed,
    ConnState,
    EndStream,
    ErrorCode,
    HandshakeCompleted,
    LocalProtocolError,
    Message,
    Open,
    Ping,
    Pong,
    RemoteProtocolError,
    Reset,
    Role,
    Settings,
    encode,
)
from petalproto.core._frames import FrameType as F
from petalproto.testing._pairs import ConnectionPair

from .connutil import SMALL, established, inject, of_type, sent

END_MESSAGE, END_STREAM = 1, 2
# -- lifecycle --------------------------------------------------------------------------------


def test_unary_call() -> None:
    pair = ConnectionPair()
    i, r = pair.initiator, pair.responder
    assert (i.next_stream_id(), r.next_stream_id()) == (1, 2)
    request = Message(stream_id=1, body={"q": [1, "two", b"3"]}, end_stream=True)
    assert pair.send(i, Open(stream_id=1, method="ping"), request) == [
        Open(stream_id=1, method="ping"),
        request,
    ]
    assert (i.active_streams, r.active_streams) == (1, 1)
    response = Message(stream_id=1, body={"a": None}, end_stream=True)
    [got] = pair.send(r, response)
    assert got == response and got.size == len(encode(response.body))
    assert (i.active_streams, r.active_streams) == (0, 0)
    assert i.next_stream_id() == 3
    r.acknowledge(1, len(encode(request.body)), 0.0)  # a forgotten stream: connection credit
    assert pair.transfer(r) == []


def test_responder_opens_even_streams_and_both_sides_stream() -> None:
    pair = ConnectionPair()
    i, r = pair.initiator, pair.responder
    assert pair.send(r, Open(stream_id=2, method="push")) == [Open(stream_id=2, method="push")]
    for n in range(3):
        assert pair.send(r, Message(stream_id=2, body=n)) == [Message(stream_id=2, body=n)]
        assert pair.send(i, Message(stream_id=2, body=-n)) == [Message(stream_id=2, body=-n)]
    assert pair.send(i, EndStream(stream_id=2)) == [EndStream(stream_id=2)]
    assert r.active_streams == 1
    assert pair.send(r, EndStream(stream_id=2)) == [EndStream(stream_id=2)]
    assert (i.active_streams, r.active_streams) == (0, 0)
    assert r.next_stream_id() == 4


def test_end_stream_is_an_empty_data_frame() -> None:
    conn, peer = established(Role.INITIATOR)
    conn.send(Open(stream_id=1, method="m"), 0.0)
    conn.send(EndStream(stream_id=1), 0.0)
    assert sent(conn, peer) == [(F.OPEN, 1, "m"), (F.DATA, 1, END_STREAM, b"")]
    assert inject(conn, peer, (F.DATA, 1, END_STREAM, b"")) == [EndStream(stream_id=1)]
    assert conn.active_streams == 0


@pytest.mark.parametrize("by_initiator", [True, False])
def test_reset_either_way(by_initiator: bool) -> None:
    pair = ConnectionPair()
    pair.send(pair.initiator, Open(stream_id=1, method="m"))
    sender = pair.initiator if by_initiator else pair.responder
    reset = Reset(stream_id=1, code=ErrorCode.CANCEL, reason="changed my mind")
    assert pair.send(sender, reset) == [reset]
    for conn in (pair.initiator, pair.responder):
        assert conn.active_streams == 0
        with pytest.raises(LocalProtocolError, match="not open for sending"):
            conn.send(Message(stream_id=1, body=1), 0.0)
        with pytest.raises(LocalProtocolError, match="not open"):
            conn.send(Reset(stream_id=1, code=ErrorCode.CANCEL), 0.0)


def test_reset_with_an_unknown_code_reads_as_internal_error() -> None:
    conn, peer = established()
    inject(conn, peer, (F.OPEN, 1, "m"))
    assert inject(conn, peer, (F.RESET, 1, 15, "why")) == [
        Reset(stream_id=1, code=ErrorCode.INTERNAL_ERROR, reason="why")
    ]


def test_reset_drops_the_partial_message_and_returns_its_credit() -> None:
    conn, peer = established()
    assert inject(
        conn, peer, (F.OPEN, 1, "m"), (F.DATA, 1, 0, b"\x92\x01"), (F.RESET, 1, 9, "")
    ) == [
        Open(stream_id=1, method="m"),
        Reset(stream_id=1, code=ErrorCode.CANCEL),
    ]
    assert sent(conn, peer) == [(F.CREDIT, 0, 2)]


def test_local_reset_returns_the_partial_credit_too() -> None:
    conn, peer = established()
    inject(conn, peer, (F.OPEN, 1, "m"), (F.DATA, 1, 0, b"\x92\x01"))
    conn.send(Reset(stream_id=1, code=ErrorCode.CANCEL), 0.0)
    assert sent(conn, peer) == [(F.CREDIT, 0, 2), (F.RESET, 1, 9, "")]


# -- stream ids (SPEC.md §8.2) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "frames",
    [
        [(F.OPEN, 2, "m")],  # our parity
        [(F.OPEN, 3, "m"), (F.OPEN, 1, "m")],  # not increasing
        [(F.OPEN, 1, "m"), (F.OPEN, 1, "m")],
        [(F.DATA, 1, 0, b"")],  # idle streams of theirs
        [(F.OPEN, 1, "m"), (F.DATA, 3, 0, b"")],
        [(F.CREDIT, 5, 1)],
        [(F.RESET, 5, 0, "")],
        [(F.DATA, 2, 0, b"")],  # idle streams of ours
        [(F.CREDIT, 4, 1)],
        [(F.RESET, 2, 0, "")],
    ],
)
def test_stream_id_misuse_is_a_protocol_error(frames: list[tuple[Any, ...]]) -> None:
    conn, peer = established()
    with pytest.raises(RemoteProtocolError, match="stream") as info:
        inject(conn, peer, *frames)
    assert type(info.value) is RemoteProtocolError
    assert of_type(sent(conn, peer), F.GOAWAY)[0][2] == ErrorCode.PROTOCOL_ERROR


def test_initiator_refuses_odd_ids_from_the_responder() -> None:
    conn, peer = established(Role.INITIATOR)
    with pytest.raises(RemoteProtocolError, match="not the peer's to open"):
        inject(conn, peer, (F.OPEN, 1, "m"))


def test_ids_may_skip() -> None:
    conn, peer = established()
    assert inject(conn, peer, (F.OPEN, 7, "m"), (F.OPEN, 101, "m")) == [
        Open(stream_id=7, method="m"),
        Open(stream_id=101, method="m"),
    ]
    # Skipped ids are no longer idle: frames on them are ignored.
    assert inject(conn, peer, (F.CREDIT, 3, 1), (F.RESET, 5, 0, "")) == []


def test_frames_on_closed_streams_are_ignored_and_data_credited() -> None:
    conn, peer = established()
    inject(conn, peer, (F.OPEN, 1, "m"))
    conn.send(Reset(stream_id=1, code=ErrorCode.CANCEL), 0.0)
    assert sent(conn, peer) == [(F.RESET, 1, ErrorCode.CANCEL, "")]
    assert (
        inject(
            conn,
            peer,
            (F.DATA, 1, END_MESSAGE, b"\x01" * 100),
            (F.CREDIT, 1, 5),
            (F.RESET, 1, 0, ""),
        )
        == []
    )
    assert sent(conn, peer) == [(F.CREDIT, 0, 100)]


def test_frames_on_forgotten_streams_of_ours_are_ignored() -> None:
    conn, peer = established()
    conn.send(Open(stream_id=2, method="m"), 0.0)
    conn.send(EndStream(stream_id=2), 0.0)
    assert inject(conn, peer, (F.DATA, 2, END_STREAM, b"")) == [EndStream(stream_id=2)]
    assert conn.active_streams == 0
    sent(conn, peer)
    assert inject(conn, peer, (F.DATA, 2, 0, b"ab"), (F.CREDIT, 2, 1)) == []
    assert sent(conn, peer) == [(F.CREDIT, 0, 2)]


def test_data_after_end_stream_is_discarded_before_the_answer() -> None:
    # SPEC.md §8.3: the stream stays open for our answer; the extra DATA only costs credit.
    conn, peer = established()
    assert inject(
        conn, peer, (F.OPEN, 1, "m"), (F.DATA, 1, END_MESSAGE | END_STREAM, encode(1))
    ) == [
        Open(stream_id=1, method="m"),
        Message(stream_id=1, body=1, end_stream=True),
    ]
    assert inject(conn, peer, (F.DATA, 1, END_MESSAGE, encode(2))) == []
    assert sent(conn, peer) == [(F.CREDIT, 0, 1)]  # the discarded byte; ours waits for the app
    assert conn.state is ConnState.OPEN and conn.active_streams == 1
    conn.send(Message(stream_id=1, body=3, end_stream=True), 0.0)
    assert sent(conn, peer) == [(F.DATA, 1, END_MESSAGE | END_STREAM, encode(3))]
    assert conn.active_streams == 0


def test_data_after_end_stream_is_discarded_after_the_answer() -> None:
    conn, peer = established()
    inject(conn, peer, (F.OPEN, 1, "m"), (F.DATA, 1, END_MESSAGE | END_STREAM, encode(1)))
    conn.send(Message(stream_id=1, body=3, end_stream=True), 0.0)
    sent(conn, peer)
    assert inject(conn, peer, (F.DATA, 1, END_MESSAGE, encode(2))) == []
    assert sent(conn, peer) == [(F.CREDIT, 0, 1)]
    assert conn.state is ConnState.OPEN and conn.active_streams == 0


@pytest.mark.parametrize("split", [True, False])
def test_end_stream_mid_message_resets_the_stream(split: bool) -> None:
    conn, peer = established()
    frames = (
        [(F.DATA, 1, 0, b"\x92\x01"), (F.DATA, 1, END_STREAM, b"")]
        if split
        else [(F.DATA, 1, END_STREAM, b"\x92\x01")]
    )
    assert inject(conn, peer, (F.OPEN, 1, "m"), *frames)[1:] == [
        Reset(stream_id=1, code=ErrorCode.PROTOCOL_ERROR, reason="END_STREAM mid-message")
    ]
    assert sent(conn, peer) == [
        (F.CREDIT, 0, 2),
        (F.RESET, 1, ErrorCode.PROTOCOL_ERROR, "END_STREAM mid-message"),
    ]


@pytest.mark.parametrize("chunk", [b"\xc1", b"", b"\x01\x02", b"\xd4\x01\x00", b"\x92\x01"])
def test_malformed_message_resets_only_its_stream(chunk: bytes) -> None:
    conn, peer = established()
    inject(conn, peer, (F.OPEN, 1, "m"), (F.OPEN, 3, "m"))
    [reset] = inject(conn, peer, (F.DATA, 1, END_MESSAGE, chunk))
    assert isinstance(reset, Reset)
    assert (reset.stream_id, reset.code) == (1, ErrorCode.MALFORMED)
    frames = sent(conn, peer)
    assert frames[-1][:3] == (F.RESET, 1, ErrorCode.MALFORMED)
    assert of_type(frames, F.CREDIT) == ([(F.CREDIT, 0, len(chunk))] if chunk else [])
    # The connection and the other stream carry on.
    assert inject(conn, peer, (F.DATA, 3, END_MESSAGE, b"\xc0"), (F.PING, b"8 bytes!")) == [
        Message(stream_id=3, body=None),
        Ping(opaque=b"8 bytes!"),
    ]
    assert sent(conn, peer) == [(F.PONG, b"8 bytes!")]


def test_max_streams_refuses_with_refused_stream() -> None:
    conn, peer = established(settings=SMALL)
    opened = inject(conn, peer, *[(F.OPEN, s, "m") for s in (1, 3, 5, 7)])
    assert len(opened) == SMALL.max_streams == 4
    conn.send(Open(stream_id=2, method="m"), 0.0)  # our own streams do not count
    sent(conn, peer)
    assert inject(conn, peer, (F.OPEN, 9, "m"), (F.DATA, 9, 0, b"xyz")) == []
    assert sent(conn, peer) == [(F.RESET, 9, ErrorCode.REFUSED_STREAM, ""), (F.CREDIT, 0, 3)]
    # Closing a stream either way frees a place.
    inject(conn, peer, (F.RESET, 1, 0, ""))
    assert inject(conn, peer, (F.OPEN, 11, "m")) == [Open(stream_id=11, method="m")]
    conn.send(Message(stream_id=3, body=0, end_stream=True), 0.0)
    inject(conn, peer, (F.DATA, 3, END_STREAM, b""))
    assert inject(conn, peer, (F.OPEN, 13, "m")) == [Open(stream_id=13, method="m")]
    assert inject(conn, peer, (F.OPEN, 15, "m")) == []


def test_refused_stream_between_connections() -> None:
    pair = ConnectionPair(responder_config=Config(settings=Settings(max_streams=1)))
    i = pair.initiator
    assert pair.send(i, Open(stream_id=1, method="a"), Open(stream_id=3, method="b")) == [
        Open(stream_id=1, method="a")
    ]
    assert pair.transfer(pair.responder) == [Reset(stream_id=3, code=ErrorCode.REFUSED_STREAM)]
    assert i.active_streams == 1


# -- local misuse -----------------------------------------------------------------------------


def test_sending_on_streams_that_are_not_ours_to_use() -> None:
    pair = ConnectionPair()
    i = pair.initiator
    with pytest.raises(LocalProtocolError, match="next stream id is 1"):
        i.send(Open(stream_id=3, method="m"), 0.0)
    with pytest.raises(LocalProtocolError, match="next stream id is 1"):
        i.send(Open(stream_id=2, method="m"), 0.0)
    with pytest.raises(LocalProtocolError, match="not open for sending"):
        i.send(Message(stream_id=1, body=1), 0.0)
    with pytest.raises(LocalProtocolError, match="not open for sending"):
        i.send(EndStream(stream_id=1), 0.0)
    i.send(Open(stream_id=1, method="m"), 0.0)
    i.send(Message(stream_id=1, body=1, end_stream=True), 0.0)
    for event in (Message(stream_id=1, body=2), EndStream(stream_id=1)):
        with pytest.raises(LocalProtocolError, match="not open for sending"):
            i.send(event, 0.0)
    i.send(Open(stream_id=3, method="m"), 0.0)
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        i.send(Message(stream_id=3, body=object()), 0.0)
    assert i.state is ConnState.OPEN


def test_events_that_cannot_be_sent() -> None:
    pair = ConnectionPair()
    done = HandshakeCompleted(
        peer_id=pair.initiator.identity.peer_id, settings=Settings(), handshake_hash=b""
    )
    for event in (done, ConnectionClosed(code=ErrorCode.NO_ERROR)):
        with pytest.raises(LocalProtocolError, match="cannot send"):
            pair.initiator.send(event, 0.0)


def test_application_ping_and_pong() -> None:
    pair = ConnectionPair()
    assert pair.send(pair.initiator, Ping(opaque=b"abcdefgh")) == [Ping(opaque=b"abcdefgh")]
    assert pair.transfer(pair.responder) == [Pong(opaque=b"abcdefgh")]
    assert pair.send(pair.responder, Pong(opaque=b"unasked!")) == [Pong(opaque=b"unasked!")]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Open(stream_id=0, method="m"),
        lambda: Open(stream_id=2**32, method="m"),
        lambda: Open(stream_id=True, method="m"),
        lambda: Open(stream_id=1, method=""),
        lambda: Open(stream_id=1, method="m" * 65),
        lambda: Open(stream_id=1, method=b"m"),  # type: ignore[arg-type]
        lambda: Message(stream_id=0, body=1),
        lambda: EndStream(stream_id=-1),
        lambda: Reset(stream_id=1, code=ErrorCode.CANCEL, reason="r" * 257),
        lambda: Reset(stream_id=1, code=ErrorCode.CANCEL, reason=None),  # type: ignore[arg-type]
        lambda: Ping(opaque=b"1234567"),
        lambda: Ping(opaque=bytearray(8)),  # type: ignore[arg-type]
        lambda: Pong(opaque=b""),
    ],
)
def test_event_constructors_validate(make: Any) -> None:
    with pytest.raises(LocalProtocolError):
        make()


def test_empty_data_on_a_closed_stream_grants_nothing() -> None:
    # The race of a peer ending a stream we just reset: its empty END_STREAM used no
    # credit, and a CREDIT of 0 would be malformed (found by fuzz/frames.py).
    conn, peer = established()
    inject(conn, peer, (F.OPEN, 1, "m"))
    conn.send(Reset(stream_id=1, code=ErrorCode.CANCEL), 0.0)
    sent(conn, peer)
    assert inject(conn, peer, (F.DATA, 1, END_STREAM, b""), (F.DATA, 1, 0, b"")) == []
    assert sent(conn, peer) == []


def test_empty_data_after_end_stream_sends_nothing() -> None:
    conn, peer = established()
    inject(conn, peer, (F.OPEN, 1, "m"), (F.DATA, 1, END_STREAM, b""))
    assert inject(conn, peer, (F.DATA, 1, END_STREAM, b"")) == []
    assert sent(conn, peer) == []
