"""The delay proxy over real loopback TCP: delay, jitter, bandwidth, stalls, EOF,
backpressure, and a Noise connection through it.

Timed assertions use generous bounds (a delay is at least D and well under D + 50 ms), since
the machine may be busy; the measured figures are printed (``pytest -s``).
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.lowlevel

from petalproto.net import Node, call, open_connection
from petalproto.testing import DelayProxy, ProxyThread

from .conftest import make_identity

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def _serve(nursery: trio.Nursery, handler: Handler) -> int:
    """Serve ``handler`` on 127.0.0.1; its port."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass


async def _round_trips(port: int, count: int) -> float:
    """Seconds per one-byte round trip to an echo server on ``port``."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"x")  # the first connects the proxy's far side too
        await stream.receive_some(1)
        started = trio.current_time()
        for _ in range(count):
            await stream.send_all(b"x")
            await stream.receive_some(1)
        return (trio.current_time() - started) / count


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        yield await _serve(nursery, _echo)
        nursery.cancel_scope.cancel()


@pytest.mark.slow
@pytest.mark.parametrize("delay_ms", [0.0, 20.0])
async def test_one_way_delay_and_round_trip(delay_ms: float) -> None:
    arrivals: list[float] = []
    got = trio.Event()

    async def note(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                arrivals.extend([trio.current_time()] * len(data))
                if len(arrivals) >= 5:
                    got.set()
                await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, note)
        async with (
            DelayProxy("127.0.0.1", port, delay_ms=delay_ms) as proxy,
            await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream,
        ):
            sent: list[float] = []
            trips: list[float] = []
            for _ in range(5):
                sent.append(trio.current_time())
                await stream.send_all(b"x")
                await stream.receive_some(1)
                trips.append(trio.current_time() - sent[-1])
            await got.wait()
        nursery.cancel_scope.cancel()
    one_way = [(a - s) * 1000 for a, s in zip(arrivals, sent, strict=True)]
    round_trip = [t * 1000 for t in trips]
    print(
        f"delay {delay_ms} ms: one way {min(one_way):.3f}..{max(one_way):.3f} ms, "
        f"round trip {min(round_trip):.3f}..{max(round_trip):.3f} ms"
    )
    # The first exchange also dials the target; the rest are the link's own.
    assert all(delay_ms <= d < delay_ms + 50 for d in one_way)
    assert all(2 * delay_ms <= t < 2 * delay_ms + 50 for t in round_trip)
    assert max(round_trip[1:]) < 2 * delay_ms + 5


@pytest.mark.slow
async def test_zero_delay_overhead_per_hop(echo_port: int) -> None:
    count = 300
    direct = await _round_trips(echo_port, count)
    async with DelayProxy("127.0.0.1", echo_port) as proxy:
        proxied = await _round_trips(proxy.port, count)
    # One round trip crosses the proxy twice.
    per_hop_ms = (proxied - direct) / 2 * 1000
    print(
        f"round trip direct {direct * 1e3:.3f} ms, proxied {proxied * 1e3:.3f} ms, "
        f"overhead {per_hop_ms:.3f} ms per hop"
    )
    assert per_hop_ms < 2.0


@pytest.mark.slow
async def test_bytes_arrive_intact_and_in_order_under_jitter(echo_port: int) -> None:
    payload = os.urandom(300_000)
    async with (
        DelayProxy("127.0.0.1", echo_port, delay_ms=2, jitter_ms=2, seed=1) as proxy,
        await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream,
    ):
        received = bytearray()

        async def send() -> None:
            for at in range(0, len(payload), 1000):  # many small chunks, each jittered
                await stream.send_all(payload[at : at + 1000])
                await trio.lowlevel.checkpoint()
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while data := await stream.receive_some():
                received += data
    assert bytes(received) == payload  # the echo's EOF came back after every byte


@pytest.mark.slow
async def test_bandwidth_cap_slows_a_transfer() -> None:
    size, rate = 200_000, 1_000_000  # 0.2 s at 1 MB/s
    done = trio.Event()
    total = 0

    async def sink(stream: trio.SocketStream) -> None:
        nonlocal total
        async with stream:
            while data := await stream.receive_some():
                total += len(data)
            done.set()

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, sink)
        async with DelayProxy("127.0.0.1", port, bandwidth_bps=rate) as proxy:
            started = trio.current_time()
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
                await stream.send_all(os.urandom(size))
                await stream.send_eof()
                await done.wait()
            elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    print(f"{size} bytes at {rate} B/s took {elapsed * 1000:.1f} ms")
    assert total == size
    assert size / rate <= elapsed < size / rate + 0.1


@pytest.mark.slow
async def test_stall_holds_bytes_until_resume(echo_port: int) -> None:
    async with (
        DelayProxy("127.0.0.1", echo_port) as proxy,
        await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream,
    ):
        await stream.send_all(b"a")
        assert await stream.receive_some() == b"a"
        proxy.stall()
        await stream.send_all(b"bc")
        with trio.move_on_after(0.2) as held:
            await stream.receive_some()
        assert held.cancelled_caught  # nothing came back, and the link is still open
        assert proxy.connections == 1
        proxy.resume()
        received = b""
        with trio.fail_after(2):
            while received != b"bc":
                received += await stream.receive_some()


@pytest.mark.slow
async def test_close_all_drops_connections(echo_port: int) -> None:
    async with (
        DelayProxy("127.0.0.1", echo_port) as proxy,
        await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream,
    ):
        await stream.send_all(b"a")
        assert await stream.receive_some() == b"a"
        proxy.close_all()
        with trio.fail_after(2):
            assert await stream.receive_some() == b""
        # New connections are still accepted.
        assert await _round_trips(proxy.port, 1) < 1


@pytest.mark.slow
async def test_eof_propagates_each_way_on_its_own() -> None:
    async def half(stream: trio.SocketStream) -> None:
        async with stream:
            got = b""
            while data := await stream.receive_some():
                got += data
            # The client's EOF reached us; we can still answer before closing.
            await stream.send_all(b"saw " + got)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, half)
        async with (
            DelayProxy("127.0.0.1", port, delay_ms=5) as proxy,
            await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream,
        ):
            await stream.send_all(b"hello")
            await stream.send_eof()
            answer = b""
            with trio.fail_after(2):
                while data := await stream.receive_some():
                    answer += data
        nursery.cancel_scope.cancel()
    assert answer == b"saw hello"


@pytest.mark.slow
async def test_a_receiver_that_does_not_read_blocks_the_sender() -> None:
    stop = trio.Event()

    async def idle(stream: trio.SocketStream) -> None:
        async with stream:
            await stop.wait()

    limit = 256 * 1024
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, idle)
        proxy = DelayProxy("127.0.0.1", port, max_queued=limit)
        await nursery.start(proxy.run)
        sent = 0
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
            with trio.move_on_after(1):
                chunk = bytes(65536)
                while True:
                    await stream.send_all(chunk)
                    sent += len(chunk)
            stop.set()
        nursery.cancel_scope.cancel()
    # What was sent sits in the proxy's queue (at most the limit and one read) and in the
    # kernel's socket buffers (a few MiB at most on loopback), never without bound.
    print(f"sender blocked after {sent / 2**20:.1f} MiB")
    assert sent < limit + 65536 + 64 * 2**20


@pytest.mark.slow
async def test_noise_connection_through_the_proxy(node: Node) -> None:
    async with DelayProxy(node.address.host, node.address.port, delay_ms=10) as proxy:
        through = node.address.__class__(node.identity.peer_id, "127.0.0.1", proxy.port)
        started = trio.current_time()
        async with open_connection(through, make_identity()) as peer:
            answer = await call(peer, "ping", {})
        elapsed = trio.current_time() - started
    assert answer["agent"].startswith("petalproto/")
    assert elapsed >= 0.04  # the handshake and the call cross the link at least twice each


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.slow
def test_proxy_thread_from_sync_code() -> None:
    listener, thread = _echo_server()
    with listener, ProxyThread() as proxies:
        port = proxies.add("127.0.0.1", listener.getsockname()[1], delay_ms=20)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            started = time.perf_counter()
            conn.sendall(b"x")
            assert conn.recv(1) == b"x"
            trip = time.perf_counter() - started
            proxies.stall(port)
            conn.sendall(b"y")
            conn.settimeout(0.2)
            with pytest.raises(TimeoutError):
                conn.recv(1)
            proxies.resume(port)
            conn.settimeout(2)
            assert conn.recv(1) == b"y"
    print(f"round trip through a 20 ms proxy thread: {trip * 1000:.1f} ms")
    assert 0.04 <= trip < 0.09
    thread.join(timeout=2)


@pytest.mark.slow
async def test_a_node_behind_a_proxy_announces_the_proxys_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        listen = probe.getsockname()[1]
    async with (
        DelayProxy("127.0.0.1", listen, delay_ms=5) as proxy,
        trio.open_nursery() as nursery,
    ):
        node: Node = await nursery.start(
            Node(make_identity(), port=listen, announce_port=proxy.port).run
        )
        assert node.address.port == proxy.port
        async with open_connection(node.address, make_identity()) as peer:
            assert proxy.connections == 1
            assert (await call(peer, "ping", {}))["agent"].startswith("petalproto/")
        nursery.cancel_scope.cancel()
