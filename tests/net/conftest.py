from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import pytest
import trio
import trio.testing

from petalproto.core import Config, Connection, Identity, Role
from petalproto.net import Node, PeerConnection, StreamHandler


def make_identity() -> Identity:
    return Identity.from_seed(os.urandom(32))


async def start_pair(
    nursery: trio.Nursery,
    handler: StreamHandler | None = None,
    *,
    config: Config | None = None,
) -> tuple[PeerConnection, PeerConnection]:
    """Two PeerConnections over an in-memory stream pair, handshake done."""
    left, right = trio.testing.memory_stream_pair()
    a, b = make_identity(), make_identity()
    client = PeerConnection(
        left,
        Connection(
            Role.INITIATOR,
            identity=a,
            random_bytes=os.urandom,
            config=config,
            expected_peer=b.peer_id,
        ),
    )
    server = PeerConnection(
        right,
        Connection(Role.RESPONDER, identity=b, random_bytes=os.urandom, config=config),
        handler=handler,
    )
    async with trio.open_nursery() as both:
        both.start_soon(nursery.start, server.run)
        both.start_soon(nursery.start, client.run)
    return client, server


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    async with trio.open_nursery() as nursery:
        n: Node = await nursery.start(Node(make_identity()).run)
        yield n
        nursery.cancel_scope.cancel()


MakeIdentity = Callable[[], Identity]
