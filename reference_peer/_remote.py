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
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import trio

from petalproto.core import Address, ErrorCode, Identity, PeerId
from petalproto.core._route import NoChain, SpanInfo, parse_precision, plan_chain
from petalproto.net import ConnectionPool, DhtService, RpcError, Stream, StreamReset

from ._announce import quantization_of, spans_from_records, spans_key
from ._loop import LoopThread
from ._tensors import tensor_from_wire, tensor_to_wire

__all__ = ["NoChain", "RemoteChain", "Swarm"]

log = logging.getLogger("reference_peer.client")

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
#: How long a failed peer is avoided, in seconds; doubles with each further failure.
BACKOFF = 15.0
#: The most hidden-state bytes one step message carries; longer prompts go in pieces.
STEP_BYTES = 4 << 20
#: Seconds a discovery result is reused before the DHT is asked again.
DISCOVERY_TTL = 5.0

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
    ) -> None:
        self.initial_peers = list(initial_peers)
        self.identity = identity or Identity.from_seed(os.urandom(32))
        self.loop = LoopThread()
        assert self.loop.nursery is not None
        self.pool = ConnectionPool(self.loop.nursery, self.identity)
        self._discover = discover
        self.latency: dict[PeerId, float] = {}
        self._backoff: dict[PeerId, tuple[float, int]] = {}
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
            self.pool, self.identity, router=None, listen=None, initial_peers=self.initial_peers
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
                self.latency[address.peer_id] = time.perf_counter() - start
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
        full (``is_capacity``), put it in backoff."""
        self.failures[peer] = (time.monotonic(), _describe(exc))
        if is_capacity(exc):
            return
        _, failures = self._backoff.get(peer, (0.0, 0))
        self._backoff[peer] = (time.monotonic() + BACKOFF * 2**failures, failures + 1)

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
        now = time.monotonic()
        return {peer for peer, (until, _) in self._backoff.items() if until > now}

    async def plan(
        self,
        model: str,
        lo: int,
        hi: int,
        *,
        minimum: str | None = None,
        passed_over: Iterable[PeerId] = (),
    ) -> list[SpanInfo]:
        """The cheapest chain over ``[lo, hi)`` through spans of precision ``minimum`` or
        better (SPEC.md §13.8), avoiding peers in backoff and those ``passed_over``.
        Raises: NoChain."""
        spans = await self.spans(model)
        jitter = {s.peer_id: int.from_bytes(os.urandom(2), "big") / 65535 * 1e-4 for s in spans}
        try:
            return plan_chain(
                spans,
                lo,
                hi,
                model=model,
                latency=self.latency,
                avoid=self.avoided() | set(passed_over),
                jitter=jitter,
                minimum=minimum,
            )
        except NoChain as exc:
            raise self.explain(exc, passed_over) from None


def is_capacity(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a peer saying it is full (OUT_OF_CACHE, TOO_MANY_SESSIONS,
    OVERLOADED; a connection closed by GOAWAY OVERLOADED names the code in its text)."""
    code = getattr(exc, "code", None)
    return code in _CAPACITY or (exc is not None and "OVERLOADED" in str(exc))


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "failed"
    code = getattr(exc, "code", None)
    text = str(getattr(exc, "reason", "") or exc).splitlines()[0] if str(exc) else ""
    name = code.name if isinstance(code, ErrorCode) else type(exc).__name__
    return f"{name} {text!r}" if text and text != name else name


def span_from_info(address: Address, info: dict[str, Any]) -> SpanInfo:
    return SpanInfo(
        address=address,
        model=str(info["model"]),
        start=int(info["start"]),
        end=int(info["end"]),
        throughput=float(info.get("throughput") or 0.0),
        cache_tokens_free=info.get("cache_tokens_free"),
        dtype=str(info.get("dtype", "")),
        quantization=quantization_of(info.get("quantization")),
    )


@dataclass
class _Hop:
    """One span of the current chain: its open session and every input it received."""

    span: SpanInfo
    stream: Stream
    history: list[dict[str, Any]] = field(default_factory=list)


