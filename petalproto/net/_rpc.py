"""Calls over streams (SPEC.md §10).

A *unary* call opens a stream named after its method, sends one request message with
END_STREAM and receives one response message with END_STREAM.  A *streaming* call keeps
the stream for many messages in both directions.  Failures travel as RESET with an error
code; ``RpcError`` carries them to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from petalproto.core import ErrorCode, LocalProtocolError, PeerId

from ._peer import PeerConnection
from ._stream import Stream, StreamReset

__all__ = ["CallContext", "Router", "RpcError", "call"]

log = logging.getLogger("petalproto.rpc")


class RpcError(Exception):
    """A call failed with a wire error code.

    Attributes:
        code: the error code (SPEC.md §11).
        reason: text from the peer.
    """

    def __init__(self, code: ErrorCode, reason: str = "") -> None:
        super().__init__(f"{code.name}: {reason}" if reason else code.name)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling, for handlers."""

    peer: PeerConnection
    method: str

    @property
    def peer_id(self) -> PeerId:
        return self.peer.peer_id


UnaryHandler = Callable[[CallContext, Any], Awaitable[Any]]
StreamingHandler = Callable[[CallContext, Stream], Awaitable[None]]


async def call(peer: PeerConnection, method: str, body: Any, *, timeout: float = 10.0) -> Any:
    """Make a unary call.

    Raises:
        RpcError: the peer answered with an error, or broke off the call.
        trio.TooSlowError: no answer within ``timeout``.
        trio.BrokenResourceError: the connection is gone.
    """
    with trio.fail_after(timeout):
        stream = await peer.open_stream(method)
        try:
            await _send_or_reset(stream, body)
            response = await stream.receive()
        except StreamReset as exc:
            raise RpcError(exc.code, exc.reason) from None
        except trio.EndOfChannel:
            raise RpcError(ErrorCode.PROTOCOL_ERROR, "stream ended without a response") from None
        except BaseException:
            if peer.is_open:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.reset(ErrorCode.CANCEL, "caller gave up")
            raise
    return response


class Router:
    """Dispatches incoming streams to handlers by method name."""

    def __init__(self) -> None:
        self._unary: dict[str, UnaryHandler] = {}
        self._streaming: dict[str, StreamingHandler] = {}

    def unary(self, method: str, handler: UnaryHandler) -> None:
        self._unary[method] = handler

    def streaming(self, method: str, handler: StreamingHandler) -> None:
        self._streaming[method] = handler

    @property
    def methods(self) -> list[str]:
        return sorted([*self._unary, *self._streaming])

    async def __call__(self, stream: Stream) -> None:
        ctx = CallContext(stream.peer, stream.method)
        try:
            if (streaming := self._streaming.get(stream.method)) is not None:
                await streaming(ctx, stream)
            elif (unary := self._unary.get(stream.method)) is not None:
                await self._serve_unary(ctx, stream, unary)
            else:
                await stream.reset(ErrorCode.UNKNOWN_METHOD, f"unknown method {stream.method!r}")
        except RpcError as exc:
            await stream.reset(exc.code, exc.reason[:200])

    async def _serve_unary(self, ctx: CallContext, stream: Stream, handler: UnaryHandler) -> None:
        try:
            request = await stream.receive()
        except trio.EndOfChannel:
            raise RpcError(ErrorCode.BAD_REQUEST, "no request message") from None
        response = await handler(ctx, request)
        await _send_or_reset(stream, response)


async def _send_or_reset(stream: Stream, body: Any) -> None:
    """Send the one message of a unary call's direction, with END_STREAM.

    A message over the receiver's ``stream_window`` could never be completed, so no part of
    it is sent: the stream is reset with MESSAGE_TOO_LARGE instead (SPEC.md §8.4).

    Raises:
        RpcError: MESSAGE_TOO_LARGE, after the reset.
    """
    try:
        await stream.send(body, end=True)
    except LocalProtocolError as exc:
        if exc.code is not ErrorCode.MESSAGE_TOO_LARGE:
            raise
        await stream.reset(ErrorCode.MESSAGE_TOO_LARGE, exc.msg[:200])
        raise RpcError(ErrorCode.MESSAGE_TOO_LARGE, exc.msg) from None
