"""Rebalancing: a serving peer re-checks the swarm now and then and moves its span where the
swarm is thin (``petalproto.core._balance`` decides; this module only drives it).

Every ``period`` seconds (times a random factor in ``[0.5, 1.5]``, so that servers that
started together do not all look at once) the loop reads the model's announcements from the
DHT and asks ``should_move``.  When it says move:

1. **Drain.**  ``server.accepting`` goes False: new sessions are refused with
   TOO_MANY_SESSIONS, a capacity answer that clients route around without blaming us
   (SPEC.md §13.10).  We wait until our open sessions end, or ``drain_timeout`` passes.
2. **Check again.**  Another server may have moved while we drained (two servers that saw
   the same gap); the move goes ahead only if a fresh read of the DHT still calls for it,
   else we accept sessions again and stay.
3. **Leave.**  The refreshes stop and the announcement is withdrawn, so clients stop
   planning through our old span.
4. **Load and swap.**  The new span loads in a thread of its own while the old one keeps
   serving any session that outlived the drain; then ``server.span`` and
   ``server.throughput`` point at the new span.  A session still open goes on with the old
   span's blocks (each session holds its own cache and model), and the old span's memory is
   freed when the last of them ends.  A request that names the old span is answered
   WRONG_SPAN from then on.
5. **Accept** sessions again, and **announce** the new span.

A span that fails to load (out of memory, say: both spans are in memory for a moment) leaves
us where we were, announced again, and ends rebalancing for this server: it would fail the
same way at every check.
"""

from __future__ import annotations

import gc
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import torch
import trio

from petalproto.core import Address
from petalproto.core._balance import BALANCE_THRESHOLD, coverage, should_move
from petalproto.core._route import SpanInfo

from ._loop import run_in_own_thread
from ._server import PeerServer, measure_throughput

__all__ = [
    "DRAIN_TIMEOUT",
    "REBALANCE_PERIOD",
    "Announcements",
    "CannotLoad",
    "keep_balanced",
    "rebalance",
]

log = logging.getLogger("reference_peer.rebalance")

#: Seconds between checks of a server that chose its own blocks: Petals checks at random
#: intervals averaging 120 s (notes/swarm.md).
REBALANCE_PERIOD = 120.0
#: Seconds a moving server waits for its open sessions to end before it moves anyway; those
#: that are left finish on the old span.
DRAIN_TIMEOUT = 60.0


class Announcements:
    """The task that keeps a server announced, which a move stops and starts again.

    Args:
        nursery: where the refresh task runs.
        keep: runs the refreshes until cancelled and reports started after the first
            announcement (``keep_announced`` with its arguments bound).
        withdraw: publishes the withdrawal (``withdraw`` with its arguments bound).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        keep: Callable[..., Awaitable[None]],
        withdraw: Callable[[], Awaitable[Any]],
    ) -> None:
        self._nursery = nursery
        self._keep = keep
        self._withdraw = withdraw
        self._scope: trio.CancelScope | None = None
        self._closed = False

    async def start(self) -> None:
        """Announce now and keep refreshing (nothing after ``close``)."""
        if self._closed or self._scope is not None:
            return
        self._scope = trio.CancelScope()
        await self._nursery.start(self._run, self._scope)

    async def _run(
        self, scope: trio.CancelScope, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with scope:
            await self._keep(task_status=task_status)

    async def stop(self) -> None:
        """Stop refreshing and withdraw the announcement."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        await self._withdraw()

    async def close(self) -> None:
        """``stop`` for good: a later ``start`` announces nothing (the server shuts down)."""
        self._closed = True
        await self.stop()


class CannotLoad(Exception):
    """The new span failed to load; the server serves its old one, announced again."""


def _me(server: PeerServer, address: Address) -> SpanInfo:
    span = server.span
    return SpanInfo(
        address=address,
        model=server.model,
        start=span.start,
        end=span.end,
        throughput=server.throughput,
    )


