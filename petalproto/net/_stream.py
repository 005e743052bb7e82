"""One multiplexed stream as seen by trio code (SPEC.md §8)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from petalproto.core import EndStream, ErrorCode, Message, PeerId, Reset

if TYPE_CHECKING:
    from ._peer import PeerConnection

__all__ = ["Stream", "StreamReset"]


class StreamReset(Exception):
    """The stream was reset, by the peer or because the connection ended.

    Attributes:
        code: the wire error code.
        reason: the text that came with it.
    """

    def __init__(self, code: ErrorCode, reason: str = "") -> None:
        super().__init__(f"{code.name}: {reason}" if reason else code.name)
        self.code = code
        self.reason = reason


class Stream:
    """A stream of msgpack messages in both directions.

    ``receive()`` returns the next message and raises ``trio.EndOfChannel`` after the peer
    half-closed; ``send()`` waits for the peer's credit.  The peer's credit is returned as
    each message is received here, so an unread stream makes its sender wait, never us
    buffer without bound.
    """

    def __init__(self, peer: PeerConnection, stream_id: int, method: str) -> None:
        self.peer = peer
        self.stream_id = stream_id
        self.method = method
        self._inbox_in, self._inbox = trio.open_memory_channel[Message | StreamReset](math.inf)
        self._reset: StreamReset | None = None
        self._ended_by_us = False
        self._peer_ended = False

    @property
    def peer_id(self) -> PeerId:
        return self.peer.peer_id

    # Called by the connection's reader task; never blocks (credit bounds the inbox).
    def _deliver(self, item: Message | StreamReset) -> None:
        if isinstance(item, StreamReset):
            self._reset = self._reset or item
        try:
            self._inbox_in.send_nowait(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        if isinstance(item, StreamReset) or item.end_stream:
            self._peer_ended = True
            self._inbox_in.close()

    def _deliver_end(self) -> None:
        self._peer_ended = True
        self._inbox_in.close()

    async def receive(self) -> Any:
        """The next message.

        Raises:
            trio.EndOfChannel: the peer sent END_STREAM.
            StreamReset: the stream was reset or the connection ended.
        """
        try:
            item = await self._inbox.receive()
        except trio.EndOfChannel:
            if self._reset is not None:
                raise self._reset from None
            raise
        if isinstance(item, StreamReset):
            raise item
        await self.peer._acknowledge(self.stream_id, item.size)
        return item.body

    async def send(self, body: Any, *, end: bool = False) -> None:
        """Send one message; ``end=True`` half-closes our direction with it.

        Raises:
            StreamReset: the stream was reset.
            trio.BrokenResourceError: the connection is gone.
        """
        if self._reset is not None:
            raise self._reset
        self._ended_by_us = self._ended_by_us or end
        await self.peer._send_on_stream(
            self, Message(stream_id=self.stream_id, body=body, end_stream=end)
        )

    async def end(self) -> None:
        """Half-close our direction."""
        if self._ended_by_us or self._reset is not None:
            return
        self._ended_by_us = True
        await self.peer._send_on_stream(self, EndStream(stream_id=self.stream_id))

    async def reset(self, code: ErrorCode = ErrorCode.CANCEL, reason: str = "") -> None:
        """Abandon the stream and tell the peer why."""
        if self._reset is None:
            self._reset = StreamReset(code, reason)
            self._inbox_in.close()
            await self.peer._send_event(Reset(stream_id=self.stream_id, code=code, reason=reason))

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
