"""In-process servers over real loopback TCP, for the network tests of the reference peer.

Each server is a ``Node`` with a ``PeerServer`` in the same background trio loop; the client
reaches them through real sockets and real Noise, exactly as across machines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio

from petalproto.core import Address, Identity
from petalproto.net import Node
from reference_peer import SpanModel
from reference_peer._loop import LoopThread
from reference_peer._server import INLINE_ROWS, PeerServer


class InProcessSwarm:
    """Servers in one background loop; ``stop(i)`` kills server ``i`` abruptly."""

    def __init__(self) -> None:
        self.loop = LoopThread("test-servers")
        self.addresses: list[Address] = []
        self.servers: list[PeerServer] = []
        self._scopes: list[trio.CancelScope] = []

    def add(
        self,
        path: Path,
        start: int,
        end: int,
        *,
        model: str = "tiny",
        inline_rows: int = INLINE_ROWS,
        **span_args: Any,
    ) -> Address:
        span = SpanModel(path, start, end, device="cpu", **span_args)
        server = PeerServer(span, model, throughput=100.0, inline_rows=inline_rows)
        address, scope = self.loop.run(self._start, server)
        self.addresses.append(address)
        self.servers.append(server)
        self._scopes.append(scope)
        return address

    async def _start(self, server: PeerServer) -> tuple[Address, trio.CancelScope]:
        node = Node(Identity.from_seed(os.urandom(32)))
        server.register(node.router)
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[Node]) -> None:
            with scope:
                await node.run(task_status=task_status)

        assert self.loop.nursery is not None
        started: Node = await self.loop.nursery.start(run)
        server.pool = started.pool  # push to other servers (SPEC.md §13.9)
        return started.address, scope

    def stop(self, index: int) -> None:
        self.loop.run(self._cancel, self._scopes[index])

    @staticmethod
    async def _cancel(scope: trio.CancelScope) -> None:
        scope.cancel()
        await trio.sleep(0.05)

    def close(self) -> None:
        for scope in self._scopes:
            self.loop.run(self._cancel, scope)
        self.loop.close()
