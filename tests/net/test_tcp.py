"""The shell over real loopback TCP."""

from __future__ import annotations

import os

import pytest
import trio

from petalproto.core import Address, Config, ErrorCode, PeerIdMismatch
from petalproto.net import ConnectionPool, Node, call, open_connection

from .conftest import make_identity


async def test_dial_ping_and_observed_address(node: Node) -> None:
    async with open_connection(node.address, make_identity()) as peer:
        assert peer.peer_id == node.identity.peer_id
        answer = await call(peer, "ping", {})
        assert answer["agent"].startswith("petalproto/")
        assert answer["observed"][0] == "127.0.0.1"


async def test_dialling_the_wrong_peer_aborts(node: Node) -> None:
    wrong = Address(make_identity().peer_id, node.address.host, node.address.port)
    with pytest.raises(PeerIdMismatch):
        async with open_connection(wrong, make_identity()):
            pass  # pragma: no cover
    # The node keeps serving.
    async with open_connection(node.address, make_identity()) as peer:
        assert (await call(peer, "ping", {}))["agent"]


async def test_pool_reuses_one_connection_per_peer(node: Node) -> None:
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(nursery, make_identity())
        first = await pool.get(node.address)
        async with trio.open_nursery() as calls:
            for _ in range(20):
                calls.start_soon(pool.call, node.address, "ping", {})
        assert await pool.get(node.address) is first
        assert len(pool) == 1
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_callers_share_a_failed_dial_instead_of_repeating_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A hung peer (accepts TCP, never answers the handshake) costs every waiting caller one
    connect timeout together, not one each in turn."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    hung = Address(make_identity().peer_id, "127.0.0.1", port)
    accepted: list[trio.SocketStream] = []
    failures: list[BaseException] = []

    async def caller(pool: ConnectionPool) -> None:
        try:
            await pool.get(hung)
        except trio.TooSlowError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_accept_silently, listener, accepted)
        pool = ConnectionPool(nursery, make_identity(), connect_timeout=5.0)
        started = trio.current_time()
        async with trio.open_nursery() as callers:
            for _ in range(5):
                callers.start_soon(caller, pool)
        assert len(failures) == 5
        assert trio.current_time() - started < 6.0  # one timeout, shared
        assert len(accepted) == 1  # one dial
        nursery.cancel_scope.cancel()
    for stream in accepted:
        await stream.aclose()
    await listener.aclose()


async def _accept_silently(
    listener: trio.SocketListener, accepted: list[trio.SocketStream]
) -> None:
    while True:
        accepted.append(await listener.accept())


async def _garbage(port: int, junk: bytes) -> None:
    with trio.move_on_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(junk)
            while await stream.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


@pytest.mark.slow
async def test_garbage_flood_does_not_stop_a_good_client(node: Node) -> None:
    identity = make_identity()
    junks = [os.urandom(n) for n in (1, 2, 31, 32, 33, 100, 4096, 70_000)]
    junks += [b"\x00\x20" + os.urandom(32), b"\xff\xff" + os.urandom(65535), b"\x00\x00"]
    async with open_connection(node.address, identity) as peer, trio.open_nursery() as flood:
        for i in range(60):
            flood.start_soon(_garbage, node.address.port, junks[i % len(junks)])
        for _ in range(30):
            assert (await call(peer, "ping", {}, timeout=5))["agent"]
            await trio.sleep(0.01)


async def test_silent_tcp_client_is_cut_at_the_handshake_timeout() -> None:
    config = Config(handshake_timeout=0.3)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(make_identity(), config=config).run)
        stream = await trio.open_tcp_stream("127.0.0.1", node.address.port)
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b""
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_connection_limit_refuses_extra_connections_as_overloaded() -> None:
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(make_identity(), max_connections=2).run)
        # The first two are fresh, so neither is shed: the third hears GOAWAY OVERLOADED
        # (SPEC.md §9.3) and a call on it says so.
        async with (
            open_connection(node.address, make_identity()),
            open_connection(node.address, make_identity()),
            open_connection(node.address, make_identity()) as third,
        ):
            with trio.fail_after(3):
                await third.closed.wait()
            assert third.close_reason is not None
            assert third.close_reason.code is ErrorCode.OVERLOADED
            with pytest.raises(trio.BrokenResourceError, match="OVERLOADED"):
                await call(third, "ping", {})
        # Once the first two are gone, new peers are welcome again.
        with trio.fail_after(3):
            while True:
                try:
                    async with open_connection(node.address, make_identity()) as peer:
                        assert await call(peer, "ping", {})
                        break
                except (trio.BrokenResourceError, OSError):
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_frames_pipelined_with_the_last_handshake_message(node: Node) -> None:
    """The initiator may send frames in the same segment as message 3 (SPEC.md §6.3)."""
    from petalproto.core import Connection, HandshakeCompleted, Message, Open, Role

    conn = Connection(Role.INITIATOR, identity=make_identity(), random_bytes=os.urandom)
    conn.start(0.0)
    tcp = await trio.open_tcp_stream(node.address.host, node.address.port)
    await tcp.send_all(conn.data_to_send())
    events: list[object] = []
    while not any(isinstance(e, HandshakeCompleted) for e in events):
        events += conn.receive_data(await tcp.receive_some(65536), 0.0)
    stream_id = conn.next_stream_id()
    conn.send(Open(stream_id=stream_id, method="ping"), 0.0)
    conn.send(Message(stream_id=stream_id, body={}, end_stream=True), 0.0)
    await tcp.send_all(conn.data_to_send())  # message 3 and the call, in one write
    with trio.fail_after(5):
        while not any(isinstance(e, Message) for e in events):
            events += conn.receive_data(await tcp.receive_some(65536), 0.0)
    reply = next(e for e in events if isinstance(e, Message))
    assert reply.body["agent"].startswith("petalproto/")
    await tcp.aclose()
