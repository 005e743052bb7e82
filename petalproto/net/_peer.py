"""The trio shell around one ``Connection`` (STYLE.md §4).

One reader task feeds received bytes to the core, one timer task runs its deadlines, and a
lock keeps writes in order.  There is no protocol logic here: every decision is the core's.
Incoming streams are handed to ``handler`` in tasks of this connection's nursery.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from petalproto.core import (
    Connection,
    ConnectionClosed,
    ConnState,
    EndStream,
    ErrorCode,
    Event,
    GoAway,
    HandshakeCompleted,
    LocalProtocolError,
    Message,
    Open,
    PeerId,
    Ping,
    Pong,
    RemoteProtocolError,
    Reset,
    Settings,
)

from ._stream import Stream, StreamReset

__all__ = ["PeerConnection", "StreamHandler"]

log = logging.getLogger("petalproto.net")

#: How much we read from the socket at once: four full Noise messages.
MAX_RECV = 1 << 20
#: Seconds a write may block, once started, before the connection is given up.
WRITE_GRACE = 30.0

StreamHandler = Callable[[Stream], Awaitable[None]]


class PeerConnection:
    """An authenticated connection to one peer, carrying many streams.

    Use ``open_connection``/``serve_peers`` rather than building one directly.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        *,
        handler: StreamHandler | None = None,
        remote: tuple[str, int] | None = None,
    ) -> None:
        self._stream, self._conn = stream, conn
        self._handler = handler
        self.remote = remote
        self._send_lock = trio.StrictFIFOLock()
        self._timer = trio.CancelScope()
        self._streams: dict[int, Stream] = {}
        self._progress = trio.Event()
        self._closed = trio.Event()
        self._pings: dict[bytes, tuple[float, trio.Event]] = {}
        self._nursery: trio.Nursery | None = None
        self._early: list[Event] = []
        self.close_reason: ConnectionClosed | None = None
        self.last_used = 0.0
        #: When a stream last opened, carried a message or ended here (admission, §9.3).
        self.last_active = 0.0

    @property
    def peer_id(self) -> PeerId:
        assert self._conn.peer_id is not None
        return self._conn.peer_id

    @property
    def peer_settings(self) -> Settings:
        assert self._conn.peer_settings is not None
        return self._conn.peer_settings

    @property
    def is_open(self) -> bool:
        return self._conn.state is ConnState.OPEN and not self._closed.is_set()

    @property
    def closed(self) -> trio.Event:
        return self._closed

    @property
    def open_streams(self) -> int:
        """Streams not yet closed in both directions."""
        return len(self._streams)

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the handshake, report started, then serve until the connection ends.

        Raises:
            HandshakeFailed: (before ``started``) the peer failed authentication.
            trio.BrokenResourceError: (before ``started``) the transport broke, the peer
                closed or the handshake timed out.
        """
        try:
            self._conn.start(trio.current_time())
            await self._flush()
            with trio.move_on_at(self._deadline()):
                await self._handshake()
            if self._conn.peer_id is None:
                raise trio.BrokenResourceError("handshake did not complete")
            self.last_active = trio.current_time()
            task_status.started()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # Frames that arrived with the last handshake message (SPEC.md §6.3).
                early, self._early = self._early, []
                await self._after_input(early)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._read_loop)
        finally:
            self._shutdown()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._stream.aclose()

    async def _handshake(self) -> None:
        """Read until the peer is authenticated.  Frames that came with the last handshake
        message wait in ``_early``; a protocol error among them still ends the connection
        after the handshake, with its GOAWAY sent."""
        while self._conn.peer_id is None:
            if self._conn.state in (ConnState.CLOSED, ConnState.ERROR):
                return
            data = await self._stream.receive_some(MAX_RECV)
            try:
                events = self._conn.receive_data(data, trio.current_time())
            except RemoteProtocolError as exc:
                await self._flush()  # the GOAWAY the core queued, when keys exist
                if self._conn.peer_id is None:
                    raise
                events = [ConnectionClosed(code=exc.code, reason=exc.msg)]
            await self._flush()
            self._early.extend(events)

    async def _read_loop(self) -> None:
        while not self._closed.is_set():
            try:
                data = await self._stream.receive_some(MAX_RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            try:
                events = self._conn.receive_data(data, trio.current_time())
            except RemoteProtocolError as exc:
                log.debug("peer broke protocol: %r", exc)  # GOAWAY already queued
                events = [ConnectionClosed(code=exc.code, reason=exc.msg)]
            except LocalProtocolError:
                events = []
            await self._after_input(events)

    async def _timer_loop(self) -> None:
        while True:
            self._timer = trio.CancelScope(deadline=self._deadline())
            with self._timer:
                await trio.sleep_forever()
            await self._after_input(self._conn.handle_timer(trio.current_time()))

    def _deadline(self) -> float:
        deadline = self._conn.next_deadline()
        return math.inf if deadline is None else deadline

    async def _flush(self) -> None:
        if not self._conn.has_data_to_send:
            return  # no lock, no checkpoint: most inputs and acknowledgements queue nothing
        async with self._send_lock:
            if data := self._conn.data_to_send():
                # Bytes taken from the connection must reach the socket whole, or the frame
                # stream (and the Noise nonces) breaks for every stream on the connection:
                # a caller's cancellation (a timeout, a finished nursery) must not cut a
                # write short. A peer that reads nothing for WRITE_GRACE seconds loses it.
                with trio.move_on_after(WRITE_GRACE, shield=True) as grace:
                    try:
                        await self._stream.send_all(data)
                    except BaseException:
                        self._conn.send_failed()
                        raise
                if grace.cancelled_caught:
                    self._conn.send_failed()
                    raise trio.BrokenResourceError("the peer read nothing for too long")

    async def _after_input(self, events: list[Event]) -> None:
        self._timer.deadline = self._deadline()
        try:
            await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            events.append(ConnectionClosed(code=ErrorCode.CANCEL, reason="write failed"))
        for event in events:
            self._dispatch(event)
        self._progress.set()
        self._progress = trio.Event()
        if self._conn.state in (ConnState.CLOSED, ConnState.ERROR):
            self._shutdown()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Message | EndStream | Open):
            self.last_active = trio.current_time()
        match event:
            case Message():
                if stream := self._streams.get(event.stream_id):
                    stream._deliver(event)
                    self._maybe_forget(stream)
            case EndStream():
                if stream := self._streams.get(event.stream_id):
                    stream._deliver_end()
                    self._maybe_forget(stream)
            case Reset():
                if stream := self._streams.pop(event.stream_id, None):
                    stream._deliver(StreamReset(event.code, event.reason))
            case Open():
                self._accept(event)
            case Pong():
                if entry := self._pings.pop(event.opaque, None):
                    entry[1].set()
            case ConnectionClosed():
                self.close_reason = self.close_reason or event
            case HandshakeCompleted() | GoAway() | Ping():
                pass

    def _maybe_forget(self, stream: Stream) -> None:
        if stream._ended_by_us and stream._peer_ended:
            self._streams.pop(stream.stream_id, None)

    def _accept(self, event: Open) -> None:
        stream = Stream(self, event.stream_id, event.method)
        self._streams[event.stream_id] = stream
        if self._handler is None or self._nursery is None:
            self._nursery_soon(stream.reset, ErrorCode.UNKNOWN_METHOD, "this peer serves nothing")
            return
        self._nursery_soon(self._run_handler, stream)

    def _nursery_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    async def _run_handler(self, stream: Stream) -> None:
        assert self._handler is not None
        try:
            await self._handler(stream)
        except (StreamReset, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("handler for %s failed", stream.method)
            if self.is_open and stream.stream_id in self._streams:
                await stream.reset(ErrorCode.INTERNAL_ERROR, "handler failed")
        finally:
            self._streams.pop(stream.stream_id, None)

    def _shutdown(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._progress.set()
        reason = self.close_reason or ConnectionClosed(code=ErrorCode.CANCEL, reason="closed")
        for stream in self._streams.values():
            stream._deliver(StreamReset(reason.code, reason.reason or "connection closed"))
        self._streams.clear()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ used by Stream

    def _check_open(self) -> None:
        if self._closed.is_set():
            reason = self.close_reason
            if reason is not None and reason.by_peer and reason.code is not ErrorCode.NO_ERROR:
                # Say why, e.g. "closed by the peer: OVERLOADED (too many connections)".
                why = f" ({reason.reason})" if reason.reason else ""
                raise trio.BrokenResourceError(f"closed by the peer: {reason.code.name}{why}")
            raise trio.BrokenResourceError("connection closed")

    async def _send_event(self, event: Event) -> None:
        self._check_open()
        try:
            self._conn.send(event, trio.current_time())
        except LocalProtocolError:
            if not self.is_open:
                raise trio.BrokenResourceError("connection closed") from None
            raise
        await self._after_input([])

    async def _send_on_stream(self, stream: Stream, event: Message | EndStream) -> None:
        self.last_active = trio.current_time()
        await self._send_event(event)
        self._maybe_forget(stream)
        # Back-pressure: wait until the peer's credit let everything out (SPEC.md §8.5).
        while self._conn.buffered(event.stream_id) and not self._closed.is_set():
            await self._progress.wait()
        self._check_open()

    async def _acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self._closed.is_set():
            self._conn.acknowledge(stream_id, size, trio.current_time())
            if self._conn.has_data_to_send:  # credit is batched: usually nothing to say
                await self._after_input([])

    # ------------------------------------------------------------------ public

    async def open_stream(self, method: str) -> Stream:
        """Open a stream to call ``method`` on the peer.

        Raises:
            trio.BrokenResourceError: the connection is gone or going away.
        """
        self._check_open()
        try:
            stream_id = self._conn.next_stream_id()
            self._conn.send(Open(stream_id=stream_id, method=method), trio.current_time())
        except LocalProtocolError as exc:
            raise trio.BrokenResourceError(f"cannot open a stream: {exc}") from exc
        stream = Stream(self, stream_id, method)
        self._streams[stream_id] = stream
        self.last_used = self.last_active = trio.current_time()
        await self._after_input([])
        return stream

    async def ping(self) -> float:
        """Round-trip time of a PING, in seconds.

        Raises:
            trio.BrokenResourceError: the connection ended first.
        """
        opaque = os.urandom(8)
        done = trio.Event()
        start = trio.current_time()
        self._pings[opaque] = (start, done)
        await self._send_event(Ping(opaque=opaque))
        while not done.is_set():
            self._check_open()
            await self._progress.wait()
        return trio.current_time() - start

    async def aclose(self, reason: str = "", *, code: ErrorCode = ErrorCode.NO_ERROR) -> None:
        """Say GOAWAY (with ``code``, NO_ERROR by default) and stop; streams in flight are
        reset."""
        if not self._closed.is_set():
            try:
                self._conn.send(GoAway(code=code, reason=reason), trio.current_time())
                await self._flush()
            except (LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._shutdown()
