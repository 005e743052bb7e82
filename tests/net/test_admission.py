"""Admission over real loopback TCP (SPEC.md §6.7, §9.3).

Attackers bind their sockets to 127.0.1.2, another /24 than the good client's 127.0.0.1
(every 127/8 address is on ``lo``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import pytest
import trio

from petalproto.core import (
    Address,
    Connection,
    ErrorCode,
    Limits,
    RefusalReason,
    Role,
)
from petalproto.net import Node, PeerConnection, call, open_connection

from .conftest import make_identity

pytestmark = pytest.mark.slow

ATTACKER = "127.0.1.2"


async def _start(nursery: trio.Nursery, limits: Limits) -> Node:
    node: Node = await nursery.start(Node(make_identity(), limits=limits).run)
    return node


async def _silent(address: Address, held: list[trio.SocketStream], source: str) -> None:
    """A TCP connection from ``source`` that sends nothing and is kept open."""
    tcp = await trio.open_tcp_stream(address.host, address.port, local_address=source)
    held.append(tcp)


async def _authenticated(
    nursery: trio.Nursery, address: Address, source: str = ATTACKER
) -> PeerConnection:
    """A connection from ``source`` that completes its handshake, then idles."""
    tcp = await trio.open_tcp_stream(address.host, address.port, local_address=source)
    conn = Connection(
        Role.INITIATOR,
        identity=make_identity(),
        random_bytes=os.urandom,
        expected_peer=address.peer_id,
    )
    peer = PeerConnection(tcp, conn, remote=(address.host, address.port))
    await nursery.start(peer.run)
    return peer


@pytest.fixture
async def flooded() -> AsyncIterator[tuple[Node, trio.Nursery]]:
    limits = Limits(
        handshake_timeout=5.0,
        max_pending=16,
        pending_per_address=4,
        pending_per_prefix=8,
        max_established=8,
        established_per_address=2,
        established_per_prefix=4,
    )
    async with trio.open_nursery() as nursery:
        yield await _start(nursery, limits), nursery
        nursery.cancel_scope.cancel()


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (the node's tables change in its own tasks) until it holds."""
    with trio.fail_after(timeout):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


async def _settle(node: Node, accepted: int) -> None:
    """Wait until the node has ruled on ``accepted`` connections of a flood."""
    await _until(lambda: node.admission.pending + sum(node.admission.refused.values()) >= accepted)


async def test_silent_flood_from_one_address_does_not_keep_a_good_client_out(
    flooded: tuple[Node, trio.Nursery],
) -> None:
    node, _ = flooded
    held: list[trio.SocketStream] = []
    try:
        async with trio.open_nursery() as attack:
            for _ in range(200):
                attack.start_soon(_silent, node.address, held, ATTACKER)
        await _settle(node, 200)
        # The flood holds every pending slot; its further connections are refused.
        assert node.admission.pending == 16
        assert node.admission.refused[RefusalReason.OVER_SHARE] == 184
        for _ in range(10):  # new connections, each with a handshake, during the flood
            async with open_connection(node.address, make_identity(), connect_timeout=2) as peer:
                assert (await call(peer, "ping", {}, timeout=2))["agent"]
        # The first newcomer shed one of the flood; its slot then served the others.
        assert node.admission.shed == 1
    finally:
        for tcp in held:
            await tcp.aclose()


async def test_authenticated_flood_holds_only_what_others_do_not_need(
    flooded: tuple[Node, trio.Nursery],
) -> None:
    node, nursery = flooded
    async with open_connection(node.address, make_identity()) as good:
        flood = [await _authenticated(nursery, node.address) for _ in range(20)]
        await _until(lambda: sum(p.is_open for p in flood) <= 7)
        assert node.admission.established == 8
        refused = [p for p in flood if not p.is_open]
        assert len(refused) == 13
        for peer in refused:
            assert peer.close_reason is not None
            assert peer.close_reason.code is ErrorCode.OVERLOADED
        # Good newcomers from another /24 take the place of one of the flood.
        for _ in range(3):
            async with open_connection(node.address, make_identity()) as newcomer:
                assert (await call(newcomer, "ping", {}, timeout=2))["agent"]
        assert (await call(good, "ping", {}, timeout=2))["agent"]
        assert node.admission.shed >= 1
        assert node.admission.established <= 8


async def test_a_full_table_sheds_the_longest_idle_peer() -> None:
    limits = Limits(
        max_established=2,
        established_per_address=1,
        established_per_prefix=1,
        shed_idle_after=0.2,
    )
    async with trio.open_nursery() as nursery:
        node = await _start(nursery, limits)
        idle = await _authenticated(nursery, node.address, "127.0.2.1")
        busy = await _authenticated(nursery, node.address, "127.0.3.1")
        await trio.sleep(0.3)
        assert (await call(busy, "ping", {}))["agent"]
        newcomer = await _authenticated(nursery, node.address, "127.0.4.1")
        with trio.fail_after(3):
            await idle.closed.wait()
        assert idle.close_reason is not None
        assert idle.close_reason.code is ErrorCode.OVERLOADED
        assert (await call(newcomer, "ping", {}))["agent"]
        assert busy.is_open
        nursery.cancel_scope.cancel()


async def test_the_handshake_deadline_comes_from_the_limits() -> None:
    async with trio.open_nursery() as nursery:
        node = await _start(nursery, Limits(handshake_timeout=0.3))
        stream = await trio.open_tcp_stream("127.0.0.1", node.address.port)
        start = trio.current_time()
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b""
        assert trio.current_time() - start < 1.5
        await _until(lambda: node.admission.pending == 0, timeout=1)
        await stream.aclose()
        nursery.cancel_scope.cancel()
