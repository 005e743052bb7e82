"""Chunking, credit and flow control, and framing errors (SPEC.md §7.2, §8.4, §8.5)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petalproto.core import (
    Config,
    ConnState,
    ErrorCode,
    FlowControlError,
    FrameTooLarge,
    LocalProtocolError,
    MalformedMessage,
    Message,
    Open,
    Ping,
    RemoteProtocolError,
    Role,
    Settings,
    encode,
)
from petalproto.core._frames import FrameType as F
from petalproto.core._mux import DATA_CHUNK
from petalproto.testing._pairs import ConnectionPair, frame_bytes

from .connutil import SMALL, assert_goaway, established, inject, of_type, sent

END_MESSAGE, END_STREAM = 1, 2
WINDOW = SMALL.stream_window


def _sized(n: int) -> bytes:
    """A bin body whose msgpack encoding is exactly ``n`` bytes (n >= 3 + 256)."""
    body = b"m" * (n - 3 if n - 3 < 1 << 16 else n - 5)
    assert len(encode(body)) == n
    return body


def _small_pair(**kwargs: Any) -> ConnectionPair:
    return ConnectionPair(responder_config=Config(settings=SMALL), **kwargs)


# -- chunking and credit ----------------------------------------------------------------------


def test_large_message_is_chunked_into_transport_sized_frames() -> None:
    conn, peer = established(Role.INITIATOR)
    body = bytes(range(256)) * (5 << 12)  # 5 MiB
    conn.send(Open(stream_id=1, method="m"), 0.0)
    conn.send(Message(stream_id=1, body=body, end_stream=True), 0.0)
    wire = conn.data_to_send()
    lengths = []
    pos = 0
    while pos < len(wire):
        lengths.append(int.from_bytes(wire[pos : pos + 2], "big"))
        pos += 2 + lengths[-1]
    assert pos == len(wire) and max(lengths) <= 65535
    frames = of_type(peer.receive(wire), F.DATA)
    assert all(len(f[3]) <= DATA_CHUNK for f in frames)
    assert [f[2] for f in frames] == [0] * (len(frames) - 1) + [END_MESSAGE | END_STREAM]
    assert b"".join(f[3] for f in frames) == encode(body)
    # Each DATA frame fits one transport message, so there are as many messages as frames.
    assert len(lengths) == len(frames)  # the OPEN travels with the first chunk


def test_large_message_round_trip() -> None:
    pair = ConnectionPair()
    body = {"tensor": b"\x07" * (6 << 20), "shape": [3, 2 << 20]}
    [_, got] = pair.send(
        pair.initiator, Open(stream_id=1, method="m"), Message(stream_id=1, body=body)
    )
    assert got == Message(stream_id=1, body=body)
    assert got.size == len(encode(body))


def test_sender_stalls_at_the_stream_window_and_resumes() -> None:
    pair = _small_pair()
    i, r = pair.initiator, pair.responder
    first, second = _sized(WINDOW - 10), _sized(300)
    i.send(Open(stream_id=1, method="m"), 0.0)
    i.send(Message(stream_id=1, body=first), 0.0)
    i.send(Message(stream_id=1, body=second), 0.0)
    assert i.buffered(1) == len(encode(second)) - 10  # 10 bytes went out
    events = pair.transfer(i)
    assert events == [Open(stream_id=1, method="m"), Message(stream_id=1, body=first)]
    assert pair.transfer(i) == []  # nothing more until credit comes back
    r.acknowledge(1, events[1].size if isinstance(events[1], Message) else 0, 0.0)
    assert pair.transfer(r) == []  # CREDIT frames make no events
    assert i.buffered(1) == 0
    assert pair.transfer(i) == [Message(stream_id=1, body=second)]


def test_connection_window_exhaustion() -> None:
    settings = Settings(stream_window=WINDOW, connection_window=2 * WINDOW)
    pair = ConnectionPair(responder_config=Config(settings=settings))
    i, r = pair.initiator, pair.responder
    body = _sized(WINDOW)
    for stream_id in (1, 3, 5):
        i.send(Open(stream_id=stream_id, method="m"), 0.0)
        i.send(Message(stream_id=stream_id, body=body), 0.0)
    assert [i.buffered(s) for s in (1, 3, 5)] == [0, 0, WINDOW]
    events = pair.transfer(i)
    assert [type(e) for e in events] == [Open, Message, Open, Message, Open]
    r.acknowledge(3, WINDOW, 0.0)
    pair.transfer(r)
    assert i.buffered(5) == 0
    assert pair.transfer(i) == [Message(stream_id=5, body=body)]


def test_message_limit_is_the_receivers_stream_window() -> None:
    pair = _small_pair()
    i = pair.initiator
    i.send(Open(stream_id=1, method="m"), 0.0)
    with pytest.raises(LocalProtocolError, match="exceeds the peer's limit") as info:
        i.send(Message(stream_id=1, body=_sized(WINDOW + 1)), 0.0)
    assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
    assert i.state is ConnState.OPEN
    i.send(Message(stream_id=1, body=_sized(WINDOW)), 0.0)
    assert [type(e) for e in pair.transfer(i)] == [Open, Message]


#: Grants every acknowledged message at once, to see each CREDIT frame.
EAGER = Config(settings=SMALL, batch_credit=False)


def test_acknowledge_sends_credit_for_the_stream_and_the_connection() -> None:
    conn, peer = established(config=EAGER)
    inject(conn, peer, (F.OPEN, 1, "m"), (F.DATA, 1, END_MESSAGE, encode(7)))
    conn.acknowledge(1, 1, 0.0)
    assert sent(conn, peer) == [(F.CREDIT, 0, 1), (F.CREDIT, 1, 1)]
    conn.acknowledge(1, 0, 0.0)
    assert sent(conn, peer) == []


def test_acknowledge_after_the_peer_ended_gives_only_connection_credit() -> None:
    conn, peer = established(config=EAGER)
    inject(conn, peer, (F.OPEN, 1, "m"), (F.DATA, 1, END_MESSAGE | END_STREAM, encode(7)))
    assert conn.active_streams == 1  # our direction is still open
    conn.acknowledge(1, 1, 0.0)
    assert sent(conn, peer) == [(F.CREDIT, 0, 1)]


@pytest.mark.parametrize("batch", [False, True])
def test_acknowledging_more_than_received_is_refused(batch: bool) -> None:
    conn, peer = established(config=Config(settings=SMALL, batch_credit=batch))
    inject(
        conn,
        peer,
        (F.OPEN, 1, "m"),
        (F.OPEN, 3, "m"),
        (F.DATA, 1, END_MESSAGE, encode(1)),
        (F.DATA, 3, END_MESSAGE, encode(3)),
    )
    with pytest.raises(LocalProtocolError, match="not received"):
        conn.acknowledge(1, 3, 0.0)  # more than the connection received
    with pytest.raises(LocalProtocolError, match="not received"):
        conn.acknowledge(1, 2, 0.0)  # within the connection, beyond the stream
    conn.acknowledge(1, 1, 0.0)
    with pytest.raises(LocalProtocolError, match="not received"):
        conn.acknowledge(1, 1, 0.0)  # twice
    conn.acknowledge(3, 1, 0.0)
    eager = [(F.CREDIT, 0, 1), (F.CREDIT, 1, 1), (F.CREDIT, 0, 1), (F.CREDIT, 3, 1)]
    assert of_type(sent(conn, peer), F.CREDIT) == ([] if batch else eager)
    assert conn.state is ConnState.OPEN


def test_batched_credit_waits_until_the_peer_has_less_than_half_a_window() -> None:
    conn, peer = established(settings=SMALL)
    half = WINDOW // 2
    inject(conn, peer, (F.OPEN, 1, "m"), (F.DATA, 1, END_MESSAGE, encode(_sized(half))))
    conn.acknowledge(1, half, 0.0)  # the peer still has exactly half: nothing yet
    assert sent(conn, peer) == []
    inject(conn, peer, (F.DATA, 1, END_MESSAGE, encode(7)))  # now it has less
    assert sent(conn, peer) == [(F.CREDIT, 1, half)]
    conn.acknowledge(1, 1, 0.0)  # the stream has half again; the connection has plenty
    assert sent(conn, peer) == []


def test_batched_credit_is_granted_when_consumed_below_half() -> None:
    conn, peer = established(settings=SMALL)
    body = encode(_sized(WINDOW // 2 + 1))
    inject(conn, peer, (F.OPEN, 1, "m"), (F.DATA, 1, END_MESSAGE, body))
    conn.acknowledge(1, len(body), 0.0)
    assert sent(conn, peer) == [(F.CREDIT, 1, len(body))]


def test_batched_connection_credit_comes_back_across_streams() -> None:
    tight = Settings(stream_window=1 << 16, connection_window=1 << 17, max_streams=8)
    conn, peer = established(settings=tight)
    body = encode(_sized(30_000))
    for stream_id in (1, 3):
        inject(conn, peer, (F.OPEN, stream_id, "m"), (F.DATA, stream_id, END_MESSAGE, body))
        conn.acknowledge(stream_id, len(body), 0.0)
    assert sent(conn, peer) == []
    # The third message leaves the peer less than half the connection window: what was
    # consumed so far comes back in one CREDIT; no stream is below half of its own window.
    inject(conn, peer, (F.OPEN, 5, "m"), (F.DATA, 5, END_MESSAGE, body))
    assert sent(conn, peer) == [(F.CREDIT, 0, 60_000)]
    conn.acknowledge(5, len(body), 0.0)
    assert sent(conn, peer) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, WINDOW - 300), min_size=1, max_size=40))
def test_batched_credit_never_stalls_a_sender(sizes: list[int]) -> None:
    """Messages of any size up to the window go through when the receiver consumes each."""
    pair = _small_pair()
    i, r = pair.initiator, pair.responder
    i.send(Open(stream_id=1, method="m"), 0.0)
    pair.transfer(i)
    for size in sizes:
        i.send(Message(stream_id=1, body=b"m" * size), 0.0)
        got: list[Message] = []
        for _ in range(8):  # a few exchanges at most: data one way, credit the other
            got += [e for e in pair.transfer(i) if isinstance(e, Message)]
            for message in got:
                r.acknowledge(1, message.size, 0.0)
            if got:
                break
            pair.transfer(r)
        assert len(got) == 1 and len(got[0].body) == size
        pair.transfer(r)  # credit, if any, back to the sender
        assert not i.buffered(1)


def test_buffered_for_unknown_streams_and_before_the_handshake() -> None:
    pair = ConnectionPair(handshake=False)
    assert pair.initiator.buffered(1) == 0
    assert pair.initiator.active_streams == 0
    pair.handshake()
    assert pair.initiator.buffered(99) == 0


# -- flow-control violations (SPEC.md §8.5) ---------------------------------------------------


def test_data_beyond_the_stream_window() -> None:
    conn, peer = established(settings=SMALL)
    inject(conn, peer, (F.OPEN, 1, "m"), (F.DATA, 1, 0, b"x" * (WINDOW - 1)))
    with pytest.raises(FlowControlError, match="window of stream 1") as info:
        inject(conn, peer, (F.DATA, 1, 0, b"xx"))
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR
    assert_goaway(conn, peer, ErrorCode.FLOW_CONTROL_ERROR, last=1)


def test_data_beyond_the_connection_window() -> None:
    conn, peer = established(settings=SMALL)  # 4 streams fill the connection window
    inject(
        conn,
        peer,
        *[f for s in (1, 3, 5, 7) for f in ((F.OPEN, s, "m"), (F.DATA, s, 0, b"x" * WINDOW))],
    )
    with pytest.raises(FlowControlError, match="connection window"):
        inject(conn, peer, (F.OPEN, 9, "m"), (F.DATA, 9, 0, b"x"))  # refused, still counted
    assert_goaway(conn, peer, ErrorCode.FLOW_CONTROL_ERROR, last=9)


def test_connection_credit_overflow() -> None:
    conn, peer = established(peer_settings=Settings(connection_window=1 << 30))
    inject(conn, peer, (F.CREDIT, 0, (1 << 30) - 1))  # exactly 2^31 - 1
    with pytest.raises(FlowControlError, match="above 2\\^31-1"):
        inject(conn, peer, (F.CREDIT, 0, 1))
    assert_goaway(conn, peer, ErrorCode.FLOW_CONTROL_ERROR)


@pytest.mark.parametrize("opener", ["us", "them"])
def test_stream_credit_overflow(opener: str) -> None:
    conn, peer = established(
        peer_settings=Settings(stream_window=1 << 30, connection_window=1 << 30)
    )
    if opener == "us":
        conn.send(Open(stream_id=2, method="m"), 0.0)
        sid = 2
    else:
        inject(conn, peer, (F.OPEN, 1, "m"))
        sid = 1
    inject(conn, peer, (F.CREDIT, sid, (1 << 30) - 1))
    with pytest.raises(FlowControlError, match=f"stream {sid} above"):
        inject(conn, peer, (F.CREDIT, sid, 1))


# -- framing errors (SPEC.md §7.2) ------------------------------------------------------------


def test_frame_over_max_frame_is_refused_on_its_length() -> None:
    conn, peer = established(settings=Settings(max_frame=1 << 16))
    assert conn.receive_data(peer.seal(struct.pack(">I", 1 << 16)[:3]), 0.0) == []
    with pytest.raises(FrameTooLarge, match="exceeds our limit") as info:
        conn.receive_data(peer.seal(b"\x01"), 0.0)  # the fourth byte: 65537
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert_goaway(conn, peer, ErrorCode.FRAME_TOO_LARGE)


def test_frame_of_exactly_max_frame_is_buffered() -> None:
    conn, peer = established(settings=Settings(max_frame=1 << 16))
    assert conn.receive_data(peer.seal(struct.pack(">I", 1 << 16) + b"\x94"), 0.0) == []
    assert conn.state is ConnState.OPEN


def test_zero_length_frame_is_malformed() -> None:
    conn, peer = established()
    with pytest.raises(MalformedMessage, match="empty frame"):
        conn.receive_data(peer.seal(bytes(4)), 0.0)
    assert_goaway(conn, peer, ErrorCode.MALFORMED)


@pytest.mark.parametrize(
    ("plain", "error", "code"),
    [
        (b"\x00\x00\x00\x01\xc1", MalformedMessage, ErrorCode.MALFORMED),
        (b"\x00\x00\x00\x02\x91\x01", MalformedMessage, ErrorCode.MALFORMED),  # OPEN, no fields
        (b"\x00\x00\x00\x02\x91\x08", RemoteProtocolError, ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_bad_frames_are_connection_errors(
    plain: bytes, error: type[RemoteProtocolError], code: ErrorCode
) -> None:
    conn, peer = established()
    with pytest.raises(error):
        conn.receive_data(peer.seal(plain), 0.0)
    assert_goaway(conn, peer, code)


def test_frames_span_and_share_transport_messages() -> None:
    conn, peer = established()
    plain = frame_bytes(F.OPEN, 1, "m") + frame_bytes(F.PING, b"12345678")
    events = []
    for byte in plain:  # one transport message per byte
        events += conn.receive_data(peer.seal(bytes([byte])), 0.0)
    events += conn.receive_data(peer.seal(b""), 0.0)  # an empty message is fine
    assert events == [Open(stream_id=1, method="m"), Ping(opaque=b"12345678")]
