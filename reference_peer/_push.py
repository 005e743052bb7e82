"""Push (SPEC.md §13.9): a server hands each step's output straight to the next server.

Two halves, both used by ``PeerServer``:

- ``Pusher`` is the sending side of one session: it keeps one ``inference.push`` stream to
  the next server the client named, opens it on first use (the dial may start while the
  step computes, see ``prepare``), and reports whether a step went out within
  ``PUSH_TIMEOUT``. A server that failed it once is not tried again in this session: the
  client relays to it instead, or replaces it.
- ``PushInboxes`` is the receiving side: the push ids of the sessions open here, each with
  the channel its session reads steps from. A push that arrives before its session's opening
  (the two travel on different connections) waits for it, for at most ``PUSH_WAIT``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from petalproto.core import Address, ErrorCode
from petalproto.net import ConnectionPool, RpcError, Stream, StreamReset

__all__ = [
    "MAX_PUSH_HOPS",
    "PUSH_ID_BYTES",
    "PUSH_TIMEOUT",
    "PUSH_WAIT",
    "PushInboxes",
    "PushTarget",
    "Pusher",
    "parse_push",
    "parse_push_id",
]

log = logging.getLogger("reference_peer.push")

#: Length of a push id, in bytes.
PUSH_ID_BYTES = 16
#: Most servers a step's ``push`` may name.
MAX_PUSH_HOPS = 64
#: Seconds to dial the next server and hand it a step before answering ``pushed: false``.
PUSH_TIMEOUT = 2.0
#: Seconds a pushed step waits for the opening of the session it names.
PUSH_WAIT = 5.0
#: Steps queued for one session before their senders wait.
INBOX_SIZE = 4

_FAULTS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, StreamReset, RpcError)


@dataclass(frozen=True, slots=True)
class PushTarget:
    """One entry of a step's ``push``: a server and the push id of its session."""

    address: Address
    session: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"addr": str(self.address), "session": self.session}


def parse_push_id(value: Any, what: str = "session") -> bytes:
    """A push id off the wire. Raises: RpcError(BAD_REQUEST)."""
    if not isinstance(value, bytes) or len(value) != PUSH_ID_BYTES:
        raise RpcError(ErrorCode.BAD_REQUEST, f"{what!r} must be {PUSH_ID_BYTES} bytes")
    return value


def parse_push(step: dict[str, Any]) -> list[PushTarget]:
    """A step's ``push`` (empty when absent or nil). Raises: RpcError(BAD_REQUEST)."""
    raw = step.get("push")
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_PUSH_HOPS:
        raise RpcError(ErrorCode.BAD_REQUEST, f"'push' must be a list of at most {MAX_PUSH_HOPS}")
    targets = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("addr"), str):
            raise RpcError(ErrorCode.BAD_REQUEST, "a 'push' entry is a map with a text 'addr'")
        try:
            address = Address.parse(entry["addr"])
        except ValueError as exc:
            raise RpcError(ErrorCode.BAD_REQUEST, f"a 'push' address: {exc}") from None
        targets.append(PushTarget(address, parse_push_id(entry.get("session"), "push.session")))
    return targets


@dataclass
class Pusher:
    """The push stream of one session (see the module's docstring)."""

    pool: ConnectionPool | None
    timeout: float = PUSH_TIMEOUT
    _target: PushTarget | None = None
    _stream: Stream | None = None
    _failed: set[PushTarget] = field(default_factory=set)

    async def prepare(self, target: PushTarget) -> None:
        """Start connecting to ``target`` (while the step computes); errors wait for
        ``send``, which dials again through the pool's shared attempt."""
        if self.pool is None or target in self._failed or self._target == target:
            return
        with trio.move_on_after(self.timeout):
            try:
                await self.pool.get(target.address)
            except _FAULTS:
                pass

    async def send(self, target: PushTarget, message: dict[str, Any]) -> bool:
        """Hand ``message`` to ``target``'s session; whether it went out in time."""
        if self.pool is None or target in self._failed:
            return False
        with trio.move_on_after(self.timeout):
            try:
                if self._target != target or self._stream is None:
                    await self.aclose()
                    peer = await self.pool.get(target.address)
                    self._stream = await peer.open_stream("inference.push")
                    self._target = target
                await self._stream.send(message)
                return True
            except _FAULTS as exc:
                log.info("cannot push to %s: %r; the client relays", target.address, exc)
        self._failed.add(target)
        await self.aclose(reset=True)
        return False

    async def aclose(self, *, reset: bool = False) -> None:
        stream, self._stream, self._target = self._stream, None, None
        if stream is None:
            return
        with trio.move_on_after(1):
            try:
                await (stream.reset() if reset else stream.end())
            except _FAULTS:
                pass


class PushInboxes:
    """The open sessions that take pushed steps, by push id."""

    def __init__(self) -> None:
        self._inboxes: dict[bytes, trio.MemorySendChannel[tuple[str, Any]]] = {}
        self._opened = trio.Event()

    def __contains__(self, push_id: bytes) -> bool:
        return push_id in self._inboxes

    def open(self, push_id: bytes) -> trio.MemoryReceiveChannel[tuple[str, Any]]:
        """Register a session's push id; the channel yields ``(source, message)``: pushed
        steps (``"push"``) and whatever its caller sends into ``inbox(push_id)``."""
        # Bounded: a sender that outruns the session waits, and so does its stream's credit.
        send, receive = trio.open_memory_channel[tuple[str, Any]](INBOX_SIZE)
        self._inboxes[push_id] = send
        self._opened.set()
        self._opened = trio.Event()
        return receive

    def inbox(self, push_id: bytes) -> trio.MemorySendChannel[tuple[str, Any]]:
        return self._inboxes[push_id]

    def close(self, push_id: bytes) -> None:
        send = self._inboxes.pop(push_id, None)
        if send is not None:
            send.close()

    async def deliver(self, push_id: bytes, message: Any, wait: float = PUSH_WAIT) -> None:
        """Queue a pushed step for its session, waiting up to ``wait`` seconds for an
        opening that has not arrived yet.

        Raises:
            RpcError: UNKNOWN_SESSION, no such session (or it ended).
        """
        with trio.move_on_after(wait):
            while push_id not in self._inboxes:
                await self._opened.wait()
        inbox = self._inboxes.get(push_id)
        try:
            if inbox is None:
                raise trio.ClosedResourceError
            await inbox.send(("push", message))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RpcError(ErrorCode.UNKNOWN_SESSION, "no session holds this push id") from None
