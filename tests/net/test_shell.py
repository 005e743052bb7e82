"""The trio shell over in-memory streams, with virtual time."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from petalproto.core import Config, ErrorCode, Settings
from petalproto.net import CallContext, Router, RpcError, Stream, StreamReset, call

from .conftest import start_pair


def echo_router() -> Router:
    router = Router()

    async def echo(ctx: CallContext, body: object) -> object:
        return {"echo": body}

    async def fail(ctx: CallContext, body: object) -> object:
        raise RpcError(ErrorCode.BAD_REQUEST, "no")

    async def crash(ctx: CallContext, body: object) -> object:
        raise RuntimeError("handler bug")

    async def count(ctx: CallContext, stream: Stream) -> None:
        n = 0
        async for _ in stream:
            n += 1
        await stream.send({"n": n}, end=True)

    router.unary("echo", echo)
    router.unary("fail", fail)
    router.unary("crash", crash)
    router.streaming("count", count)
    return router


async def test_unary_calls_and_errors() -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await start_pair(nursery, echo_router())
        assert await call(client, "echo", {"a": 1}) == {"echo": {"a": 1}}
        with pytest.raises(RpcError) as info:
            await call(client, "missing", {})
        assert info.value.code is ErrorCode.UNKNOWN_METHOD
        with pytest.raises(RpcError) as info:
            await call(client, "fail", {})
        assert info.value.code is ErrorCode.BAD_REQUEST
        with pytest.raises(RpcError) as info:
            await call(client, "crash", {})
        assert info.value.code is ErrorCode.INTERNAL_ERROR
        # The connection survives every failed call.
        assert await call(client, "echo", 7) == {"echo": 7}
        nursery.cancel_scope.cancel()


async def test_streaming_call_counts_messages() -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await start_pair(nursery, echo_router())
        stream = await client.open_stream("count")
        for i in range(100):
            await stream.send({"i": i})
        await stream.end()
        assert await stream.receive() == {"n": 100}
        with pytest.raises(trio.EndOfChannel):
            await stream.receive()
        nursery.cancel_scope.cancel()


async def test_sender_waits_for_credit_of_an_unread_stream() -> None:
    settings = Settings(stream_window=1 << 16, connection_window=1 << 17)
    opened: list[Stream] = []
    release = trio.Event()

    async def hold(ctx: CallContext, stream: Stream) -> None:
        opened.append(stream)
        await release.wait()
        async for _ in stream:
            pass

    router = Router()
    router.streaming("hold", hold)
    async with trio.open_nursery() as nursery:
        client, _ = await start_pair(nursery, router, config=Config(settings=settings))
        stream = await client.open_stream("hold")
        blob = b"x" * 40_000
        await stream.send(blob)  # fits the 64 KiB window
        with trio.move_on_after(1) as scope:
            await stream.send(blob)  # does not: waits for credit
        assert scope.cancelled_caught
        release.set()
        with trio.fail_after(1):
            await stream.send(blob)
        nursery.cancel_scope.cancel()


async def test_silent_peer_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    config = Config(keepalive_interval=15, idle_timeout=45)
    async with trio.open_nursery() as nursery:
        client, server = await start_pair(nursery, echo_router(), config=config)
        start = trio.current_time()
        nursery.start_soon(_stall, server)
        await client.closed.wait()
        assert client.close_reason is not None
        assert client.close_reason.code is ErrorCode.IDLE_TIMEOUT
        assert trio.current_time() - start == pytest.approx(45, abs=1)
        nursery.cancel_scope.cancel()


async def _stall(peer: object) -> None:
    # Hold the server's send lock forever: it can neither answer nor ping.
    async with peer._send_lock:  # type: ignore[attr-defined]
        await trio.sleep_forever()


async def test_keepalive_keeps_a_quiet_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        client, server = await start_pair(nursery, echo_router())
        await trio.sleep(600)  # ten virtual minutes without calls
        assert client.is_open and server.is_open
        assert await call(client, "echo", 1) == {"echo": 1}
        nursery.cancel_scope.cancel()


async def test_ping_measures_round_trip() -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await start_pair(nursery)
        rtt = await client.ping()
        assert 0 <= rtt < math.inf
        nursery.cancel_scope.cancel()


async def test_connection_end_resets_open_streams() -> None:
    async def never(ctx: CallContext, stream: Stream) -> None:
        await trio.sleep_forever()

    router = Router()
    router.streaming("never", never)
    async with trio.open_nursery() as nursery:
        client, server = await start_pair(nursery, router)
        stream = await client.open_stream("never")
        await server.aclose("bye")
        with pytest.raises(StreamReset):
            await stream.receive()
        with pytest.raises(trio.BrokenResourceError):
            await client.open_stream("never")
        nursery.cancel_scope.cancel()


async def test_reset_reaches_the_other_side() -> None:
    got: list[BaseException] = []
    arrived = trio.Event()

    async def wait(ctx: CallContext, stream: Stream) -> None:
        try:
            await stream.receive()
        except StreamReset as exc:
            got.append(exc)
            arrived.set()

    router = Router()
    router.streaming("wait", wait)
    async with trio.open_nursery() as nursery:
        client, _ = await start_pair(nursery, router)
        stream = await client.open_stream("wait")
        await stream.reset(ErrorCode.CANCEL, "changed my mind")
        with trio.fail_after(1):
            await arrived.wait()
        assert isinstance(got[0], StreamReset) and got[0].code is ErrorCode.CANCEL
        nursery.cancel_scope.cancel()


async def test_a_call_cancelled_mid_write_leaves_the_connection_whole() -> None:
    """Once bytes are taken from the connection they are written whole, even when the task
    writing them is cancelled: a cut write would break every stream on the connection."""
    gate = trio.Event()
    armed = False

    async with trio.open_nursery() as nursery:
        client, _ = await start_pair(nursery, echo_router())
        sending = client._stream.send_stream  # type: ignore[attr-defined]
        pump = sending.send_all_hook  # moves the bytes to the other end

        async def hold_writes() -> None:
            if armed:
                await gate.wait()
            await pump()

        sending.send_all_hook = hold_writes
        armed = True
        scope = trio.CancelScope()

        async def cancelled_call() -> None:
            with scope:
                await call(client, "echo", {"big": b"x" * 1000})

        nursery.start_soon(cancelled_call)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()  # while its write waits for the gate
        await trio.testing.wait_all_tasks_blocked()
        armed = False
        gate.set()
        assert await call(client, "echo", 1) == {"echo": 1}
        assert client.is_open
        nursery.cancel_scope.cancel()
