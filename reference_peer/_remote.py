"""The client's side of the swarm: discovery, routing, and a chain of remote sessions.

``RemoteChain`` implements the ``Chain`` protocol over the network (SPEC.md §13): it plans
the cheapest chain of peers covering the model's blocks, opens one ``inference.session``
stream per span and relays each step's hidden states from span to span.  It keeps every
input it sent to each span, so when a peer fails mid-generation it plans a replacement for
that span's blocks, replays the stored inputs into it, and goes on with the same tokens
(the recovery scheme of Petals).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import trio

from petalproto.core import Address, ErrorCode, Identity, PeerId
from petalproto.core._breaker import Breakers
from petalproto.core._route import NoChain, SpanInfo, parse_precision, plan_chain
from petalproto.core.dht import DhtConfig
from petalproto.net import ConnectionPool, DhtService, RpcError, Stream, StreamReset

from ._announce import quantization_of, spans_from_records, spans_key
from ._loop import LoopThread
from ._push import PUSH_ID_BYTES, PushTarget
from ._tensors import tensor_from_wire, tensor_to_wire

__all__ = ["NoChain", "RemoteChain", "Swarm"]

log = logging.getLogger("reference_peer.client")


class PeerHung(trio.TooSlowError):
    """A peer we wait on did not answer a health ping in time: its process is stopped, its
    host is gone or its link is cut, whether or not its connection is still open."""


#: Errors after which another peer may well succeed.
_PEER_FAULTS = (
    StreamReset,
    RpcError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    OSError,
    trio.EndOfChannel,
)
#: How a health ping fails.
_GONE = (PeerHung, trio.BrokenResourceError, trio.ClosedResourceError)
#: Codes that blame the request, not the peer: retrying elsewhere would fail the same way.
_CALLER_FAULTS = {
    ErrorCode.BAD_TENSOR,
    ErrorCode.TOO_LONG,
    ErrorCode.BAD_REQUEST,
    ErrorCode.MALFORMED,
    ErrorCode.MESSAGE_TOO_LARGE,
}
#: Codes by which a peer says it is full, not broken (SPEC.md §10.6, §13.5): the client
#: routes around it for the rest of the session without backing it off.
_CAPACITY = {ErrorCode.OUT_OF_CACHE, ErrorCode.TOO_MANY_SESSIONS, ErrorCode.OVERLOADED}
#: How long a failed peer is avoided, in seconds; doubles with each further failure (up to
#: ``BACKOFF_CAP``), with 25 % jitter (``petalproto.core._breaker``).
BACKOFF = 10.0
BACKOFF_CAP = 600.0
#: A peer that does not answer a health ping within this many seconds (or four of its
#: measured round trips, if longer) is taken for hung.
HUNG_AFTER = 0.75
#: Seconds between health pings of a peer we wait on, and of the peers of an idle session.
PING_INTERVAL = 0.25
IDLE_PING_INTERVAL = 1.0
#: A measured round trip is trusted for this long before a candidate is pinged again.
PROBE_TTL = 30.0
#: Most candidates pinged before a chain is planned.
MAX_PROBES = 32
#: The shortest step deadline, in seconds, and how many expected step times it allows.
DEADLINE_FLOOR = 3.0
DEADLINE_FACTOR = 10.0
#: Weight of a new sample in a peer's moving averages (round trip, step time).
EWMA = 0.3
#: The most hidden-state bytes one step message carries; longer prompts go in pieces.
STEP_BYTES = 4 << 20
#: Seconds a discovery result is reused before the DHT is asked again.
DISCOVERY_TTL = 5.0
#: Seconds a DHT lookup of ours waits for one node's answer before going on without it
#: (the DHT's default is 2 s, which a hung node would add to every lookup).
DHT_REQUEST_TIMEOUT = HUNG_AFTER

Discover = Callable[[str], Awaitable[list[SpanInfo]]]


class Swarm:
    """What a client knows of the swarm: connections, announcements, latency, backoff.

    Args:
        initial_peers: addresses to start from (DHT nodes or servers).
        identity: the client's identity (a fresh one by default).
        discover: how to find spans of a model; by default, the DHT through the initial
            peers, falling back to asking the initial peers directly (``peer.info``).
    """

    def __init__(
        self,
        initial_peers: Sequence[Address],
        *,
        identity: Identity | None = None,
        use_dht: bool = True,
        discover: Discover | None = None,
        join_timeout: float = 30.0,
        probes: bool = True,
    ) -> None:
        self.initial_peers = list(initial_peers)
        #: Ping candidates before planning (``probe``).
        self.probes = probes
        self.identity = identity or Identity.from_seed(os.urandom(32))
        self.loop = LoopThread()
        assert self.loop.nursery is not None
        self.pool = ConnectionPool(self.loop.nursery, self.identity)
        self._discover = discover
        #: Measured round trips (moving averages of pings), in seconds.
        self.latency: dict[PeerId, float] = {}
        self._measured: dict[PeerId, float] = {}
        self.breakers: Breakers[PeerId] = Breakers(base=BACKOFF, cap=BACKOFF_CAP, rng=random.random)
        #: The last error of each peer that failed us, and when (for NoChain's message).
        self.failures: dict[PeerId, tuple[float, str]] = {}
        self._seen: dict[str, tuple[float, list[SpanInfo]]] = {}
        self.dht: DhtService | None = None
        if use_dht and discover is None:
            try:
                self.loop.run(self._join, join_timeout)
            except BaseException:
                self.loop.close()
                raise

    async def _join(self, timeout: float) -> None:
        assert self.loop.nursery is not None
        self.dht = DhtService(
            self.pool,
            self.identity,
            router=None,
            listen=None,
            initial_peers=self.initial_peers,
            config=DhtConfig(request_timeout=DHT_REQUEST_TIMEOUT),
        )
        with trio.move_on_after(timeout) as scope:
            await self.loop.nursery.start(self.dht.run)
        if scope.cancelled_caught:
            peers = ", ".join(str(p) for p in self.initial_peers) or "none given"
            raise ConnectionError(f"could not join the swarm through its initial peers ({peers})")

    def close(self) -> None:
        try:
            self.loop.run(self.pool.aclose)
        finally:
            self.loop.close()

    # -- discovery and planning (run inside the loop) ---------------------------------

    async def spans(self, model: str) -> list[SpanInfo]:
        """Servers of ``model``: from the DHT, or by asking the initial peers directly."""
        if self._discover is not None:
            return await self._discover(model)
        cached = self._seen.get(model)
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL:
            return cached[1]
        found: list[SpanInfo] = []
        if self.dht is not None:
            found = spans_from_records(await self.dht.get(spans_key(model)), model)
        if not found:
            found = await self._ask_initial_peers(model)
        self._seen[model] = (time.monotonic(), found)
        return found

    def forget(self, model: str) -> None:
        """Drop cached announcements (after a failure, look again)."""
        self._seen.pop(model, None)

    async def _ask_initial_peers(self, model: str) -> list[SpanInfo]:
        found: list[SpanInfo] = []

        async def ask(address: Address) -> None:
            try:
                start = time.perf_counter()
                info = await self.pool.call(address, "peer.info", {}, timeout=5)
                self.measured(address.peer_id, time.perf_counter() - start)
            except _PEER_FAULTS as exc:
                log.info("peer %s did not answer: %r", address, exc)
                return
            if not isinstance(info, dict) or info.get("model") != model:
                return
            try:
                found.append(span_from_info(address, info))
            except (KeyError, TypeError, ValueError) as exc:
                log.info("peer %s answered peer.info with a malformed map: %r", address, exc)

        async with trio.open_nursery() as nursery:
            for address in self.initial_peers:
                nursery.start_soon(ask, address)
        return found

    def blame(self, peer: PeerId, exc: BaseException | None = None) -> None:
        """Note that ``peer`` failed (with ``exc``, when known) and, unless it only said it is
        full (``is_capacity``) or that our view of it is stale (``is_stale``), put it in
        backoff."""
        self.failures[peer] = (time.monotonic(), _describe(exc))
        if not is_capacity(exc) and not is_stale(exc):
            self.breakers.failure(peer, time.monotonic())

    def succeeded(self, peer: PeerId) -> None:
        """``peer`` served us: close its breaker."""
        self.breakers.success(peer)

    def measured(self, peer: PeerId, rtt: float) -> None:
        """A round trip to ``peer`` took ``rtt`` seconds (its moving average)."""
        old = self.latency.get(peer)
        self.latency[peer] = rtt if old is None else old + EWMA * (rtt - old)
        self._measured[peer] = time.monotonic()

    def hung_after(self, peer: PeerId) -> float:
        """Seconds without an answer to a ping after which ``peer`` counts as hung."""
        return max(HUNG_AFTER, 4 * self.latency.get(peer, 0.0))

    async def ping(self, peer: Any) -> None:
        """Ping a connection, timing it. Raises: PeerHung, trio.BrokenResourceError."""
        limit = self.hung_after(peer.peer_id)
        with trio.move_on_after(limit):
            self.measured(peer.peer_id, await peer.ping())
            return
        raise PeerHung(f"no answer to a health ping in {limit:.2f} s")

    async def probe(self, spans: Iterable[SpanInfo]) -> None:
        """Ping candidates we have not measured lately, all at once, dialling as needed:
        a hung or dead candidate is put in backoff before any session waits on it, and the
        others' round trips steer the planner to near copies."""
        now, avoided = time.monotonic(), self.avoided()
        fresh = {p for p, when in self._measured.items() if now - when < PROBE_TTL}
        todo = {s.peer_id: s.address for s in spans}
        todo = {p: a for p, a in todo.items() if p not in fresh and p not in avoided}

        async def one(address: Address) -> None:
            limit = self.hung_after(address.peer_id)
            try:
                with trio.fail_after(limit):
                    peer = await self.pool.get(address)
                await self.ping(peer)
            except trio.TooSlowError:
                self.blame(
                    address.peer_id, PeerHung(f"no answer to a health ping in {limit:.2f} s")
                )
            except _PEER_FAULTS as exc:
                self.blame(address.peer_id, exc)

        async with trio.open_nursery() as nursery:
            for address in list(todo.values())[:MAX_PROBES]:
                nursery.start_soon(one, address)

    def explain(self, exc: NoChain, passed_over: Iterable[PeerId] = ()) -> NoChain:
        """``exc``, naming why each peer we avoided or ``passed_over`` (full, for this
        session) failed us, and how long ago: the blocks may be served, by peers that are
        down, hung or too busy to take us now."""
        now = time.monotonic()
        reasons = []
        for peer in sorted(self.avoided() | set(passed_over), key=str):
            when, why = self.failures.get(peer, (now, "avoided"))
            reasons.append(f"peer {peer.short()}: {why} ({now - when:.1f} s ago)")
        if reasons:
            hint = "; try again later" if any("OVERLOADED" in r for r in reasons) else ""
            exc.args = (f"{exc}; passed over {', '.join(reasons)}{hint}",)
        return exc

    def avoided(self) -> set[PeerId]:
        """Peers whose breakers are open."""
        return self.breakers.open(time.monotonic())

    async def plan(
        self,
        model: str,
        lo: int,
        hi: int,
        *,
        minimum: str | None = None,
        passed_over: Iterable[PeerId] = (),
        last_resort: bool = False,
    ) -> list[SpanInfo]:
        """The cheapest chain over ``[lo, hi)`` through spans of precision ``minimum`` or
        better (SPEC.md §13.8), avoiding peers in backoff and those ``passed_over``; with
        ``last_resort``, through peers in backoff rather than none.
        Raises: NoChain."""
        spans = await self.spans(model)
        if self.probes:
            await self.probe(s for s in spans if s.start < hi and s.end > lo)
        jitter = {s.peer_id: int.from_bytes(os.urandom(2), "big") / 65535 * 1e-4 for s in spans}
        passed_over = set(passed_over)
        try:
            return plan_chain(
                spans,
                lo,
                hi,
                model=model,
                latency=self.latency,
                avoid=self.avoided() | passed_over,
                jitter=jitter,
                minimum=minimum,
            )
        except NoChain as exc:
            if not last_resort:
                raise self.explain(exc, passed_over) from None
            explained = self.explain(exc, passed_over)
        # A peer in backoff may have recovered (a restart, a passing stall); trying it beats
        # failing for sure. Peers that said they are full stay out.
        try:
            return plan_chain(
                spans, lo, hi, model=model, latency=self.latency, avoid=passed_over, minimum=minimum
            )
        except NoChain:
            raise explained from None


