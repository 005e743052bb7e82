"""Stream multiplexing and flow control (SPEC.md §8, §9).

Theory of operation
-------------------
Once the handshake is done, both sides exchange frames (see ``_frames``).  A stream is
opened by an OPEN frame and carries application messages in DATA frames, each message cut
into chunks; the chunk that ends a message has the END_MESSAGE flag, and END_STREAM
half-closes the sender's direction.  A stream is gone once both directions have ended or
either side sent RESET.

Stream ids: the dialer (Noise initiator) uses odd ids, the listener even ids, each strictly
increasing; 0 names the connection itself in CREDIT frames.  An id above the highest its
owner has opened is *idle*; any frame other than OPEN on an idle id is a connection error.
Frames on ids that were used and are gone are ignored, but their DATA still counts against
the connection window.

Flow control is credit in bytes of DATA chunks, per stream and per connection.  Each side
grants the other ``stream_window`` per new stream and ``connection_window`` in all (its
Settings); CREDIT frames grant more.  A receiver returns credit only for data its
application has consumed (``acknowledge``), so at any time

    bytes received - bytes acknowledged ≤ window

which is the bound on what a peer can make us buffer.  With ``batch_credit`` (the default)
consumed credit is held back while the peer still has at least half of a window, and granted
in one CREDIT once it has less, checked both when data arrives and when it is consumed (as
HTTP/2 implementations do with WINDOW_UPDATE).  Small request/reply exchanges then cost no
CREDIT frames at all: no extra packet, no wake-up of the peer.  It cannot deadlock: a sender
stalls only with less than half a window left, and then everything consumed is granted.
A message can be at most ``stream_window`` bytes long.  A sender queues chunks beyond its
credit here; the shell applies back-pressure by watching ``buffered()``.

Invariants: ``_streams`` holds exactly the live streams, and ``_their_active`` counts those
the peer opened (so that max_streams costs O(1) per OPEN); every stream has ``our_open`` or
``their_open`` or queued output; ``out`` holds whole frames, a DATA frame as two pieces, and
no CREDIT of 0.  This module never raises for a peer's misbehaviour on a single stream: it
resets that stream.  Connection errors raise RemoteProtocolError.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._errors import (
    ErrorCode,
    FlowControlError,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
)
from ._events import EndStream, Event, GoAway, Message, Open, Ping, Pong, Reset, Settings
from ._frames import DataFlags, FrameType, encode_data_frame, encode_frame, to_error_code
from ._msgpack import decode_strict, encode_pieces

__all__ = ["DATA_CHUNK", "Multiplexer"]

#: Largest chunk per DATA frame: a frame then fits one Noise transport message
#: (65535 - 16-byte tag - 4-byte length - up to 13 bytes of frame header), SPEC.md §8.4.
DATA_CHUNK = 65_488
_MAX_CREDIT = (1 << 31) - 1


@dataclass(slots=True)
class _Stream:
    stream_id: int
    our_open: bool = True
    their_open: bool = True
    send_credit: int = 0
    recv_left: int = 0
    held: int = 0  # consumed but not yet granted back (batch_credit)
    # Chunks of the message being received, kept as they came and joined once at its end.
    partial: list[bytes | memoryview] = field(default_factory=list)
    partial_len: int = 0
    queue: deque[tuple[memoryview, bool, bool]] = field(default_factory=deque)
    queued: int = 0
    end_queued: bool = False


class Multiplexer:
    """The stream layer of one connection; fed decoded frames, emits frame bytes."""

    def __init__(
        self, *, initiator: bool, ours: Settings, theirs: Settings, batch_credit: bool = True
    ) -> None:
        self.ours, self.theirs = ours, theirs
        self.batch_credit = batch_credit
        self.out: list[bytes | memoryview] = []
        self._streams: dict[int, _Stream] = {}
        self._our_parity = 1 if initiator else 0
        self._next_id = 1 if initiator else 2
        self._their_highest = 0
        self._their_active = 0  # live streams the peer opened, for max_streams
        self._send_conn_credit = theirs.connection_window
        self._recv_conn_left = ours.connection_window
        self._conn_held = 0
        self.goaway_sent: int | None = None  # last stream id we promised to serve
        self.goaway_received: int | None = None
        self._handlers: dict[FrameType, Callable[..., list[Event]]] = {
            FrameType.OPEN: self._handle_open,
            FrameType.DATA: self._handle_data,
            FrameType.CREDIT: self._handle_credit,
            FrameType.RESET: self._handle_reset,
            FrameType.PING: self._handle_ping,
            FrameType.PONG: self._handle_pong,
            FrameType.GOAWAY: self._handle_goaway,
        }

    # ------------------------------------------------------------------ queries

    @property
    def active(self) -> int:
        return len(self._streams)

    def buffered(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` waiting for credit (0 for unknown streams)."""
        stream = self._streams.get(stream_id)
        return stream.queued if stream else 0

    def next_stream_id(self) -> int:
        return self._next_id

    # ------------------------------------------------------------------ local input

    def send(self, event: Event) -> None:
        """Queue ``event`` for the wire. Raises: LocalProtocolError."""
        match event:
            case Open():
                self._send_open(event)
            case Message():
                self._send_message(event)
            case EndStream():
                self._queue(self._our_stream(event.stream_id), memoryview(b""), False, True)
            case Reset():
                self._send_reset(event.stream_id, event.code, event.reason)
            case Ping():
                self.out.append(encode_frame(FrameType.PING, event.opaque))
            case Pong():
                self.out.append(encode_frame(FrameType.PONG, event.opaque))
            case _:
                raise LocalProtocolError(f"cannot send {type(event).__name__} on a stream")

    def _send_open(self, event: Open) -> None:
        # The connection refuses Open once either side sent GOAWAY (it is CLOSING then).
        if event.stream_id != self._next_id:
            raise LocalProtocolError(f"next stream id is {self._next_id}, not {event.stream_id}")
        self._next_id += 2
        self._streams[event.stream_id] = _Stream(
            event.stream_id,
            send_credit=self.theirs.stream_window,
            recv_left=self.ours.stream_window,
        )
        self.out.append(encode_frame(FrameType.OPEN, event.stream_id, event.method))

    def _our_stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None or stream.end_queued:
            raise LocalProtocolError(f"stream {stream_id} is not open for sending")
        return stream

    def _send_message(self, event: Message) -> None:
        stream = self._our_stream(event.stream_id)
        pieces = encode_pieces(event.body)  # large byte strings are not copied
        size = sum(len(piece) for piece in pieces)
        if size > self.theirs.stream_window:
            raise LocalProtocolError(
                f"message of {size} bytes exceeds the peer's limit of {self.theirs.stream_window}",
                code=ErrorCode.MESSAGE_TOO_LARGE,
            )
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            stream.queue.append((memoryview(piece), i == last, event.end_stream and i == last))
            stream.queued += len(piece)
        stream.end_queued = event.end_stream
        self._pump(stream)

    def _queue(self, stream: _Stream, data: memoryview, whole: bool, end: bool) -> None:
        stream.queue.append((data, whole, end))
        stream.queued += len(data)
        stream.end_queued = end
        self._pump(stream)

    def _pump(self, stream: _Stream) -> None:
        """Send queued data of ``stream`` as far as credit allows.

        One DATA frame takes up to ``DATA_CHUNK`` bytes from consecutive queue items of the
        same message (a message may be queued in pieces, ``encode_pieces``), and ends
        where the message or the stream ends.
        """
        while stream.queue:
            budget = min(DATA_CHUNK, stream.send_credit, self._send_conn_credit)
            parts: list[bytes | memoryview] = []
            size = flags = 0
            # Every message's last piece ends it, so the queue never runs dry in here.
            while True:
                data, whole, end = stream.queue[0]
                take = min(len(data), budget - size)
                if take < len(data):
                    if take:
                        parts.append(data[:take])
                        size += take
                        stream.queue[0] = (data[take:], whole, end)
                    break
                stream.queue.popleft()
                parts.append(data)
                size += take
                flags = (DataFlags.END_MESSAGE if whole else 0) | (
                    DataFlags.END_STREAM if end else 0
                )
                if flags:
                    break
            if not parts:
                return  # no credit for the next byte
            self.out.extend(encode_data_frame(stream.stream_id, flags, parts))
            stream.send_credit -= size
            self._send_conn_credit -= size
            stream.queued -= size
            if flags & DataFlags.END_STREAM:
                stream.our_open = False
        self._maybe_forget(stream)

    def _send_reset(self, stream_id: int, code: ErrorCode, reason: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        self._forget(stream)
        self._drop_partial(stream)
        self.out.append(encode_frame(FrameType.RESET, stream_id, int(code), reason))

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The application consumed ``size`` bytes of a received message: grant them again
        (at once, or with ``batch_credit`` once the peer's credit runs below half a window).

        Raises:
            LocalProtocolError: ``size`` is more than the peer sent and was not granted
                back yet; granting it would lift the peer's credit above our window.
        """
        if size <= 0:
            return
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.their_open:
            stream = None  # the peer sends nothing more on it: no stream credit to give
        conn_outstanding = self.ours.connection_window - self._recv_conn_left - self._conn_held
        if size > conn_outstanding or (
            stream is not None and stream.recv_left + stream.held + size > self.ours.stream_window
        ):
            raise LocalProtocolError(f"acknowledging {size} bytes that were not received")
        self._conn_held += size
        self._grant_connection_held()
        if stream is not None:
            stream.held += size
            self._grant_stream_held(stream)

    def _grant_connection_held(self) -> None:
        low = self._recv_conn_left < self.ours.connection_window // 2
        if self._conn_held and (low or not self.batch_credit):
            size, self._conn_held = self._conn_held, 0
            self._grant_connection(size)

    def _grant_stream_held(self, stream: _Stream) -> None:
        low = stream.recv_left < self.ours.stream_window // 2
        if stream.held and (low or not self.batch_credit):
            size, stream.held = stream.held, 0
            stream.recv_left += size
            self.out.append(encode_frame(FrameType.CREDIT, stream.stream_id, size))

    def _grant_connection(self, size: int) -> None:
        if size:  # an empty DATA frame used no credit, and CREDIT 0 would be malformed
            self._recv_conn_left += size
            self.out.append(encode_frame(FrameType.CREDIT, 0, size))

    def go_away(self, code: ErrorCode, reason: str) -> None:
        self.goaway_sent = self._their_highest
        self.out.append(encode_frame(FrameType.GOAWAY, self._their_highest, int(code), reason))

    # ------------------------------------------------------------------ remote input

    def handle_frame(self, frame: tuple[Any, ...]) -> list[Event]:
        """Process one decoded frame. Raises: RemoteProtocolError on connection errors."""
        return self._handlers[frame[0]](*frame[1:])

    def _idle(self, stream_id: int) -> bool:
        if stream_id % 2 == self._our_parity:
            return stream_id >= self._next_id
        return stream_id > self._their_highest

    def _live(self, stream_id: int) -> _Stream | None:
        stream = self._streams.get(stream_id)
        if stream is None and self._idle(stream_id):
            raise RemoteProtocolError(f"frame on idle stream {stream_id}")
        return stream

    def _handle_open(self, stream_id: int, method: str) -> list[Event]:
        if stream_id % 2 == self._our_parity or stream_id <= self._their_highest:
            raise RemoteProtocolError(f"stream id {stream_id} is not the peer's to open")
        self._their_highest = stream_id
        if self.goaway_sent is not None or self._their_active >= self.ours.max_streams:
            self.out.append(
                encode_frame(FrameType.RESET, stream_id, int(ErrorCode.REFUSED_STREAM), "")
            )
            return []
        self._streams[stream_id] = _Stream(
            stream_id, send_credit=self.theirs.stream_window, recv_left=self.ours.stream_window
        )
        self._their_active += 1
        return [Open(stream_id=stream_id, method=method)]

    def _handle_data(self, stream_id: int, flags: int, chunk: bytes | memoryview) -> list[Event]:
        n = len(chunk)
        if n > self._recv_conn_left:
            raise FlowControlError("DATA beyond the connection window")
        self._recv_conn_left -= n
        self._grant_connection_held()
        stream = self._live(stream_id)
        if stream is None:
            self._grant_connection(n)  # a stream we already forgot: hand the credit back at once
            return []
        if not stream.their_open:
            # SPEC.md §8.3: discarded whether or not we have answered yet, so the call's
            # outcome never depends on when we read it; its credit comes back at once.
            self._grant_connection(n)
            return []
        if n > stream.recv_left:
            raise FlowControlError(f"DATA beyond the window of stream {stream_id}")
        stream.recv_left -= n
        self._grant_stream_held(stream)
        if n:
            stream.partial.append(chunk)
            stream.partial_len += n
        events: list[Event] = []
        if flags & DataFlags.END_MESSAGE:
            size, parts = stream.partial_len, stream.partial
            try:
                body = decode_strict(parts[0] if len(parts) == 1 else b"".join(parts))
            except MalformedMessage as exc:
                return self._reset_for(stream, ErrorCode.MALFORMED, exc.msg[:200])
            stream.partial, stream.partial_len = [], 0
            events.append(
                Message(
                    stream_id=stream_id,
                    body=body,
                    size=size,
                    end_stream=bool(flags & DataFlags.END_STREAM),
                )
            )
        if flags & DataFlags.END_STREAM:
            if stream.partial:
                return self._reset_for(stream, ErrorCode.PROTOCOL_ERROR, "END_STREAM mid-message")
            stream.their_open = False
            if not events:
                events.append(EndStream(stream_id=stream_id))
            self._maybe_forget(stream)
        return events

    def _reset_for(self, stream: _Stream, code: ErrorCode, reason: str) -> list[Event]:
        """A stream error: reset the stream, tell the application."""
        self._send_reset(stream.stream_id, code, reason)
        return [Reset(stream_id=stream.stream_id, code=code, reason=reason)]

    def _drop_partial(self, stream: _Stream) -> None:
        if stream.partial:
            self._grant_connection(stream.partial_len)
            stream.partial, stream.partial_len = [], 0

    def _handle_credit(self, stream_id: int, increment: int) -> list[Event]:
        if stream_id == 0:
            if self._send_conn_credit + increment > _MAX_CREDIT:
                raise FlowControlError("connection credit above 2^31-1")
            self._send_conn_credit += increment
            for each in list(self._streams.values()):
                self._pump(each)
            return []
        stream = self._live(stream_id)
        if stream is not None:
            if stream.send_credit + increment > _MAX_CREDIT:
                raise FlowControlError(f"credit of stream {stream_id} above 2^31-1")
            stream.send_credit += increment
            self._pump(stream)
        return []

    def _handle_reset(self, stream_id: int, code: int, reason: str) -> list[Event]:
        stream = self._live(stream_id)
        if stream is None:
            return []
        self._forget(stream)
        self._drop_partial(stream)
        return [Reset(stream_id=stream_id, code=to_error_code(code), reason=reason)]

    def _handle_ping(self, opaque: bytes) -> list[Event]:
        self.out.append(encode_frame(FrameType.PONG, opaque))
        return [Ping(opaque=opaque)]

    def _handle_pong(self, opaque: bytes) -> list[Event]:
        return [Pong(opaque=opaque)]

    def _handle_goaway(self, last_stream_id: int, code: int, reason: str) -> list[Event]:
        self.goaway_received = last_stream_id
        events: list[Event] = [
            GoAway(last_stream_id=last_stream_id, code=to_error_code(code), reason=reason)
        ]
        # Our streams above last_stream_id were never served: report them refused.
        for stream_id in sorted(self._streams):
            if stream_id % 2 == self._our_parity and stream_id > last_stream_id:
                stream = self._streams[stream_id]
                self._forget(stream)
                self._drop_partial(stream)
                events.append(
                    Reset(
                        stream_id=stream_id,
                        code=ErrorCode.REFUSED_STREAM,
                        reason="refused by GOAWAY",
                    )
                )
        return events

    def _maybe_forget(self, stream: _Stream) -> None:
        if not stream.our_open and not stream.their_open and not stream.queue:
            self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        del self._streams[stream.stream_id]
        if stream.stream_id % 2 != self._our_parity:
            self._their_active -= 1
