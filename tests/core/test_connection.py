"""Connection management: GOAWAY, ping, timers, EOF, transport integrity (SPEC.md §7, §9)."""

from __future__ import annotations

import pytest

from petalproto.core import (
    Config,
    ConnectionClosed,
    ConnState,
    EndStream,
    ErrorCode,
    GoAway,
    LocalProtocolError,
    Message,
    Open,
    Ping,
    Pong,
    RemoteProtocolError,
    Reset,
    Role,
)
from petalproto.core._frames import FrameType as F
from petalproto.testing._pairs import ConnectionPair

from .connutil import established, inject, of_type, sent

END_MESSAGE, END_STREAM = 1, 2


# -- GOAWAY (SPEC.md §9.2) --------------------------------------------------------------------


def test_graceful_goaway_lets_open_streams_finish() -> None:
    pair = ConnectionPair()
    i, r = pair.initiator, pair.responder
    pair.send(i, Open(stream_id=1, method="m"), Message(stream_id=1, body=1))
    assert pair.send(i, GoAway(reason="bye")) == [GoAway(last_stream_id=0, reason="bye")]
    assert (i.state, r.state) == (ConnState.CLOSING, ConnState.CLOSING)
    for conn in (i, r):
        with pytest.raises(LocalProtocolError, match="closing"):
            conn.send(Open(stream_id=conn.next_stream_id(), method="m"), 0.0)
    # Stream 1 is ours, the initiator's: the responder keeps serving it.
    assert pair.send(r, Message(stream_id=1, body=2, end_stream=True)) == [
        Message(stream_id=1, body=2, end_stream=True)
    ]
    assert i.state is ConnState.CLOSING
    pair.send(i, EndStream(stream_id=1))
    assert (i.state, r.state) == (ConnState.CLOSED, ConnState.CLOSED)
    assert i.next_deadline() is None and r.next_deadline() is None


def test_graceful_goaway_refuses_streams_above_the_last_id() -> None:
    pair = ConnectionPair()
    i, r = pair.initiator, pair.responder
    pair.send(i, Open(stream_id=1, method="a"))
    i.send(Open(stream_id=3, method="b"), 0.0)  # still in flight when the GOAWAY leaves
    r.send(GoAway(), 0.0)
    assert r.state is ConnState.CLOSING
    assert pair.transfer(r) == [
        GoAway(last_stream_id=1),
        Reset(stream_id=3, code=ErrorCode.REFUSED_STREAM, reason="refused by GOAWAY"),
    ]
    assert i.active_streams == 1
    # The OPEN of 3 arrives after the GOAWAY: refused, and the RESET is ignored.
    assert pair.transfer(i) == []
    assert pair.transfer(r) == []
    assert pair.send(r, Message(stream_id=1, body=0, end_stream=True))
    pair.send(i, EndStream(stream_id=1))
    assert (i.state, r.state) == (ConnState.CLOSED, ConnState.CLOSED)


def test_goaway_returns_credit_of_partial_refused_streams() -> None:
    conn, peer = established()
    conn.send(Open(stream_id=2, method="m"), 0.0)
    sent(conn, peer)
    events = inject(conn, peer, (F.DATA, 2, 0, b"\x92"), (F.GOAWAY, 0, 0, ""))
    assert events == [
        GoAway(last_stream_id=0),
        Reset(stream_id=2, code=ErrorCode.REFUSED_STREAM, reason="refused by GOAWAY"),
    ]
    assert sent(conn, peer) == [(F.CREDIT, 0, 1)]
    assert conn.state is ConnState.CLOSED


def test_goaway_without_streams_closes_at_once() -> None:
    pair = ConnectionPair()
    pair.send(pair.responder, GoAway())
    assert (pair.initiator.state, pair.responder.state) == (ConnState.CLOSED, ConnState.CLOSED)


def test_goaway_twice_is_harmless() -> None:
    pair = ConnectionPair()
    pair.send(pair.initiator, Open(stream_id=1, method="m"))
    pair.send(pair.initiator, GoAway())
    assert pair.send(pair.initiator, GoAway(last_stream_id=0)) == [GoAway()]
    assert pair.send(pair.responder, GoAway()) == [GoAway(last_stream_id=1)]
    assert pair.initiator.state is ConnState.CLOSING


def test_goaway_with_an_error_code_ends_the_connection() -> None:
    conn, peer = established()
    events = inject(
        conn, peer, (F.OPEN, 1, "m"), (F.GOAWAY, 1, ErrorCode.OVERLOADED, "busy"), (F.OPEN, 3, "m")
    )
    assert events == [
        Open(stream_id=1, method="m"),
        GoAway(last_stream_id=1, code=ErrorCode.OVERLOADED, reason="busy"),
        ConnectionClosed(code=ErrorCode.OVERLOADED, reason="busy", by_peer=True),
    ]  # the OPEN after it is not processed
    assert conn.state is ConnState.CLOSED
    assert conn.next_deadline() is None
    with pytest.raises(LocalProtocolError):
        conn.receive_data(peer.seal(b""), 0.0)


