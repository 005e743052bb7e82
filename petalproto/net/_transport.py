"""Dialling and listening over TCP (SPEC.md §4, §6)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from petalproto.core import (
    Address,
    Config,
    Connection,
    Identity,
    RemoteProtocolError,
    Role,
)

from ._peer import PeerConnection, StreamHandler

__all__ = ["ConnectionLimiter", "connect", "open_connection", "serve_peers"]

log = logging.getLogger("petalproto.net")


async def connect(
    nursery: trio.Nursery,
    address: Address,
    identity: Identity,
    *,
    handler: StreamHandler | None = None,
    config: Config | None = None,
    connect_timeout: float = 10.0,
) -> PeerConnection:
    """Dial ``address``, authenticate it and run the connection in ``nursery``.

    Returns:
        The open connection (its tasks live in ``nursery`` until it closes).

    Raises:
        OSError: TCP connection failed.
        HandshakeFailed: the peer failed authentication (``PeerIdMismatch`` if it was
            someone else than ``address.peer_id``).
        trio.TooSlowError: no handshake within ``connect_timeout``.
        trio.BrokenResourceError: the peer closed during the handshake.
    """
    with trio.fail_after(connect_timeout):
        tcp = await trio.open_tcp_stream(address.host, address.port)
        try:
            conn = Connection(
                Role.INITIATOR,
                identity=identity,
                random_bytes=os.urandom,
                config=config,
                expected_peer=address.peer_id,
            )
            peer = PeerConnection(tcp, conn, handler=handler, remote=(address.host, address.port))
            await nursery.start(peer.run)
        except BaseException:
            with trio.CancelScope(shield=True):
                await tcp.aclose()
            raise
    return peer


@asynccontextmanager
async def open_connection(
    address: Address | str,
    identity: Identity,
    *,
    handler: StreamHandler | None = None,
    config: Config | None = None,
    connect_timeout: float = 10.0,
) -> AsyncIterator[PeerConnection]:
    """Async context manager around ``connect``; closes with GOAWAY on exit."""
    if isinstance(address, str):
        address = Address.parse(address)
    try:
        async with trio.open_nursery() as nursery:
            peer = await connect(
                nursery,
                address,
                identity,
                handler=handler,
                config=config,
                connect_timeout=connect_timeout,
            )
            try:
                yield peer
            finally:
                await peer.aclose()
    except BaseExceptionGroup as group:
        # One failure is the common case (dial or handshake); raise it bare.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


class ConnectionLimiter:
    """A hard cap on concurrent connections; over it, new ones are closed at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0


async def serve_peers(
    handler: StreamHandler,
    identity: Identity,
    host: str,
    port: int,
    *,
    config: Config | None = None,
    max_connections: int = 512,
    on_connection: Callable[[PeerConnection], Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept peers on ``host:port`` forever; ``handler`` runs once per incoming stream.

    Reports its listeners through ``task_status`` (port 0 picks a free port).
    """
    limiter = ConnectionLimiter(max_connections)
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def serve_one(tcp: trio.SocketStream) -> None:
        if limiter.active >= limiter.limit:
            limiter.refused += 1
            await tcp.aclose()
            return
        limiter.active += 1
        remote = None
        try:
            with contextlib.suppress(OSError):
                remote = tcp.socket.getpeername()[:2]
            conn = Connection(
                Role.RESPONDER, identity=identity, random_bytes=os.urandom, config=config
            )
            peer = PeerConnection(tcp, conn, handler=handler, remote=remote)
            async with trio.open_nursery() as nursery:
                try:
                    await nursery.start(peer.run)
                except (
                    RemoteProtocolError,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                    OSError,
                ) as exc:
                    log.debug("handshake from %s failed: %r", remote, exc)
                    return
                if on_connection is not None:
                    nursery.start_soon(on_connection, peer)
        except Exception:
            # One connection must never take the listener down with it.
            log.exception("connection from %s failed", remote)
        finally:
            limiter.active -= 1

    task_status.started(listeners)
    await trio.serve_listeners(serve_one, listeners)