async def _drain(server: PeerServer, timeout: float) -> None:
    """Wait until no session is open, or ``timeout`` seconds pass."""
    if server.sessions:
        log.info("waiting up to %.0f s for %d open sessions to end", timeout, server.sessions)
    with trio.move_on_after(timeout):
        while server.sessions:
            await server.session_ended.wait()
    if server.sessions:
        log.info("%d sessions still open: they finish on the old blocks", server.sessions)


def _collect() -> None:
    """Give an old span's memory back, unless open sessions still hold it."""
    gc.collect()  # a span's forward hooks make reference cycles
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


async def rebalance(
    server: PeerServer,
    address: Address,
    *,
    total: int,
    read_spans: Callable[[], Awaitable[list[SpanInfo]]],
    announcements: Announcements,
    load: Callable[[int, int], Any],
    drain_timeout: float = DRAIN_TIMEOUT,
    threshold: float = BALANCE_THRESHOLD,
) -> bool:
    """One check (module docstring): move the span if the swarm calls for it.

    Args:
        server: the server whose span may move.
        address: its address (how it appears in the announcements).
        total: the model's block count.
        read_spans: the model's announcements, fresh from the DHT.
        announcements: our own announcement task.
        load: loads blocks ``[start, end)`` (blocking; it runs in a thread of its own).
        drain_timeout: seconds to wait for open sessions before moving anyway.
        threshold: ``should_move``'s threshold.

    Returns:
        True when the span moved.

    Raises:
        CannotLoad: ``load`` failed (its error is the cause); we serve the old span,
            announced again.
        Exception: what ``read_spans`` raised (nothing moved).
    """
    if should_move(await read_spans(), _me(server, address), total, threshold=threshold) is None:
        return False
    server.accepting = False
    try:
        await _drain(server, drain_timeout)
        spans, me = await read_spans(), _me(server, address)
        target = should_move(spans, me, total, threshold=threshold)
        if target is None:
            log.info(
                "the swarm changed while we drained: staying at blocks %d:%d", me.start, me.end
            )
            return False
        others = [s for s in spans if s.peer_id != me.peer_id]
        log.info(
            "moving from blocks %d:%d to %d:%d: min throughput %.1f → %.1f",
            me.start,
            me.end,
            *target,
            min(coverage([*others, me], total)),
            min(coverage([*others, replace(me, start=target[0], end=target[1])], total)),
        )
        await announcements.stop()
        try:
            span = await run_in_own_thread(load, *target)
            # On the loop's thread, where the steps will run too (see _server).
            throughput = measure_throughput(span)
        except Exception as exc:
            await announcements.start()
            raise CannotLoad(f"{type(exc).__name__}: {exc}") from exc
        server.span, server.throughput = span, throughput
        server.accepting = True  # before clients can see the new announcement
        await announcements.start()
        log.info("now serving blocks %d:%d, %.1f tokens/s", *target, throughput)
        _collect()  # nothing here holds the old span any more
        return True
    finally:
        server.accepting = True


async def keep_balanced(
    server: PeerServer,
    address: Address,
    *,
    period: float,
    rng: random.Random | None = None,
    **kwargs: Any,
) -> None:
    """Run ``rebalance`` every ``period`` seconds (jittered) until cancelled.

    A failed check (the DHT did not answer, say) is logged and tried again at the next one;
    a span that fails to load ends the loop (module docstring).  ``kwargs`` go to
    ``rebalance``.
    """
    rng = rng or random.Random()
    while True:
        await trio.sleep(period * rng.uniform(0.5, 1.5))
        try:
            await rebalance(server, address, **kwargs)
        except CannotLoad as exc:
            log.warning(
                "rebalancing stops: cannot load another span next to blocks %d:%d: %s",
                server.span.start,
                server.span.end,
                exc,
            )
            return
        except Exception as exc:
            log.warning("rebalancing check failed: %r", exc)
