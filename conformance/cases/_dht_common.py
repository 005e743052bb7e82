"""Shared pieces of the DHT cases (SPEC.md §12): a scripted DHT caller, records, contacts.

``DhtClient`` makes DHT calls on one fresh connection of ``CaseContext``, stream after
stream, and returns each outcome as a ``Reply`` (an answer, a RESET with its code, or the
connection ending) instead of judging it, so that a case can make several calls and rule on
all of them.  ``dht_case`` registers a case that first checks the target serves the DHT at
all: a target that answers ``dht.ping`` with UNKNOWN_METHOD serves no DHT, and its DHT cases
are UNIMPLEMENTED rather than failed.

Records are signed here without the size checks of ``make_named_record``, so that cases can
send oversized, expired or otherwise invalid records that are still correctly signed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from petalproto.core import ErrorCode, Identity, PeerId
from petalproto.core._errors import ProtocolError
from petalproto.core._frames import DataFlags, FrameType
from petalproto.core._msgpack import decode_strict
from petalproto.core.dht import Record, named_key

from .._expect import call_frames
from .._harness import CaseContext, Level, Outcome, case
from .._wire import TargetViolation, describe_frame

__all__ = [
    "MAX_RECORDS",
    "POPULATE",
    "DhtCase",
    "DhtClient",
    "K",
    "Reply",
    "check_contacts",
    "dht_case",
    "dictionary",
    "expect_answer",
    "expect_code",
    "forge",
    "fresh",
    "named",
    "node_id",
    "parse_contacts",
    "populate",
    "signed",
    "unix",
]

#: Contacts per answer (SPEC.md §12.3.2) and records per key (§12.6).
K = 20
MAX_RECORDS = 128
#: Fake contacts a case introduces to the target before it asks for contacts: more than k,
#: so that "at most k" and the order are tested on a full answer.
POPULATE = 24

DhtCase = Callable[[CaseContext, "DhtClient"], Awaitable[Outcome]]


def unix() -> int:
    return int(time.time())


def fresh() -> Identity:
    return Identity.from_seed(os.urandom(32))


def node_id(raw: bytes) -> int:
    """SHA-256 of a peer id as a big-endian integer (SPEC.md §12.1)."""
    return int.from_bytes(hashlib.sha256(raw).digest(), "big")


def signed(
    identity: Identity,
    *,
    key: bytes,
    subkey: bytes = b"",
    name: bytes = b"",
    value: Any = "conformance",
    seq: int = 1,
    expires: int | None = None,
    publisher: PeerId | None = None,
) -> Record:
    """A record signed by ``identity`` over exactly these fields, whatever they are."""
    fields: dict[str, Any] = {
        "key": key,
        "subkey": subkey,
        "name": name,
        "value": value,
        "seq": seq,
        "expires": unix() + 600 if expires is None else expires,
        "publisher": publisher or identity.peer_id,
    }
    unsigned = Record(**fields, signature=bytes(64))
    return Record(**fields, signature=identity.sign(unsigned.signed_bytes))


def named(identity: Identity | None = None, name: bytes = b"conformance", **fields: Any) -> Record:
    """A valid named record (fields may be overridden and stay signed)."""
    identity = identity or fresh()
    return signed(identity, key=named_key(identity.peer_id, name), name=name, **fields)


def dictionary(identity: Identity | None = None, key: bytes | None = None, **fields: Any) -> Record:
    """A valid dictionary record in ``identity``'s own slot."""
    identity = identity or fresh()
    return signed(identity, key=key or os.urandom(32), subkey=identity.peer_id.raw, **fields)


def forge(record: Record, **changes: Any) -> Record:
    """``record`` with fields changed and its old signature kept (so it no longer verifies)."""
    fields: dict[str, Any] = {
        "key": record.key,
        "subkey": record.subkey,
        "name": record.name,
        "value": record.value,
        "seq": record.seq,
        "expires": record.expires,
        "publisher": record.publisher,
        "signature": record.signature,
    }
    return Record(**{**fields, **changes})


@dataclass(frozen=True, slots=True)
class Reply:
    """How the target answered one call.

    Attributes:
        kind: ``"answer"``, ``"reset"`` or ``"closed"``.
        body: the decoded response (answers).
        code: the RESET code (resets).
        seen: a description for reports.
    """

    kind: str
    body: Any = None
    code: int | None = None
    seen: str = ""

    def describe(self) -> str:
        if self.kind == "answer":
            text = repr(self.body)
            return "answer " + (text if len(text) <= 200 else text[:199] + "…")
        return self.seen