class RemoteChain:
    """A ``Chain`` whose spans run on peers.

    Args:
        swarm: connections and discovery.
        model: the model's name on the wire.
        num_blocks: how many blocks the model has.
        max_length: session length when ``reset`` names none.
        step_timeout: seconds one span may take for one step.
        max_retries: peer failures tolerated within one step.
        min_precision: plan only through spans of this precision or better (SPEC.md
            §13.8; a name of ``petalproto.core._route.PRECISIONS``), or None for any. A
            chain may mix precisions: every server converts the hidden states it gets.
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
    ) -> None:
        self.swarm, self.model, self.num_blocks = swarm, model, num_blocks
        self.min_precision = None if min_precision is None else parse_precision(min_precision)
        self.owns_swarm = owns_swarm
        self.default_max_length = max_length
        self._max_length = max_length
        self.step_timeout = step_timeout
        self.max_retries = max_retries
        self._hops: list[_Hop] | None = None
        self._batch = 0
        #: Peers that said they are full during this session (routed around, not blamed).
        self._passed_over: set[PeerId] = set()
        #: The spans the last session used, for display.
        self.route: list[SpanInfo] = []
        #: How many replacements the chain has made, for tests and display.
        self.recoveries = 0

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
            self.swarm.loop.run(self._close_hops, self._hops)
            self._hops = None
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
                        timeout=self.step_timeout,
                    )
                    message["hidden"] = reply["hidden"]
                self.route = chain
                return message["hidden"]  # type: ignore[no-any-return]
            except _PEER_FAULTS as exc:
                self._check_caller_fault(exc)
                self._fault(span.peer_id, exc)
        raise RuntimeError("too many peer failures in one forward pass")

    async def _step(self, body: dict[str, Any], batch: int) -> dict[str, Any]:
        if self._hops is None:
            self._batch = batch
            self._hops = await self._open(0, self.num_blocks)
            self.route = [hop.span for hop in self._hops]
        hops, message, failures, i = self._hops, body, 0, 0
        while i < len(hops):
            try:
                hidden = await self._send(hops[i], message)
            except _PEER_FAULTS as exc:
                self._check_caller_fault(exc)
                failures += 1
                if failures > self.max_retries:
                    raise
                await self._replace(hops, i, exc)
                continue
            hops[i].history.append(message)
            message = {**message, "hidden": hidden}
            i += 1
        return message["hidden"]  # type: ignore[no-any-return]

    def _fault(self, peer: PeerId, exc: BaseException) -> None:
        """A peer failed us: blame it, or, when it only said it is full, pass it over for
        the rest of this session (SPEC.md §10.6) without backing it off."""
        self.swarm.blame(peer, exc)
        if is_capacity(exc):
            self._passed_over.add(peer)

    @staticmethod
    def _check_caller_fault(exc: BaseException) -> None:
        code = getattr(exc, "code", None)
        if code in _CALLER_FAULTS:
            raise RpcError(code, getattr(exc, "reason", str(exc)))

    async def _send(self, hop: _Hop, message: dict[str, Any]) -> dict[str, Any]:
        with trio.fail_after(self.step_timeout):
            await hop.stream.send(message)
            reply = await hop.stream.receive()
        if not isinstance(reply, dict) or not isinstance(reply.get("hidden"), dict):
            raise RpcError(ErrorCode.PROTOCOL_ERROR, "a step reply carries 'hidden'")
        return reply["hidden"]  # type: ignore[no-any-return]

    async def _open(self, lo: int, hi: int) -> list[_Hop]:
        """Plan ``[lo, hi)`` and open a session on each span."""
        for _ in range(self.max_retries + 1):
            chain = await self.swarm.plan(
                self.model, lo, hi, minimum=self.min_precision, passed_over=self._passed_over
            )
            hops: list[_Hop] = []
            try:
                for span in chain:
                    hops.append(await self._open_one(span))
                return hops
            except _PEER_FAULTS as exc:
                self._check_caller_fault(exc)
                self._fault(chain[len(hops)].peer_id, exc)
                await self._close_hops(hops)
        raise self.swarm.explain(
            NoChain(self.model, [(lo, hi)], minimum=self.min_precision), self._passed_over
        )

    async def _open_one(self, span: SpanInfo) -> _Hop:
        peer = await self.swarm.pool.get(span.address)
        stream = await peer.open_stream("inference.session")
        await stream.send(
            {
                "model": self.model,
                "start": span.start,
                "end": span.end,
                "batch": self._batch,
                "max_length": self._max_length,
            }
        )
        return _Hop(span, stream)

    async def _replace(self, hops: list[_Hop], i: int, exc: BaseException) -> None:
        """Swap ``hops[i]`` for a fresh chain over its blocks and replay its history."""
        failed = hops[i]
        log.warning(
            "peer %s (blocks %d:%d) failed: %r; replacing it",
            failed.span.address,
            failed.span.start,
            failed.span.end,
            exc,
        )
        self._fault(failed.span.peer_id, exc)
        self.swarm.forget(self.model)
        await self._close_hops([failed])
        fresh = await self._open(failed.span.start, failed.span.end)
        for old in failed.history:
            message = old
            for hop in fresh:
                hidden = await self._send(hop, message)
                hop.history.append(message)
                message = {**message, "hidden": hidden}
        hops[i : i + 1] = fresh
        self.route = [hop.span for hop in hops]
        self.recoveries += 1

    @staticmethod
    async def _close_hops(hops: list[_Hop]) -> None:
        for hop in hops:
            with trio.move_on_after(1):
                try:
                    await hop.stream.end()
                except _PEER_FAULTS:
                    pass
