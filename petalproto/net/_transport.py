"""Dialling and listening over TCP (SPEC.md §4, §6, §9.3)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from petalproto.core import (
    Activity,
    Address,
    Admission,
    Config,
    Connection,
    ErrorCode,
    Identity,
    Limits,
    Refused,
    RemoteProtocolError,
    Role,
)

from ._peer import PeerConnection, StreamHandler

__all__ = ["connect", "limits_for", "open_connection", "serve_peers"]

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


def limits_for(max_connections: int) -> Limits:
    """The reference limits (SPEC.md §9.3) with at most ``max_connections`` established."""
    base = Limits()
    return dataclasses.replace(
        base,
        max_established=max_connections,
        established_per_address=min(base.established_per_address, max_connections),
        established_per_prefix=min(base.established_per_prefix, max_connections),
    )


class _Listener:
    """The shell around one ``Admission``: it runs handshakes under their deadlines, and
    closes what the policy sheds or refuses (SPEC.md §9.3)."""

    def __init__(
        self,
        admission: Admission,
        handler: StreamHandler,
        identity: Identity,
        config: Config | None,
        on_connection: Callable[[PeerConnection], Awaitable[Any]] | None,
    ) -> None:
        self.admission = admission
        self._handler, self._identity, self._config = handler, identity, config
        self._on_connection = on_connection
        self._handshakes: dict[int, trio.CancelScope] = {}
        self._peers: dict[int, PeerConnection] = {}

    def _activity(self, ticket: int) -> Activity:
        peer = self._peers[ticket]
        return Activity(peer.open_streams, peer.last_active)

    async def serve_one(self, tcp: trio.SocketStream) -> None:
        remote = None
        with contextlib.suppress(OSError):
            remote = tcp.socket.getpeername()[:2]
        verdict = self.admission.admit(remote[0] if remote else None, trio.current_time())
        if isinstance(verdict, Refused):
            # No keys yet, so nothing can say why: close at once (SPEC.md §9.3).
            log.debug("refused %s before its handshake: %s", remote, verdict.reason.value)
            await tcp.aclose()
            return
        ticket = verdict.ticket
        if verdict.shed is not None:
            self._handshakes.pop(verdict.shed).cancel()
        try:
            await self._run(tcp, remote, ticket, verdict.handshake_deadline_at)
        except Exception:
            # One connection must never take the listener down with it.
            log.exception("connection from %s failed", remote)
        finally:
            self.admission.release(ticket)
            self._handshakes.pop(ticket, None)
            self._peers.pop(ticket, None)

    async def _run(
        self, tcp: trio.SocketStream, remote: Any, ticket: int, deadline_at: float
    ) -> None:
        conn = Connection(
            Role.RESPONDER, identity=self._identity, random_bytes=os.urandom, config=self._config
        )
        peer = PeerConnection(tcp, conn, handler=self._handler, remote=remote)
        async with trio.open_nursery() as nursery:
            # Shed (cancel) or out of time (deadline, SPEC.md §6.7): peer.run closes the TCP.
            scope = self._handshakes[ticket] = trio.CancelScope(deadline=deadline_at)
            try:
                with scope:
                    await nursery.start(peer.run)
            except (
                RemoteProtocolError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                OSError,
            ) as exc:
                log.debug("handshake from %s failed: %r", remote, exc)
                return
            self._handshakes.pop(ticket, None)
            if scope.cancel_called:
                log.debug("handshake from %s shed or too slow", remote)
                await peer.aclose("handshake too slow", code=ErrorCode.OVERLOADED)
                return
            verdict = self.admission.promote(ticket, trio.current_time(), self._activity)
            if isinstance(verdict, Refused):
                log.debug("refused %s: %s", remote, verdict.reason.value)
                await peer.aclose(verdict.reason.value, code=ErrorCode.OVERLOADED)
                return
            self._peers[ticket] = peer
            if verdict.shed is not None:
                victim = self._peers.pop(verdict.shed)
                log.debug("shedding %s for %s", victim.remote, remote)
                nursery.start_soon(
                    functools.partial(
                        victim.aclose, "shed for a newcomer", code=ErrorCode.OVERLOADED
                    )
                )
            if self._on_connection is not None:
                nursery.start_soon(self._on_connection, peer)


async def serve_peers(
    handler: StreamHandler,
    identity: Identity,
    host: str,
    port: int,
    *,
    config: Config | None = None,
    admission: Admission | None = None,
    max_connections: int | None = None,
    on_connection: Callable[[PeerConnection], Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept peers on ``host:port`` forever; ``handler`` runs once per incoming stream.

    Args:
        admission: the policy that admits, sheds and refuses connections (SPEC.md §9.3);
            by default one with the reference limits, or ``limits_for(max_connections)``.
        max_connections: at most this many authenticated connections (ignored with
            ``admission``).

    Reports its listeners through ``task_status`` (port 0 picks a free port).
    """
    if admission is None:
        limits = Limits() if max_connections is None else limits_for(max_connections)
        admission = Admission(limits)
    listener = _Listener(admission, handler, identity, config, on_connection)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)
    await trio.serve_listeners(listener.serve_one, listeners)