class DhtClient:
    """DHT calls over one connection to the target, on streams 1, 3, 5, …"""

    def __init__(self, ctx: CaseContext, session: Any) -> None:
        self.ctx = ctx
        self.session = session
        self._next_stream = 1

    @classmethod
    async def open(cls, ctx: CaseContext) -> DhtClient:
        return cls(ctx, await ctx.open_session())

    @property
    def peer_id(self) -> PeerId:
        """Our identity on this connection."""
        identity: Identity = self.session.identity
        return identity.peer_id

    @property
    def target_id(self) -> PeerId:
        """The target's authenticated peer id."""
        assert self.session.hello is not None
        peer: PeerId = self.session.hello.peer_id
        return peer

    async def call(self, method: str, body: Any = None, *, raw_body: bytes | None = None) -> Reply:
        """One unary call; the target's frames on other streams are skipped.

        Raises:
            WireTimeout: no outcome before the case's deadline.
            TargetViolation: the response breaks the msgpack profile.
        """
        stream_id = self._next_stream
        self._next_stream += 2
        frames = call_frames(stream_id, method, {} if body is None else body, raw_body=raw_body)
        await self.session.send_plain(frames, f"{method} call")
        chunks: list[bytes] = []
        while True:
            frame = await self.session.next_frame(self.ctx.deadline)
            if frame is None:
                return Reply("closed", seen="the connection closed")
            if frame[0] is FrameType.GOAWAY:
                return Reply("closed", seen=describe_frame(frame))
            if frame[0] is FrameType.RESET and frame[1] == stream_id:
                return Reply("reset", code=frame[2], seen=describe_frame(frame))
            if frame[0] is FrameType.DATA and frame[1] == stream_id:
                chunks.append(bytes(frame[3]))
                if frame[2] & DataFlags.END_MESSAGE:
                    return Reply("answer", body=_decode(b"".join(chunks)))

    async def put(self, record: Record | dict[str, Any]) -> Reply:
        wire = record.to_wire() if isinstance(record, Record) else record
        return await self.call("dht.put", {"record": wire})

    async def get(self, key: bytes) -> Reply:
        return await self.call("dht.get", {"key": key})

    async def find_node(self, target: bytes) -> Reply:
        return await self.call("dht.find_node", {"target": target})


def _decode(raw: bytes) -> Any:
    try:
        return decode_strict(raw)
    except ProtocolError as exc:
        raise TargetViolation(f"response breaks the msgpack profile: {exc.msg}") from exc


def _names(codes: Collection[ErrorCode]) -> str:
    return "/".join(code.name for code in codes)


def expect_code(ctx: CaseContext, reply: Reply, *codes: ErrorCode) -> Outcome:
    """PASS when the call was reset with one of ``codes``."""
    if reply.kind == "reset" and reply.code in codes:
        return ctx.passed(reply.seen)
    return ctx.violated(f"expected RESET({_names(codes)}), got {reply.describe()}")


def expect_answer(ctx: CaseContext, reply: Reply, what: str) -> Outcome | None:
    """None when the call was answered with a map; otherwise the violation."""
    if reply.kind == "answer" and isinstance(reply.body, dict):
        return None
    return ctx.violated(f"{what}: expected an answer (a map), got {reply.describe()}")


def parse_contacts(body: Any) -> list[tuple[bytes, str, int]] | str:
    """The ``nodes`` of an answer as ``(peer_id, host, port)``, or what is wrong with them."""
    nodes = body.get("nodes") if isinstance(body, dict) else None
    if not isinstance(nodes, list):
        return f"nodes is {nodes!r}, not a list"
    out = []
    for item in nodes:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or type(item[0]) is not bytes
            or len(item[0]) != 32
            or not isinstance(item[1], str)
            or type(item[2]) is not int
        ):
            return f"malformed contact {item!r}"
        out.append((item[0], item[1], item[2]))
    return out


def check_contacts(
    contacts: list[tuple[bytes, str, int]], target: bytes, *, count: bool = True
) -> str:
    """What breaks SPEC.md §12.3.2 items 1 (with ``count``) and 2 in an answer's contacts
    ("" if nothing)."""
    if count and len(contacts) > K:
        return f"{len(contacts)} contacts, more than k = {K}"
    raws = [raw for raw, _, _ in contacts]
    if len(set(raws)) != len(raws):
        return "the same peer id twice"
    goal = int.from_bytes(target, "big")
    distances = [node_id(raw) ^ goal for raw in raws]
    if distances != sorted(distances):
        return "contacts not sorted by XOR distance to the target"
    return ""


async def populate(ctx: CaseContext, count: int = POPULATE) -> list[bytes]:
    """Introduce ``count`` fresh identities to the target as DHT servers (a ``dht.ping``
    naming a listening port each), so that its routing table holds more than k contacts.

    Returns:
        The peer ids whose pings the target answered.
    """
    timeout = ctx.timeout
    ctx.set_window(max(timeout, 0.25 * count))  # handshakes on a slow link take a while
    answered = []
    for i in range(count):
        client = await DhtClient.open(ctx)
        reply = await client.call("dht.ping", {"listen": ["127.0.0.1", 20000 + i]})
        if reply.kind == "answer":
            answered.append(client.peer_id.raw)
    ctx.set_window(timeout)
    return answered


def dht_case(
    case_id: str,
    *,
    description: str,
    requirement: str,
    expected: str,
    level: Level = Level.MUST,
    timeout: float | None = None,
) -> Callable[[DhtCase], DhtCase]:
    """Register a DHT case: it runs with a ``DhtClient`` once the target answered
    ``dht.ping``; a target without a DHT makes it UNIMPLEMENTED."""

    def register(fn: DhtCase) -> DhtCase:
        async def run(ctx: CaseContext) -> Outcome:
            client = await DhtClient.open(ctx)
            probe = await client.call("dht.ping", {})
            if probe.kind == "reset" and probe.code == ErrorCode.UNKNOWN_METHOD:
                return ctx.unimplemented("the target serves no DHT (dht.ping: UNKNOWN_METHOD)")
            return await fn(ctx, client)

        case(
            case_id,
            description=description,
            requirement=requirement,
            expected=expected,
            level=level,
            timeout=timeout,
        )(run)
        return fn

    return register
