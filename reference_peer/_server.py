"""The serving side of inference (SPEC.md §13): ``peer.info``, ``inference.forward`` and
``inference.session`` over a node's router.

Torch work runs under a capacity limiter of one, so a span computes one request at a time.
Small requests (generation steps: at most ``inline_rows`` rows of batch times new tokens) run on
the event loop's own thread: handing each step to a worker thread and back costs two thread
wake-ups, about half a millisecond per step on a small CPU host, which is most of what a hop
adds to a token. The loop is busy for the length of one step. Larger requests (prompts) run
in a thread of their own (``run_in_own_thread``) while the loop keeps serving the network.
Errors of the model code carry their wire codes (``_errors``); the router turns them into
RESET.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
import trio

from petalproto.core import ErrorCode
from petalproto.net import AGENT, CallContext, ConnectionPool, Router, RpcError, Stream, StreamReset

from ._errors import PeerError
from ._loop import run_in_own_thread
from ._push import Pusher, PushInboxes, parse_push, parse_push_id
from ._spans import SpanModel, SpanSession
from ._tensors import tensor_from_wire, tensor_to_wire

__all__ = ["PeerServer", "measure_throughput"]

log = logging.getLogger("reference_peer.server")

#: Largest tensor a request may carry, in bytes; messages are bounded by the stream window
#: anyway (SPEC.md §8.5), this keeps a single tensor from taking all of it.
MAX_TENSOR_BYTES = 64 << 20
#: Longest session a client may ask for, in tokens.
MAX_SESSION_LENGTH = 1 << 16
#: Requests of at most this many rows (batch times tokens) run on the event loop's thread.
INLINE_ROWS = 64


@dataclass(frozen=True, slots=True)
class _Span:
    model: str
    start: int
    end: int


def _require(body: Any, key: str, kind: type) -> Any:
    if (
        not isinstance(body, dict)
        or not isinstance(body.get(key), kind)
        or (kind is int and isinstance(body.get(key), bool))
    ):
        raise RpcError(ErrorCode.BAD_REQUEST, f"{key!r} must be {kind.__name__}")
    return body[key]


def _tensor(body: dict[str, Any], key: str) -> torch.Tensor:
    raw = body.get(key)
    if not isinstance(raw, dict):
        raise RpcError(ErrorCode.BAD_TENSOR, f"{key!r} must be a tensor map")
    try:
        return tensor_from_wire(raw, max_bytes=MAX_TENSOR_BYTES)
    except PeerError as exc:
        raise RpcError(exc.code, f"{key}: {exc}") from None


def _rows(hidden: torch.Tensor) -> int:
    """Rows of work in a hidden-states tensor: batch times tokens (any shape counts)."""
    return hidden.numel() // max(hidden.shape[-1], 1) if hidden.dim() else 1


def measure_throughput(span: SpanModel, *, steps: int = 3) -> float:
    """Tokens per second of one-token forward passes through the span (announced)."""
    hidden = torch.zeros(1, 1, span.hidden_size)
    ones = torch.ones(1, 1, dtype=torch.long)
    span.forward(hidden, ones, ones - 1)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        span.forward(hidden, ones, ones - 1)
    return steps / max(time.perf_counter() - start, 1e-9)


class PeerServer:
    """Serves one span of one model.

    Args:
        span: the loaded blocks.
        model: the model's name on the wire (clients must name it).
        throughput: announced tokens per second.
        inline_rows: requests of at most this many rows (batch times tokens) run on the event
            loop's thread, larger ones in a thread of their own.
    """

    def __init__(
        self,
        span: SpanModel,
        model: str,
        *,
        throughput: float = 0.0,
        inline_rows: int = INLINE_ROWS,
    ) -> None:
        self.span = span
        self.model = model
        self.throughput = throughput
        self.inline_rows = inline_rows
        self.limiter = trio.CapacityLimiter(1)
        self.sessions = 0
        self.pool: ConnectionPool | None = None
        self.inboxes = PushInboxes()
        #: False while the server drains before it moves its span: new sessions are refused
        #: with TOO_MANY_SESSIONS, a capacity answer that sends clients elsewhere unblamed.
        self.accepting = True
        #: Set whenever a session ends (for a server waiting for its sessions to finish).
        self.session_ended = trio.Event()

    def register(self, router: Router, pool: ConnectionPool | None = None) -> None:
        """Serve our methods on ``router``; with ``pool``, push to other servers through it
        (SPEC.md §13.9; without one, every ``pushed`` is false)."""
        self.pool = pool
        router.unary("peer.info", self._handle_info)
        router.unary("inference.forward", self._handle_forward)
        router.streaming("inference.session", self._handle_session)
        router.streaming("inference.push", self._handle_push)

    def info(self) -> dict[str, Any]:
        free = self.span.cache_free_bytes
        per_token = self.span.cache_bytes_per_token if free is not None else 0
        return {
            "model": self.model,
            "start": self.span.start,
            "end": self.span.end,
            "num_blocks": int(self.span.full_config.num_hidden_layers),
            "hidden_size": self.span.hidden_size,
            "dtype": str(self.span.dtype).removeprefix("torch."),
            "quantization": self.span.quantization,
            "device": self.span.device.type,
            "sessions": self.sessions,
            "max_sessions": self.span.max_sessions,
            "cache_tokens_free": None if free is None else free // max(per_token, 1),
            "throughput": round(self.throughput, 3),
            "version": AGENT,
        }

    def _check_span(self, body: Any) -> None:
        model = _require(body, "model", str)
        start, end = _require(body, "start", int), _require(body, "end", int)
        if model != self.model:
            raise RpcError(ErrorCode.UNKNOWN_MODEL, f"this peer serves {self.model!r}")
        if (start, end) != (self.span.start, self.span.end):
            raise RpcError(
                ErrorCode.WRONG_SPAN, f"this peer serves blocks {self.span.start}:{self.span.end}"
            )

    async def _compute(self, rows: int, fn: Any, *args: Any) -> Any:
        inline = rows <= self.inline_rows
        try:
            if inline and not self.limiter.borrowed_tokens:
                # Nothing computes, and nothing can start while this runs: no need to wait
                # for the limiter (a schedule point per step).
                return fn(*args)
            async with self.limiter:
                return fn(*args) if inline else await run_in_own_thread(fn, *args)
        except PeerError as exc:
            raise RpcError(exc.code, str(exc)) from None

    async def _handle_info(self, ctx: CallContext, body: Any) -> Any:
        if not isinstance(body, dict):
            raise RpcError(ErrorCode.BAD_REQUEST, "peer.info takes a map")
        return self.info()

    async def _handle_forward(self, ctx: CallContext, body: Any) -> Any:
        self._check_span(body)
        hidden = _tensor(body, "hidden")
        mask, positions = _tensor(body, "attention_mask"), _tensor(body, "position_ids")
        out = await self._compute(_rows(hidden), self.span.forward, hidden, mask, positions)
        return {"hidden": tensor_to_wire(out)}

    async def _handle_session(self, ctx: CallContext, stream: Stream) -> None:
        try:
            opening = await stream.receive()
        except trio.EndOfChannel:
            return
        self._check_span(opening)
        if not self.accepting:
            raise RpcError(ErrorCode.TOO_MANY_SESSIONS, "this peer is moving to other blocks")
        batch = _require(opening, "batch", int)
        max_length = _require(opening, "max_length", int)
        if not 0 < batch <= 1024 or not 0 < max_length <= MAX_SESSION_LENGTH:
            raise RpcError(ErrorCode.BAD_REQUEST, "batch or max_length out of range")
        push_id = opening.get("session")
        if push_id is not None:
            push_id = parse_push_id(push_id)
            if push_id in self.inboxes:
                raise RpcError(ErrorCode.BAD_REQUEST, "this push id names another session")
        session: SpanSession = await self._compute(1, self.span.open_session, batch, max_length)
        self.sessions += 1
        try:
            if push_id is None:
                async for step in stream:
                    await stream.send(await self._step(session, step, None))
            else:
                await self._pushed_session(session, stream, push_id)
        finally:
            # Free the cache before ending our direction (SPEC.md §13.5), so a client that
            # opens its next session on seeing the end finds the budget free.
            self.sessions -= 1
            session.close()
            self.session_ended.set()
            self.session_ended = trio.Event()
        await stream.end()

    async def _pushed_session(self, session: SpanSession, stream: Stream, push_id: bytes) -> None:
        """A session that also takes pushed steps (SPEC.md §13.9): steps from the client and
        from the server before us, in the order they arrive, answered to the client."""
        steps = self.inboxes.open(push_id)
        pusher = Pusher(self.pool)

        async def read_client() -> None:
            inbox = self.inboxes.inbox(push_id)
            try:
                async for step in stream:
                    await inbox.send(("client", step))
                await inbox.send(("end", None))
            except (StreamReset, trio.BrokenResourceError) as exc:
                await inbox.send(("gone", exc))
            except trio.ClosedResourceError:
                pass

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_client)
                async for source, step in steps:
                    if source == "end":
                        break
                    if source == "gone":
                        raise step
                    reply = await self._step(session, step, pusher, nursery)
                    if reply is not None:
                        await stream.send(reply)
                nursery.cancel_scope.cancel()
        finally:
            self.inboxes.close(push_id)
            with trio.CancelScope(shield=True):
                await pusher.aclose()

    async def _step(
        self,
        session: SpanSession,
        step: Any,
        pusher: Pusher | None,
        nursery: trio.Nursery | None = None,
    ) -> dict[str, Any] | None:
        """One step's answer to the client; None for a step the session has taken already
        (a push-id session only, SPEC.md §13.9). With ``push``, the output goes on to the
        next server first."""
        if not isinstance(step, dict):
            raise RpcError(ErrorCode.BAD_REQUEST, "a step is a map")
        hidden = _tensor(step, "hidden")
        mask, positions = _tensor(step, "attention_mask"), _tensor(step, "position_ids")
        targets = parse_push(step) if pusher is not None else []
        if pusher is not None and mask.dim() == 2 and mask.shape[1] <= session.length:
            return None  # past + new <= the session's length: taken already
        if targets and nursery is not None:
            nursery.start_soon(pusher.prepare, targets[0])  # type: ignore[union-attr]
        out = await self._compute(_rows(hidden), session.step, hidden, mask, positions)
        wire = tensor_to_wire(out)
        if not targets:
            return {"hidden": wire}
        assert pusher is not None
        pushed = await pusher.send(
            targets[0],
            {
                "session": targets[0].session,
                "hidden": wire,
                "attention_mask": step["attention_mask"],
                "position_ids": step["position_ids"],
                "push": [t.to_wire() for t in targets[1:]],
            },
        )
        return {"hidden": wire, "pushed": pushed}

    async def _handle_push(self, ctx: CallContext, stream: Stream) -> None:
        """``inference.push`` (SPEC.md §13.9): steps for sessions of ours, from the server
        before us on a client's chain."""
        async for message in stream:
            if not isinstance(message, dict):
                raise RpcError(ErrorCode.BAD_REQUEST, "a pushed step is a map")
            await self.inboxes.deliver(parse_push_id(message.get("session")), message)
        await stream.end()