def is_capacity(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a peer saying it is full (OUT_OF_CACHE, TOO_MANY_SESSIONS,
    OVERLOADED; a connection closed by GOAWAY OVERLOADED names the code in its text)."""
    code = getattr(exc, "code", None)
    return code in _CAPACITY or (exc is not None and "OVERLOADED" in str(exc))


def is_stale(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a peer saying it no longer serves what we asked for (WRONG_SPAN:
    it moved, SPEC.md §13.10): our view of the swarm is out of date, the peer is fine."""
    return getattr(exc, "code", None) == ErrorCode.WRONG_SPAN


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "failed"
    code = getattr(exc, "code", None)
    text = str(getattr(exc, "reason", "") or exc).splitlines()[0] if str(exc) else ""
    name = code.name if isinstance(code, ErrorCode) else type(exc).__name__
    return f"{name} {text!r}" if text and text != name else name


def span_from_info(address: Address, info: dict[str, Any]) -> SpanInfo:
    from ._announce import sessions_of  # malformed load counts read as unknown (§13.7)

    return SpanInfo(
        address=address,
        model=str(info["model"]),
        start=int(info["start"]),
        end=int(info["end"]),
        throughput=float(info.get("throughput") or 0.0),
        cache_tokens_free=info.get("cache_tokens_free"),
        dtype=str(info.get("dtype", "")),
        quantization=quantization_of(info.get("quantization")),
        sessions=sessions_of(info.get("sessions")) or 0,
        max_sessions=sessions_of(info.get("max_sessions")),
    )


@dataclass
class _Hop:
    """One span of the current chain: its open session and every input it received."""

    span: SpanInfo
    stream: Stream
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The session's push id (SPEC.md §13.9), or None for a relayed session.
    push_id: bytes | None = None
    #: Moving average of the seconds from its input to its answer, for one-token steps.
    step_time: float | None = None
    #: A health ping between steps went unanswered: replace it before the next step.
    suspect: BaseException | None = None

    def target(self) -> dict[str, Any]:
        assert self.push_id is not None
        return PushTarget(self.span.address, self.push_id).to_wire()


class RemoteChain:
    """A ``Chain`` whose spans run on peers.

    Args:
        swarm: connections and discovery.
        model: the model's name on the wire.
        num_blocks: how many blocks the model has.
        max_length: session length when ``reset`` names none.
        step_timeout: the most seconds one span may take for one step, whatever was
            measured. Within it, a step's deadline follows the span's measured step time
            (``DEADLINE_FACTOR`` times it, at least ``deadline_floor``), and a span that
            stops answering health pings is replaced after ``HUNG_AFTER`` seconds.
        max_retries: peer failures tolerated within one step.
        min_precision: plan only through spans of this precision or better (SPEC.md
            §13.8; a name of ``petalproto.core._route.PRECISIONS``), or None for any. A
            chain may mix precisions: every server converts the hidden states it gets.
        push: have servers hand hidden states to each other (SPEC.md §13.9) instead of
            relaying every hop through the client.
        deadline_floor: the shortest step deadline, in seconds.
    """

    def __init__(
        self,
        swarm: Swarm,
        model: str,
        num_blocks: int,
        *,
        max_length: int = 2048,
        step_timeout: float = 60.0,
        max_retries: int = 4,
        owns_swarm: bool = False,
        min_precision: str | None = None,
        push: bool = True,
        deadline_floor: float = DEADLINE_FLOOR,
    ) -> None:
        self.swarm, self.model, self.num_blocks = swarm, model, num_blocks
        self.min_precision = None if min_precision is None else parse_precision(min_precision)
        self.owns_swarm = owns_swarm
        self.default_max_length = max_length
        self._max_length = max_length
        self.step_timeout = step_timeout
        self.deadline_floor = min(deadline_floor, step_timeout)
        self.max_retries = max_retries
        self.push = push
        self._hops: list[_Hop] | None = None
        self._batch = 0
        #: Peers that said they are full during this session (routed around, not blamed).
        self._passed_over: set[PeerId] = set()
        #: Pings the peers of an open session between its steps.
        self._watch: trio.CancelScope | None = None
        #: The spans the last session used, for display.
        self.route: list[SpanInfo] = []
        #: How many replacements the chain has made, for tests and display.
        self.recoveries = 0
        #: Hops whose input a server pushed (SPEC.md §13.9), and hops we sent ourselves
        #: (the first span of every step included), for tests and display.
        self.pushed_hops = 0
        self.relayed_hops = 0

    # -- the Chain protocol (synchronous) -----------------------------------------------

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        body = {
            "attention_mask": tensor_to_wire(attention_mask),
            "position_ids": tensor_to_wire(position_ids),
            "hidden": tensor_to_wire(hidden.float()),
        }
        out = self.swarm.loop.run(self._forward, body)
        return tensor_from_wire(out, max_bytes=1 << 34).to(hidden.dtype)

    def step(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        batch, new, width = hidden.shape
        per_token = max(1, batch * width * 4)
        piece = max(1, STEP_BYTES // per_token)
        past = attention_mask.shape[1] - new
        outputs = []
        for at in range(0, new, piece):
            end = min(new, at + piece)
            body = {
                "hidden": tensor_to_wire(hidden[:, at:end].float()),
                "attention_mask": tensor_to_wire(attention_mask[:, : past + end]),
                "position_ids": tensor_to_wire(position_ids[:, at:end]),
            }
            out = self.swarm.loop.run(self._step, body, int(batch))
            outputs.append(tensor_from_wire(out, max_bytes=1 << 34))
        return torch.cat(outputs, dim=1).to(hidden.dtype)

    def reset(self, *, max_length: int | None = None) -> None:
        if self._hops is not None:
            self.swarm.loop.run(self._close_session)
        self._passed_over.clear()
        self._max_length = self.default_max_length if max_length is None else max_length

    def close(self) -> None:
        """End the session; with ``owns_swarm``, close the swarm too."""
        try:
            self.reset()
        finally:
            if self.owns_swarm:
                self.swarm.close()
                self.owns_swarm = False

    # -- inside the loop ------------------------------------------------------------------

    async def _forward(self, body: dict[str, Any]) -> dict[str, Any]:
        rows = _rows_of(body)
        for _ in range(self.max_retries + 1):
            chain = await self.swarm.plan(
                self.model,
                0,
                self.num_blocks,
                minimum=self.min_precision,
                passed_over=self._passed_over,
            )
            try:
                message = dict(body)
                for span in chain:
                    reply = await self.swarm.pool.call(
                        span.address,
                        "inference.forward",
                        {**message, "model": self.model, "start": span.start, "end": span.end},
                        timeout=self._deadline(span, None, rows),
                    )
                    message["hidden"] = reply["hidden"]
                    self.swarm.succeeded(span.peer_id)
                self.route = chain
                return message["hidden"]  # type: ignore[no-any-return]
            except _PEER_FAULTS as exc:
                self._check_caller_fault(exc)
                self._fault(span.peer_id, exc)
        raise RuntimeError("too many peer failures in one forward pass")

    async def _step(self, body: dict[str, Any], batch: int) -> dict[str, Any]:
        """One step through the chain: the first span gets it from us, each next one from
        the span before (pushed) or, when that could not push, from us; we read every
        span's answer in chain order, which gives us each span's input for replay."""
        if self._hops is None:
            self._batch = batch
            self._hops = await self._open(0, self.num_blocks)
            self.route = [hop.span for hop in self._hops]
            self._start_watch()
        hops, message, failures, i = self._hops, body, 0, 0
        rows = _rows_of(body)
        for hop in list(hops):
            if hop.suspect is not None and hop in hops:
                failures += 1
                await self._replace(hops, hops.index(hop), hop.suspect)
        delivered = False  # whether hops[i] has (or is being pushed) ``message``
        while i < len(hops):
            hop = hops[i]
            began = trio.current_time()
            try:
                if delivered:
                    self.pushed_hops += 1
                else:
                    self.relayed_hops += 1
                    await self._send_step(hops, i, message)
                reply = await self._receive(hop, rows)
            except _PEER_FAULTS as exc:
                self._check_caller_fault(exc)
                failures += 1
                if failures > self.max_retries:
                    raise
                await self._replace(hops, i, exc)
                delivered = False
                continue
            if rows == self._batch:
                took = trio.current_time() - began
                hop.step_time = (
                    took
                    if hop.step_time is None
                    else (hop.step_time + EWMA * (took - hop.step_time))
                )
            hop.history.append(message)
            message = {
                "hidden": reply["hidden"],
                "attention_mask": message["attention_mask"],
                "position_ids": message["position_ids"],
            }
            delivered = reply.get("pushed") is True
            i += 1
        for hop in hops:
            if self.swarm.breakers.failures(hop.span.peer_id):
                self.swarm.succeeded(hop.span.peer_id)
        return message["hidden"]  # type: ignore[no-any-return]

    async def _send_step(self, hops: list[_Hop], i: int, message: dict[str, Any]) -> None:
        """Send ``message`` to ``hops[i]``, naming the rest of the chain to push to."""
        rest = hops[i + 1 :]
        if self.push and rest and all(h.push_id is not None for h in rest):
            message = {**message, "push": [h.target() for h in rest]}
        with trio.fail_after(self.swarm.hung_after(hops[i].span.peer_id)):
            await hops[i].stream.send(message)

    def _deadline(self, span: SpanInfo, step_time: float | None, rows: int) -> float:
        """Seconds to wait for ``span``'s answer to a step of ``rows`` rows: a multiple of
        what it should take (its measured step time for one-token steps, else what its
        announced throughput implies), plus its round trip, within the floor and
        ``step_timeout``."""
        if step_time is None or rows != self._batch:
            step_time = rows / span.throughput if span.throughput > 0 else 0.05 * rows
        expected = step_time + 2 * self.swarm.latency.get(span.peer_id, 0.0)
        return min(self.step_timeout, max(self.deadline_floor, DEADLINE_FACTOR * expected))

    async def _receive(self, hop: _Hop, rows: int) -> dict[str, Any]:
        """``hop``'s answer to the step in flight, within its deadline; meanwhile it is
        pinged, so that a hung peer is given up after ``hung_after``, however long its
        step may take."""
        deadline = self._deadline(hop.span, hop.step_time, rows)
        patience = 2 * (hop.step_time or 0.0) + 2 * self.swarm.latency.get(hop.span.peer_id, 0.0)
        reply: Any = None

        async def watch() -> None:
            await trio.sleep(max(patience, 0.05))
            while True:
                await self.swarm.ping(hop.stream.peer)
                await trio.sleep(PING_INTERVAL)

        with trio.fail_after(deadline):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    reply = await hop.stream.receive()
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise _first(group) from None
        if not isinstance(reply, dict) or not isinstance(reply.get("hidden"), dict):
            raise RpcError(ErrorCode.PROTOCOL_ERROR, "a step reply carries 'hidden'")
        return reply

    def _start_watch(self) -> None:
        """Ping the session's peers while it is idle between steps (see ``_keep_watch``)."""
        assert self.swarm.loop.nursery is not None
        self._watch = trio.CancelScope()
        self.swarm.loop.nursery.start_soon(self._keep_watch, self._watch)

    async def _keep_watch(self, scope: trio.CancelScope) -> None:
        """Health pings of the peers in use: one that does not answer is marked, and the
        next step replaces it before sending anything there."""
        with scope:
            while True:
                await trio.sleep(IDLE_PING_INTERVAL)
                for hop in list(self._hops or ()):
                    if hop.suspect is None:
                        try:
                            await self.swarm.ping(hop.stream.peer)
                        except _GONE as exc:
                            hop.suspect = exc

    def _fault(self, peer: PeerId, exc: BaseException) -> None:
        """A peer failed us: blame it, or, when it only said it is full, pass it over for
        the rest of this session (SPEC.md §10.6) without backing it off. A WRONG_SPAN says
        our view of the swarm is stale (the peer moved, SPEC.md §13.10): look again."""
        self.swarm.blame(peer, exc)
        if is_stale(exc):
            self.swarm.forget(self.model)
        if is_capacity(exc) or is_stale(exc):
            self._passed_over.add(peer)

    @staticmethod
    def _check_caller_fault(exc: BaseException) -> None:
        code = getattr(exc, "code", None)
        if code in _CALLER_FAULTS:
            raise RpcError(code, getattr(exc, "reason", str(exc)))

    async def _open(self, lo: int, hi: int) -> list[_Hop]:
        """Plan ``[lo, hi)`` and open a session on each span, all at once, each within its
        peer's ``hung_after``: a peer that hangs costs one such wait, then it is avoided."""
        for _ in range(self.max_retries + 1):
            try:
                chain = await self._plan(lo, hi)
            except NoChain:
                # What we knew of the swarm (up to DISCOVERY_TTL old) has no chain left:
                # ask the DHT again, which may know of peers that started since.
                self.swarm.forget(self.model)
                chain = await self._plan(lo, hi)
            hops, failed = await self._open_all(chain)
            if not failed:
                return hops
            for span, exc in failed:
                self._check_caller_fault(exc)
                self._fault(span.peer_id, exc)
            await self._close_hops(hops)
            self.swarm.forget(self.model)
        raise self.swarm.explain(
            NoChain(self.model, [(lo, hi)], minimum=self.min_precision), self._passed_over
        )

    async def _plan(self, lo: int, hi: int) -> list[SpanInfo]:
        return await self.swarm.plan(
            self.model,
            lo,
            hi,
            minimum=self.min_precision,
            passed_over=self._passed_over,
            last_resort=True,
        )

    async def _open_all(
        self, chain: list[SpanInfo]
    ) -> tuple[list[_Hop], list[tuple[SpanInfo, BaseException]]]:
        """Open a session on every span of ``chain`` at once: the sessions opened (in chain
        order) and the spans that failed, with why."""
        opened: dict[int, _Hop] = {}
        failed: list[tuple[SpanInfo, BaseException]] = []

        async def one(k: int, span: SpanInfo) -> None:
            try:
                with trio.fail_after(self.swarm.hung_after(span.peer_id) + 1.0):
                    opened[k] = await self._open_one(span)
            except trio.TooSlowError:
                failed.append((span, PeerHung("no answer while opening a session")))
            except _PEER_FAULTS as exc:
                failed.append((span, exc))

        async with trio.open_nursery() as nursery:
            for k, span in enumerate(chain):
                nursery.start_soon(one, k, span)
        return [opened[k] for k in sorted(opened)], failed

    async def _open_one(self, span: SpanInfo) -> _Hop:
        peer = await self.swarm.pool.get(span.address)
        stream = await peer.open_stream("inference.session")
        opening: dict[str, Any] = {
            "model": self.model,
            "start": span.start,
            "end": span.end,
            "batch": self._batch,
            "max_length": self._max_length,
        }
        push_id = os.urandom(PUSH_ID_BYTES) if self.push else None
        if push_id is not None:
            opening["session"] = push_id
        await stream.send(opening)
        return _Hop(span, stream, push_id=push_id)

    async def _replace(self, hops: list[_Hop], i: int, exc: BaseException) -> None:
        """Swap ``hops[i]`` for a fresh chain over its blocks and replay its history: all
        of it sent back to back, then every answer read, span after span (the same steps
        as before, so the same numbers; one round trip per span rather than per step)."""
        failed = hops[i]
        log.warning(
            "peer %s (blocks %d:%d) failed: %r; replacing it",
            failed.span.address,
            failed.span.start,
            failed.span.end,
            exc,
        )
        self._fault(failed.span.peer_id, exc)
        await self._close_hops([failed])
        fresh = await self._open(failed.span.start, failed.span.end)
        inputs = failed.history
        for hop in fresh:
            with trio.fail_after(self.swarm.hung_after(hop.span.peer_id) + 1.0):
                for message in inputs:
                    await hop.stream.send(message)
            outputs = []
            for message in inputs:
                reply = await self._receive(hop, _rows_of(message))
                outputs.append({**message, "hidden": reply["hidden"]})
            hop.history = list(inputs)
            inputs = outputs
        hops[i : i + 1] = fresh
        self.route = [hop.span for hop in hops]
        self.recoveries += 1

    async def _close_session(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        hops, self._hops = self._hops, None
        await self._close_hops(hops or [])

    @staticmethod
    async def _close_hops(hops: list[_Hop]) -> None:
        for hop in hops:
            with trio.move_on_after(1):
                try:
                    await hop.stream.end()
                except _PEER_FAULTS:
                    pass


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended a nursery of ours (its first leaf that is not a cancellation)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    return next((e for e in leaves if not isinstance(e, trio.Cancelled)), leaves[0])


def _rows_of(message: dict[str, Any]) -> int:
    """Rows of work in a step or forward message: batch times new tokens."""
    shape = message["hidden"].get("shape") or [1, 1]
    rows = 1
    for size in shape[:-1]:
        rows *= int(size)
    return max(rows, 1)
