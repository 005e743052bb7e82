"""A peer process's networking: listener, router, connection pool (SPEC.md §10)."""

from __future__ import annotations

import logging
from typing import Any

import trio

from petalproto.core import Address, Admission, Config, ErrorCode, Identity, Limits
from petalproto.core._events import AGENT

from ._peer import PeerConnection
from ._pool import ConnectionPool
from ._rpc import CallContext, Router, RpcError
from ._transport import limits_for, serve_peers

__all__ = ["Node"]

log = logging.getLogger("petalproto.node")


class Node:
    """Listens for peers, routes their calls, and dials out through one pool.

    Register handlers on ``router`` before ``run``.  Every node answers ``ping``
    (SPEC.md §10.3).
    """

    def __init__(
        self,
        identity: Identity,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        announce_host: str | None = None,
        announce_port: int | None = None,
        config: Config | None = None,
        max_connections: int = 512,
        limits: Limits | None = None,
    ) -> None:
        self.identity = identity
        self.host, self.port = host, port
        self.announce_host = announce_host
        #: The port to put in our address instead of the one we listen on (a proxy's).
        self.announce_port = announce_port
        self.config = config
        self.max_connections = max_connections
        #: Who may connect, and who is shed under a flood (SPEC.md §9.3).
        self.admission = Admission(limits or limits_for(max_connections))
        self.router = Router()
        self.router.unary("ping", self._handle_ping)
        self._address: Address | None = None
        self._pool: ConnectionPool | None = None

    @property
    def address(self) -> Address:
        """Our dialable address; valid once ``run`` reported started."""
        assert self._address is not None, "node not started"
        return self._address

    @property
    def pool(self) -> ConnectionPool:
        assert self._pool is not None, "node not started"
        return self._pool

    async def _handle_ping(self, ctx: CallContext, body: Any) -> Any:
        if not isinstance(body, dict):
            raise RpcError(ErrorCode.BAD_REQUEST, "ping takes a map")
        remote = ctx.peer.remote
        return {"agent": AGENT, "observed": list(remote) if remote else None}

    async def _adopt(self, peer: PeerConnection) -> None:
        self.pool.adopt(peer)

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports itself started once listening."""
        async with trio.open_nursery() as nursery:
            self._pool = ConnectionPool(
                nursery, self.identity, handler=self.router, config=self.config
            )
            listeners = await nursery.start(
                lambda task_status: serve_peers(
                    self.router,
                    self.identity,
                    self.host,
                    self.port,
                    config=self.config,
                    admission=self.admission,
                    on_connection=self._adopt,
                    task_status=task_status,
                )
            )
            port = self.announce_port or listeners[0].socket.getsockname()[1]
            host = self.announce_host or _dialable(self.host)
            self._address = Address(self.identity.peer_id, host, port)
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await self._pool.aclose()


def _dialable(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
