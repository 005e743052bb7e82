"""A pool that keeps one connection per peer and reuses it for every call."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from petalproto.core import Address, Config, Identity, PeerId

from ._peer import PeerConnection, StreamHandler
from ._rpc import call
from ._transport import connect

__all__ = ["ConnectionPool"]

log = logging.getLogger("petalproto.net")


@dataclass(slots=True)
class _Dial:
    """One dial in progress, shared by every caller that wants the same peer meanwhile: they
    all get its connection, or its error, instead of dialling again one after another (a
    hung peer would cost each of them a whole connect timeout)."""

    done: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None


class ConnectionPool:
    """One connection per peer, dialled on first use, shared by all callers.

    Connections that peers open to us can be added with ``adopt`` and are then reused for
    our calls to them too.  At most ``max_connections`` are kept; past that the least
    recently used one is closed.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        identity: Identity,
        *,
        handler: StreamHandler | None = None,
        config: Config | None = None,
        max_connections: int = 256,
        connect_timeout: float = 5.0,
    ) -> None:
        self._nursery = nursery
        self.identity = identity
        self._handler = handler
        self._config = config
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._peers: dict[PeerId, PeerConnection] = {}
        self._dialling: dict[PeerId, _Dial] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def adopt(self, peer: PeerConnection) -> None:
        """Reuse a connection the peer opened to us."""
        if peer.peer_id not in self._peers or not self._peers[peer.peer_id].is_open:
            self._peers[peer.peer_id] = peer

    async def get(self, address: Address) -> PeerConnection:
        """An open connection to ``address``, dialling if needed.

        Raises:
            OSError, HandshakeFailed, trio.TooSlowError, trio.BrokenResourceError: dialling
                failed (for a caller that waited on another's dial: the same error).
        """
        while True:
            peer = self._peers.get(address.peer_id)
            if peer is not None and peer.is_open:
                peer.last_used = trio.current_time()
                return peer
            pending = self._dialling.get(address.peer_id)
            if pending is None:
                break
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
            # Connected (loop to take it), or the dialler was cancelled: dial ourselves.
        dial = self._dialling[address.peer_id] = _Dial()
        try:
            peer = await connect(
                self._nursery,
                address,
                self.identity,
                handler=self._handler,
                config=self._config,
                connect_timeout=self.connect_timeout,
            )
        except Exception as exc:
            dial.error = exc
            raise
        finally:
            del self._dialling[address.peer_id]
            dial.done.set()
        peer.last_used = trio.current_time()
        self._peers[address.peer_id] = peer
        await self._evict()
        return peer

    async def call(self, address: Address, method: str, body: Any, *, timeout: float = 10.0) -> Any:
        """A unary call to ``address`` over the pooled connection.

        Raises:
            RpcError: the peer answered with an error.
            trio.TooSlowError: no answer in time.
            OSError, trio.BrokenResourceError, HandshakeFailed: the peer is unreachable.
        """
        with trio.fail_after(timeout):
            peer = await self.get(address)
            return await call(peer, method, body, timeout=timeout)

    async def _evict(self) -> None:
        for peer_id in [p for p, c in self._peers.items() if not c.is_open]:
            del self._peers[peer_id]
        while len(self._peers) > self.max_connections:
            oldest = min(self._peers.values(), key=lambda c: c.last_used)
            del self._peers[oldest.peer_id]
            await oldest.aclose("pool full")

    async def aclose(self) -> None:
        for peer in list(self._peers.values()):
            await peer.aclose("shutting down")
        self._peers.clear()