def test_goaway_with_an_unknown_code() -> None:
    conn, peer = established()
    assert inject(conn, peer, (F.GOAWAY, 0, 999, "")) == [
        GoAway(code=ErrorCode.INTERNAL_ERROR),
        ConnectionClosed(code=ErrorCode.INTERNAL_ERROR, by_peer=True),
    ]


def test_sending_goaway_with_an_error_code() -> None:
    pair = ConnectionPair()
    pair.send(pair.initiator, Open(stream_id=1, method="m"))
    pair.initiator.send(GoAway(code=ErrorCode.INTERNAL_ERROR, reason="oops"), 0.0)
    assert pair.initiator.state is ConnState.CLOSED
    assert pair.transfer(pair.initiator) == [
        GoAway(code=ErrorCode.INTERNAL_ERROR, reason="oops"),
        ConnectionClosed(code=ErrorCode.INTERNAL_ERROR, reason="oops", by_peer=True),
    ]
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.initiator.send(Ping(opaque=bytes(8)), 0.0)


def test_goaway_event_validates() -> None:
    assert GoAway().last_stream_id == 0
    with pytest.raises(LocalProtocolError):
        GoAway(last_stream_id=-1)
    with pytest.raises(LocalProtocolError):
        GoAway(reason="é" * 129)


# -- ping and timers (SPEC.md §9.1) -----------------------------------------------------------


def test_ping_is_answered_by_the_core() -> None:
    conn, peer = established()
    assert inject(conn, peer, (F.PING, b"\x00" * 8), (F.PONG, b"\x01" * 8)) == [
        Ping(opaque=b"\x00" * 8),
        Pong(opaque=b"\x01" * 8),
    ]
    assert sent(conn, peer) == [(F.PONG, b"\x00" * 8)]


def test_keepalive_then_idle_timeout() -> None:
    conn, peer = established()  # at t = 0
    assert conn.next_deadline() == 15.0
    assert conn.handle_timer(14.9) == []
    assert conn.data_to_send() == b""
    assert conn.handle_timer(15.0) == []  # due: a keepalive PING goes out
    [(kind, opaque)] = sent(conn, peer)
    assert kind is F.PING and len(opaque) == 8
    assert conn.next_deadline() == 45.0  # now waiting for anything at all
    assert conn.handle_timer(30.0) == []  # early: harmless
    assert sent(conn, peer) == []
    # Anything from the peer counts; here the PONG, at t = 20.
    assert inject(conn, peer, (F.PONG, opaque), now=20.0) == [Pong(opaque=opaque)]
    assert conn.next_deadline() == 35.0
    assert conn.handle_timer(35.0) == []
    assert of_type(sent(conn, peer), F.PING)
    assert conn.next_deadline() == 65.0
    assert conn.handle_timer(65.0) == [
        ConnectionClosed(code=ErrorCode.IDLE_TIMEOUT, reason="peer silent")
    ]
    assert conn.state is ConnState.CLOSED
    assert sent(conn, peer) == [(F.GOAWAY, 0, ErrorCode.IDLE_TIMEOUT, "peer silent")]
    assert conn.next_deadline() is None
    assert conn.handle_timer(1000.0) == []


def test_timers_follow_the_config() -> None:
    config = Config(keepalive_interval=1.0, idle_timeout=2.0)
    conn, _ = established(config=config)
    assert conn.next_deadline() == 1.0
    conn.handle_timer(5.0)  # late: still only the keepalive
    assert conn.state is ConnState.OPEN
    assert conn.next_deadline() == 2.0
    assert conn.handle_timer(5.0) == [
        ConnectionClosed(code=ErrorCode.IDLE_TIMEOUT, reason="peer silent")
    ]


def test_keepalive_runs_while_closing() -> None:
    pair = ConnectionPair()
    pair.send(pair.initiator, Open(stream_id=1, method="m"))
    pair.send(pair.initiator, GoAway())
    assert pair.initiator.state is ConnState.CLOSING
    assert pair.initiator.next_deadline() == 15.0
    assert pair.initiator.handle_timer(15.0) == []
    [ping] = pair.transfer(pair.initiator)
    assert isinstance(ping, Ping)
    assert pair.transfer(pair.responder) == [Pong(opaque=ping.opaque)]


# -- transport integrity (SPEC.md §7.1) -------------------------------------------------------


def test_tampered_transport_message() -> None:
    conn, peer = established()
    sealed = bytearray(peer.seal(b"anything"))
    sealed[5] ^= 0x80
    with pytest.raises(RemoteProtocolError, match="authentication") as info:
        conn.receive_data(bytes(sealed), 0.0)
    assert type(info.value) is RemoteProtocolError
    assert conn.state is ConnState.ERROR
    [(kind, _, code, _)] = sent(conn, peer)
    assert (kind, code) == (F.GOAWAY, ErrorCode.PROTOCOL_ERROR)


def test_replayed_transport_message() -> None:
    pair = ConnectionPair()
    pair.initiator.send(Ping(opaque=bytes(8)), 0.0)
    message = pair.initiator.data_to_send()
    assert pair.responder.receive_data(message, 0.0) == [Ping(opaque=bytes(8))]
    with pytest.raises(RemoteProtocolError, match="authentication"):
        pair.responder.receive_data(message, 0.0)
    assert pair.responder.state is ConnState.ERROR


