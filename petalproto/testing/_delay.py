"""An emulated wide-area link: a TCP proxy that delays, jitters, throttles and stalls.

Theory of operation. The kernel here has no netem, so latency is emulated in user space:
``DelayProxy`` listens on 127.0.0.1, and for every connection it accepts it dials the
target and runs two pipes, one per direction. A pipe's reader stamps every chunk it reads
with a due time and appends ``(due, chunk)`` to the pipe's queue; its sender sleeps until
the head's due time (``trio.sleep_until``, so many small chunks share one clock and add no
scheduling error each) and writes every chunk that is due in one ``send_all``.

Invariants:

- Bytes are never reordered: a chunk's due time is ``max(its own, the previous chunk's)``,
  so jitter stretches gaps but never swaps chunks.
- The due time is ``read time + delay ± jitter`` plus, with a bandwidth cap, the time the
  chunk waits for the link and takes to cross it (``len / bandwidth`` after the link is
  free): a serialization delay, as on a real bottleneck.
- Memory is bounded: a reader stops reading while more than ``max_queued`` bytes wait
  undelivered in its pipe, so a fast sender meets TCP backpressure, not a growing queue.
- EOF travels like data: it is queued behind the bytes before it and delivered as
  ``send_eof`` at its due time, so a half-close reaches the other side in order.
- ``stall()`` holds every pipe's sender (reading goes on, up to ``max_queued``) until
  ``resume()``; held chunks then go out at once, still in order. ``close_all()`` drops
  every connection; the listener keeps accepting.

It must never read the target's or the client's bytes for meaning: it only moves them.
"""

from __future__ import annotations

import random
from collections import deque
from types import TracebackType
from typing import Any, TypeVar

import trio
import trio.lowlevel

from petalproto.net._loop import LoopThread

__all__ = ["DelayProxy", "ProxyThread"]

T = TypeVar("T")

#: Bytes read per ``receive_some``: trio's own default for socket streams.
RECEIVE_SIZE = 65536
#: Undelivered bytes a pipe holds before it stops reading (the issue's 4 MiB).
MAX_QUEUED = 4 * 1024 * 1024

#: Python's ``epoll.poll`` rounds its timeout up to a whole millisecond, so a plain
#: ``trio.sleep_until`` oversleeps by up to that much; we sleep to this far before the due
#: time and yield (without sleeping) through the rest.
SPIN_SECONDS = 0.001

#: What a pipe does when a side goes away under it: end the whole connection.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


async def _sleep_until_exactly(deadline: float) -> None:
    """``trio.sleep_until(deadline)``, but late by microseconds rather than a millisecond."""
    if deadline - trio.current_time() > SPIN_SECONDS:
        await trio.sleep_until(deadline - SPIN_SECONDS)
    while trio.current_time() < deadline:
        await trio.lowlevel.checkpoint()


class _Pipe:
    """One direction of one connection: read, stamp, queue, deliver at the due time."""

    def __init__(self, proxy: DelayProxy, source: trio.SocketStream, sink: trio.SocketStream):
        self._proxy = proxy
        self._source, self._sink = source, sink
        self._queue: deque[tuple[float, bytes | None]] = deque()  # None: EOF
        self._queued = 0
        self._last_due = -float("inf")
        self._link_free_at = -float("inf")
        self._changed = trio.lowlevel.ParkingLot()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_loop)
            nursery.start_soon(self._send_loop)

    def _due(self, size: int) -> float:
        now = trio.current_time()
        proxy = self._proxy
        ready = now
        if proxy.bandwidth_bps is not None:
            self._link_free_at = max(now, self._link_free_at) + size / proxy.bandwidth_bps
            ready = self._link_free_at
        delay = proxy.delay_ms + proxy.jitter_ms * (2.0 * proxy.random.random() - 1.0)
        self._last_due = max(ready + max(delay, 0.0) / 1000.0, self._last_due)
        return self._last_due

    async def _read_loop(self) -> None:
        while True:
            while self._queued >= self._proxy.max_queued:
                await self._changed.park()
            data = await self._source.receive_some(RECEIVE_SIZE)
            self._queue.append((self._due(len(data)), data or None))
            self._queued += len(data)
            self._changed.unpark_all()
            if not data:
                return

    async def _send_loop(self) -> None:
        while True:
            while not self._queue:
                await self._changed.park()
            await _sleep_until_exactly(self._queue[0][0])
            await self._proxy._wait_unstalled()
            now = trio.current_time()
            batch: list[bytes] = []
            eof = False
            while self._queue and self._queue[0][0] <= now:
                chunk = self._queue.popleft()[1]
                if chunk is None:
                    eof = True
                    break
                batch.append(chunk)
            if batch:
                data = b"".join(batch)
                await self._sink.send_all(data)
                self._queued -= len(data)
                self._changed.unpark_all()
            if eof:
                await self._sink.send_eof()
                return


class DelayProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_host:target_port``.

    Run it with ``port = await nursery.start(proxy.run)`` or ``async with proxy:``; its
    listening port is then ``proxy.port``.

    Args:
        target_host, target_port: where every accepted connection is forwarded.
        delay_ms: one-way delay added to every byte, in each direction.
        jitter_ms: each chunk's delay varies uniformly by up to this much either way
            (never below zero, never reordering bytes).
        bandwidth_bps: a cap in **bytes** per second per direction and connection, as a
            serialization delay; None for no cap.
        seed: seeds the jitter, for repeatable runs.
        max_queued: undelivered bytes per direction before the proxy stops reading.

    Raises:
        ValueError: a negative delay or jitter, or a bandwidth that is not positive.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        bandwidth_bps: float | None = None,
        seed: int | None = None,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        if bandwidth_bps is not None and bandwidth_bps <= 0:
            raise ValueError("bandwidth_bps must be > 0 (or None for no cap)")
        if max_queued < 1:
            raise ValueError("max_queued must be >= 1")
        self.target_host, self.target_port = target_host, target_port
        self.delay_ms, self.jitter_ms = delay_ms, jitter_ms
        self.bandwidth_bps = bandwidth_bps
        self.max_queued = max_queued
        self.random = random.Random(seed)
        self._port: int | None = None
        self._stalled = False
        self._resumed = trio.lowlevel.ParkingLot()
        self._connections: set[trio.CancelScope] = set()
        self._nursery_manager: Any = None

    @property
    def port(self) -> int:
        """The port we listen on; valid once ``run`` reported started."""
        assert self._port is not None, "proxy not started"
        return self._port

    @property
    def connections(self) -> int:
        """How many connections are open through us now."""
        return len(self._connections)

    def stall(self) -> None:
        """Hold every byte, both ways, on every connection, until ``resume``."""
        self._stalled = True

    def resume(self) -> None:
        """Deliver what ``stall`` held (in order, at once if due) and go on as before."""
        self._stalled = False
        self._resumed.unpark_all()

    def close_all(self) -> None:
        """Drop every open connection; new ones are still accepted."""
        for scope in list(self._connections):
            scope.cancel()

    async def _wait_unstalled(self) -> None:
        while self._stalled:
            await self._resumed.park()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and forward until cancelled; reports our port once listening."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self._port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self._port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                async with client:
                    try:
                        target = await trio.open_tcp_stream(self.target_host, self.target_port)
                    except OSError:
                        return  # as a refused dial would: the client sees the close
                    async with target, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pipe, _Pipe(self, client, target), scope)
                        nursery.start_soon(self._pipe, _Pipe(self, target, client), scope)
            finally:
                self._connections.discard(scope)

    @staticmethod
    async def _pipe(pipe: _Pipe, scope: trio.CancelScope) -> None:
        try:
            await pipe.run()
        except* _GONE:
            scope.cancel()  # one side is gone: drop the other as well

    async def __aenter__(self) -> DelayProxy:
        self._nursery_manager = trio.open_nursery()
        nursery = await self._nursery_manager.__aenter__()
        await nursery.start(self.run)
        self._nursery = nursery
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._nursery.cancel_scope.cancel()
        manager, self._nursery_manager = self._nursery_manager, None
        result: bool | None = await manager.__aexit__(exc_type, exc, tb)
        return result


class ProxyThread:
    """Delay proxies for synchronous code: one trio loop in a daemon thread hosts them all.

    ``add`` starts a proxy and returns its port; ``stall``, ``resume`` and ``close_all``
    take that port. ``close`` (or leaving the ``with`` block) stops them all.
    """

    def __init__(self, name: str = "petal-delay") -> None:
        self._loop = LoopThread(name)
        self._proxies: dict[int, DelayProxy] = {}

    def add(
        self,
        host: str,
        port: int,
        *,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        bandwidth_bps: float | None = None,
        seed: int | None = None,
    ) -> int:
        """Start a proxy in front of ``host:port`` (arguments as ``DelayProxy``'s).

        Returns:
            the proxy's port on 127.0.0.1.
        """
        proxy = DelayProxy(
            host,
            port,
            delay_ms=delay_ms,
            jitter_ms=jitter_ms,
            bandwidth_bps=bandwidth_bps,
            seed=seed,
        )

        async def start() -> int:
            assert self._loop.nursery is not None
            started: int = await self._loop.nursery.start(proxy.run)
            return started

        listening = self._loop.run(start)
        self._proxies[listening] = proxy
        return listening

    def proxy(self, port: int) -> DelayProxy:
        """The proxy listening on ``port`` (read its settings; change them via the loop)."""
        return self._proxies[port]

    def stall(self, port: int) -> None:
        """``stall()`` the proxy on ``port``."""
        self._loop.run_sync(self._proxies[port].stall)

    def resume(self, port: int) -> None:
        """``resume()`` the proxy on ``port``."""
        self._loop.run_sync(self._proxies[port].resume)

    def close_all(self, port: int) -> None:
        """``close_all()`` on the proxy on ``port``."""
        self._loop.run_sync(self._proxies[port].close_all)

    def close(self) -> None:
        """Stop every proxy and the loop."""
        self._loop.close()

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