def test_reordered_transport_messages() -> None:
    conn, peer = established()
    first, second = peer.seal(b""), peer.seal(b"")
    with pytest.raises(RemoteProtocolError, match="authentication"):
        conn.receive_data(second + first, 0.0)


def test_transport_message_shorter_than_a_tag() -> None:
    conn, peer = established()
    assert conn.receive_data(b"\x00", 0.0) == []
    with pytest.raises(RemoteProtocolError, match="transport message of 15 bytes"):
        conn.receive_data(b"\x0f", 0.0)
    assert conn.state is ConnState.ERROR
    assert of_type(sent(conn, peer), F.GOAWAY)


def test_errors_drop_queued_frames_and_send_only_goaway() -> None:
    conn, peer = established()
    with pytest.raises(RemoteProtocolError):
        inject(conn, peer, (F.PING, b"12345678"), (F.OPEN, 2, "m"))
    assert [f[0] for f in sent(conn, peer)] == [F.GOAWAY]  # no PONG


# -- EOF --------------------------------------------------------------------------------------


def test_eof_when_idle_is_clean() -> None:
    conn, _ = established()
    assert conn.receive_data(b"", 1.0) == [
        ConnectionClosed(code=ErrorCode.NO_ERROR, reason="EOF", by_peer=True)
    ]
    assert conn.state is ConnState.CLOSED


def test_eof_with_open_streams_is_a_cancel() -> None:
    conn, peer = established()
    inject(conn, peer, (F.OPEN, 1, "m"))
    assert conn.receive_data(b"", 1.0) == [
        ConnectionClosed(code=ErrorCode.CANCEL, reason="EOF", by_peer=True)
    ]


def test_eof_while_closing() -> None:
    conn, peer = established()
    inject(conn, peer, (F.OPEN, 1, "m"), (F.GOAWAY, 0, 0, ""))
    assert conn.state is ConnState.CLOSING
    assert conn.receive_data(b"", 1.0) == [
        ConnectionClosed(code=ErrorCode.NO_ERROR, reason="EOF", by_peer=True)
    ]
    conn, peer = established()
    inject(conn, peer, (F.OPEN, 1, "m"), (F.GOAWAY, 0, 0, ""))
    conn.receive_data(b"\x00", 1.0)  # a truncated transport message
    assert conn.receive_data(b"", 1.0) == [
        ConnectionClosed(code=ErrorCode.CANCEL, reason="EOF", by_peer=True)
    ]


# -- local misuse and dead connections --------------------------------------------------------


def test_sending_before_the_handshake() -> None:
    pair = ConnectionPair(handshake=False)
    i = pair.initiator
    for event in (Open(stream_id=1, method="m"), Ping(opaque=bytes(8)), GoAway()):
        with pytest.raises(LocalProtocolError, match="await-responder-hello"):
            i.send(event, 0.0)
    with pytest.raises(LocalProtocolError):
        i.next_stream_id()
    i.acknowledge(1, 10, 0.0)  # harmless
    assert i.data_to_send() == b""


def test_send_failed_kills_the_connection() -> None:
    pair = ConnectionPair()
    pair.initiator.send_failed()
    assert pair.initiator.state is ConnState.ERROR
    assert pair.initiator.next_deadline() is None
    assert pair.initiator.handle_timer(1e9) == []
    pair.initiator.acknowledge(1, 1, 0.0)
    with pytest.raises(LocalProtocolError, match="error"):
        pair.initiator.receive_data(b"x", 0.0)
    with pytest.raises(LocalProtocolError, match="error"):
        pair.initiator.send(Ping(opaque=bytes(8)), 0.0)


def test_errors_are_final() -> None:
    conn, peer = established(Role.INITIATOR)
    with pytest.raises(RemoteProtocolError):
        inject(conn, peer, (F.OPEN, 1, "m"))
    for data in (b"", peer.seal(b"")):
        with pytest.raises(LocalProtocolError, match="error"):
            conn.receive_data(data, 0.0)
    with pytest.raises(LocalProtocolError):
        conn.send(Open(stream_id=1, method="m"), 0.0)
    conn.acknowledge(1, 1, 0.0)
    assert [f[0] for f in sent(conn, peer)] == [F.GOAWAY]
    assert conn.data_to_send() == b""


def test_has_data_to_send_tracks_what_data_to_send_would_return() -> None:
    pair = ConnectionPair(handshake=False)
    i = pair.initiator
    assert not i.has_data_to_send  # not started: no handshake bytes, no multiplexer
    i.start(0.0)
    pair.responder.start(0.0)
    assert i.has_data_to_send  # message 1
    pair.transfer(i)
    assert not i.has_data_to_send
    pair.transfer(pair.responder)
    pair.transfer(i)
    assert not i.has_data_to_send  # open, nothing queued
    i.send(Open(stream_id=1, method="m"), 0.0)
    assert i.has_data_to_send  # a frame waits in the multiplexer
    assert i.data_to_send()
    assert not i.has_data_to_send
