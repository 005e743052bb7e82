"""The DHT conformance cases (SPEC.md §12) against our node and against broken DHT peers.

``BrokenDht`` is a second, deliberately small DHT server with switches (``DhtFaults``):
with no fault it conforms, and every fault breaks one rule, so that each MUST case is shown
to report FAIL under some broken peer.  It runs behind a real ``Node`` (the transport is
not under test here) and shares no DHT code with ``DhtNode`` beyond ``parse_record``.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conformance import Case, Level, Options, Result, Verdict, load_cases, run_cases
from conformance._coverage import misquoted
from conformance.cases.dht import UNKNOWN_DHT_METHOD
from petalproto.core import Address, ErrorCode, Identity, PeerId
from petalproto.core._msgpack import encode
from petalproto.core.dht import (
    Contact,
    Record,
    RecordRejected,
    named_key,
    parse_record,
    record_rank,
)
from petalproto.net import CallContext, Node, RpcError
from petalproto.net._dht import DhtService

ROOT = Path(__file__).resolve().parents[2]
K = 20
_L = 2**252 + 27742317777372353535851937790883648493  # RFC 8032 §5.1: the group order
_FIELDS = {
    "dht.ping": {"listen"},
    "dht.find_node": {"listen", "target"},
    "dht.get": {"listen", "key"},
    "dht.put": {"listen", "record"},
}


@dataclass(frozen=True, slots=True)
class DhtFaults:
    """Each field, changed from its default, breaks one rule of SPEC.md §12."""

    # contacts and routing (§12.2, §12.3.2, §12.4)
    hostname_contacts: bool = False
    add_clients: bool = False
    extra_contacts: bool = False
    unsorted: bool = False
    include_self: bool = False
    empty_nodes: bool = False  # dht.find_node answers with an empty list
    get_without_nodes: bool = False  # dht.get answers with the records and no contacts
    skip_closest: bool = False  # leaves out the closest contact it holds
    # request bodies (§12.3)
    reject_unknown_fields: bool = False
    check_bodies: bool = True
    check_listen: bool = True
    answer_unknown_methods: bool = False
    ping_body: dict[str, Any] = field(default_factory=dict)
    # records served (§12.3.3, §12.3.4)
    serve_one_record: bool = False
    serve_expired: bool = False
    forget_puts: bool = False
    fit_the_window: bool = False  # drops records until the answer fits 64 KiB (§8.4)
    # validation (§12.5)
    check_schema: bool = True
    validate: bool = True
    check_size: bool = True
    check_slot: bool = True
    check_lifetime: bool = True
    check_signature: bool = True
    openssl_keys: bool = False  # accept what OpenSSL accepts: small-order keys and R
    reduce_s: bool = False  # read S modulo L (accepts S + L)
    signature_first: bool = False
    lifetime_first: bool = False
    # storage (§12.6)
    check_seq: bool = True
    old_seq_rule: bool = False  # refuse the same seq with any other value, even a better one
    keep_first: bool = False
    replace_earlier: bool = False
    key_quota: int | None = 128
    block_expired: bool = False


def _refuse(code: ErrorCode, reason: str) -> RpcError:
    return RpcError(code, reason)


def _fake_contact(i: int) -> Contact:
    return Contact(
        peer_id=Identity.from_seed(os.urandom(32)).peer_id, host="127.0.0.1", port=30000 + i
    )


class BrokenDht:
    """A DHT server whose rules can be switched off one by one."""

    def __init__(self, address: Address, faults: DhtFaults) -> None:
        self.address = address
        self.faults = faults
        self.contacts = {c.peer_id.raw: c for c in map(_fake_contact, range(30))}
        self.slots: dict[tuple[bytes, bytes], Record] = {}

    def register(self, node: Node) -> None:
        for method in _FIELDS:
            node.router.unary(method, self._handle)
        if self.faults.answer_unknown_methods:
            node.router.unary(UNKNOWN_DHT_METHOD, self._handle_unknown)

    async def _handle_unknown(self, ctx: CallContext, body: Any) -> Any:
        return {}

    async def _handle(self, ctx: CallContext, body: Any) -> Any:
        faults = self.faults
        if not isinstance(body, dict):
            if faults.check_bodies:
                raise _refuse(ErrorCode.BAD_REQUEST, "not a map")
            body = {}
        if faults.reject_unknown_fields and set(body) - _FIELDS[ctx.method]:
            raise _refuse(ErrorCode.BAD_REQUEST, "unknown field")
        self._learn(ctx, body.get("listen"))
        handlers: dict[str, Callable[[CallContext, dict[str, Any]], Any]] = {
            "dht.ping": lambda ctx, body: dict(faults.ping_body),
            "dht.find_node": self._find_node,
            "dht.get": self._get,
            "dht.put": self._put,
        }
        return handlers[ctx.method](ctx, body)

    def _learn(self, ctx: CallContext, listen: Any) -> None:
        remote = ctx.peer.remote
        assert remote is not None
        valid = (
            isinstance(listen, list)
            and len(listen) == 2
            and isinstance(listen[0], str)
            and _is_ip(listen[0])
            and type(listen[1]) is int
            and 0 < listen[1] < 65536
        )
        if listen is not None and not valid:
            if self.faults.check_listen:
                raise _refuse(ErrorCode.BAD_REQUEST, "bad listen")
            return
        if valid:
            port = listen[1]
        elif self.faults.add_clients:
            port = remote[1]
        else:
            return
        self.contacts[ctx.peer_id.raw] = Contact(peer_id=ctx.peer_id, host=remote[0], port=port)

    def _id(self, body: dict[str, Any], name: str) -> bytes:
        value = body.get(name)
        if type(value) is bytes and len(value) == 32:
            return value
        if self.faults.check_bodies:
            raise _refuse(ErrorCode.BAD_REQUEST, f"bad {name}")
        return bytes(32)

    def _nodes(self, ctx: CallContext, target: bytes) -> list[Any]:
        faults, goal = self.faults, int.from_bytes(target, "big")
        found = sorted(
            (c for raw, c in self.contacts.items() if raw != ctx.peer_id.raw),
            key=lambda c: c.node_id ^ goal,
        )[int(faults.skip_closest) : (K + 5 if faults.extra_contacts else K)]
        if faults.unsorted:
            found.reverse()
        if faults.include_self:
            me = self.address
            found.insert(0, Contact(peer_id=me.peer_id, host=me.host, port=me.port))
        wire = [c.to_wire() for c in found]
        if faults.hostname_contacts:
            wire = [[raw, "localhost", port] for raw, _, port in wire]
        return wire

    def _find_node(self, ctx: CallContext, body: dict[str, Any]) -> Any:
        target = self._id(body, "target")
        return {"nodes": [] if self.faults.empty_nodes else self._nodes(ctx, target)}

    def _get(self, ctx: CallContext, body: dict[str, Any]) -> Any:
        key, now = self._id(body, "key"), time.time()
        records = [
            r.to_wire()
            for r in self.slots.values()
            if r.key == key and (self.faults.serve_expired or r.expires > now)
        ]
        records = records[: 1 if self.faults.serve_one_record else 128]
        while self.faults.fit_the_window and len(encode({"records": records})) > 60_000:
            records.pop()
        nodes = [] if self.faults.get_without_nodes else self._nodes(ctx, key)
        return {"records": records, "nodes": nodes}

    def _put(self, ctx: CallContext, body: dict[str, Any]) -> Any:
        faults = self.faults
        if "record" not in body:
            if faults.check_bodies:
                raise _refuse(ErrorCode.BAD_REQUEST, "no record")
            return {}
        try:
            record = self._parse(body["record"])
        except RecordRejected as exc:
            if faults.check_schema:
                raise _refuse(exc.code, exc.reason) from None
            return {}
        if faults.validate:
            self._validate(record)
        self._store(record)
        return {}

    def _parse(self, wire: Any) -> Record:
        if not self.faults.openssl_keys or not isinstance(wire, dict):
            return parse_record(wire)
        raw = wire.get("publisher")
        if type(raw) is not bytes:
            return parse_record(wire)
        try:
            key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            return parse_record(wire)
        fields = {k: v for k, v in wire.items() if k not in ("publisher", "sig")}
        try:
            return Record(**fields, publisher=PeerId(raw, key), signature=wire["sig"])
        except (TypeError, ValueError, KeyError):
            return parse_record(wire)

    def _validate(self, record: Record) -> None:
        faults, now = self.faults, time.time()
        checks: dict[str, Callable[[Record, float], None]] = {
            "size": _check_size,
            "slot": _check_slot,
            "lifetime": _check_lifetime,
            "signature": _check_signature,
        }
        order = ["size", "slot", "lifetime", "signature"]
        if faults.signature_first:
            order = ["signature", "size", "slot", "lifetime"]
        if faults.lifetime_first:
            order = ["lifetime", "size", "slot", "signature"]
        if faults.openssl_keys or faults.reduce_s:
            checks["signature"] = self._lenient_signature
        for name in order:
            if getattr(faults, f"check_{name}"):
                checks[name](record, now)

    def _lenient_signature(self, record: Record, now: float) -> None:
        sig = record.signature
        if self.faults.reduce_s:
            s = int.from_bytes(sig[32:], "little") % _L
            sig = sig[:32] + s.to_bytes(32, "little")
        try:
            Ed25519PublicKey.from_public_bytes(record.publisher.raw).verify(
                sig, record.signed_bytes
            )
        except InvalidSignature:
            raise _refuse(ErrorCode.RECORD_BAD_SIGNATURE, "signature") from None

    def _store(self, record: Record) -> None:
        faults, now = self.faults, time.time()
        slot = (record.key, record.subkey)
        current = self.slots.get(slot)
        if current is not None and current.expires <= now and not faults.block_expired:
            del self.slots[slot]
            current = None
        if current is None:
            live = [r for r in self.slots.values() if r.key == record.key and r.expires > now]
            if faults.key_quota is not None and len(live) >= faults.key_quota:
                raise _refuse(ErrorCode.QUOTA_EXCEEDED, "key full")
        elif faults.keep_first:
            return
        else:
            same_value = record.value_bytes == current.value_bytes
            better = record_rank(record) > record_rank(current)
            if faults.old_seq_rule and record.seq == current.seq and not same_value:
                raise _refuse(ErrorCode.RECORD_SEQ_TOO_LOW, "another value under one seq")
            if record.seq == current.seq and same_value and not better:
                if not faults.replace_earlier:
                    return
            elif faults.check_seq and not better:
                raise _refuse(ErrorCode.RECORD_SEQ_TOO_LOW, "downgrade")
        if not faults.forget_puts:
            self.slots[slot] = record


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_size(record: Record, now: float) -> None:
    if len(record.name) > 64 or len(record.value_bytes) > 4096:
        raise _refuse(ErrorCode.RECORD_TOO_LARGE, "too large")


def _check_slot(record: Record, now: float) -> None:
    if record.is_named:
        if record.key != named_key(record.publisher, record.name):
            raise _refuse(ErrorCode.RECORD_INVALID, "key")
    elif record.subkey != record.publisher.raw:
        raise _refuse(ErrorCode.RECORD_FOREIGN_SUBKEY, "subkey")
    elif record.name:
        raise _refuse(ErrorCode.RECORD_INVALID, "name")


def _check_lifetime(record: Record, now: float) -> None:
    if record.expires <= now:
        raise _refuse(ErrorCode.RECORD_EXPIRED, "expired")
    if record.expires > now + 86_400 + 300:
        raise _refuse(ErrorCode.RECORD_INVALID, "too far")


def _check_signature(record: Record, now: float) -> None:
    if not record.publisher.verify(record.signature, record.signed_bytes):
        raise _refuse(ErrorCode.RECORD_BAD_SIGNATURE, "signature")


# Running cases ----------------------------------------------------------------------------


def dht_cases() -> list[Case]:
    return [c for c in load_cases().all() if c.section.split(".")[0] == "12"]


def _case(case_id: str) -> Case:
    return load_cases().get(case_id)


@asynccontextmanager
async def target(kind: str, faults: DhtFaults | None = None) -> AsyncIterator[Address]:
    """A node on loopback serving our DHT (``"ours"``), a broken one, or none (``"none"``)."""
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(Identity.from_seed(os.urandom(32))).run)
        if kind == "ours":
            await nursery.start(DhtService.for_node(node).run)
        elif kind == "broken":
            BrokenDht(node.address, faults or DhtFaults()).register(node)
        yield node.address
        nursery.cancel_scope.cancel()


async def run_on(cases: list[Case], kind: str, faults: DhtFaults | None = None) -> list[Result]:
    async with target(kind, faults) as address:
        return await run_cases(cases, Options.for_address(address, timeout=2.0))


def _span(section: str, first: int, last: int, faults: DhtFaults) -> dict[str, DhtFaults]:
    return {f"{section}/{i}": faults for i in range(first, last + 1)}


#: case id -> a broken DHT under which that case must FAIL.
BREAKERS: dict[str, DhtFaults] = {
    "12.2/1": DhtFaults(hostname_contacts=True),
    "12.2/2": DhtFaults(add_clients=True),
    "12.3/1": DhtFaults(reject_unknown_fields=True),
    **_span("12.3", 2, 6, DhtFaults(check_bodies=False)),
    "12.3/7": DhtFaults(answer_unknown_methods=True),
    **_span("12.3", 8, 11, DhtFaults(check_listen=False)),
    "12.3.1/1": DhtFaults(ping_body={"pong": True}),
    "12.3.2/1": DhtFaults(extra_contacts=True),
    "12.3.2/2": DhtFaults(unsorted=True),
    **_span("12.3.2", 3, 6, DhtFaults(check_bodies=False)),
    "12.3.3/1": DhtFaults(extra_contacts=True),
    "12.3.3/2": DhtFaults(serve_one_record=True),
    "12.3.3/3": DhtFaults(serve_expired=True),
    **_span("12.3.3", 4, 7, DhtFaults(check_bodies=False)),
    "12.3.4/1": DhtFaults(check_bodies=False),
    **_span("12.3.4", 2, 10, DhtFaults(check_schema=False)),
    "12.3.4/11": DhtFaults(validate=False),
    "12.3.4/12": DhtFaults(forget_puts=True),
    "12.3.2/7": DhtFaults(empty_nodes=True),
    "12.3.3/8": DhtFaults(get_without_nodes=True),
    "12.4/1": DhtFaults(include_self=True),
    "12.5.1/1": DhtFaults(check_slot=False),
    **_span("12.5.3", 1, 2, DhtFaults(check_size=False)),
    **_span("12.5.3", 3, 4, DhtFaults(check_slot=False)),
    **_span("12.5.3", 5, 6, DhtFaults(check_lifetime=False)),
    "12.5.3/7": DhtFaults(check_signature=False),
    "12.5.3/8": DhtFaults(signature_first=True),
    "12.5.3/9": DhtFaults(lifetime_first=True),
    "12.5.3/10": DhtFaults(signature_first=True),
    "12.6/1": DhtFaults(validate=False),
    **_span("12.6", 2, 3, DhtFaults(check_seq=False)),
    "12.6/4": DhtFaults(keep_first=True),
    "12.6/5": DhtFaults(replace_earlier=True),
    "12.6/6": DhtFaults(keep_first=True),
    "12.6/7": DhtFaults(key_quota=None),
    "12.6/8": DhtFaults(block_expired=True),
    "12.6/9": DhtFaults(old_seq_rule=True),
    **_span("12.6", 10, 11, DhtFaults(check_seq=False)),
    **_span("12.5.1", 2, 9, DhtFaults(openssl_keys=True)),
    "12.5.3/11": DhtFaults(openssl_keys=True),
    "12.5.3/12": DhtFaults(reduce_s=True),
}


def _report(results: list[Result], want: set[Verdict]) -> dict[str, str]:
    return {r.case.id: f"{r.verdict.value}: {r.observed}" for r in results if r.verdict not in want}


def test_every_dht_must_case_has_a_breaker() -> None:
    musts = {c.id for c in dht_cases() if c.level is Level.MUST and not c.self_check}
    assert musts == set(BREAKERS)


def test_dht_requirements_quote_the_spec() -> None:
    spec = (ROOT / "SPEC.md").read_text(encoding="utf-8")
    draft = ROOT / ".drafts" / "spec-dht.md"
    if draft.exists():
        spec += "\n" + draft.read_text(encoding="utf-8")
    assert misquoted(spec, dht_cases()) == {}


@pytest.mark.slow
async def test_our_dht_node_passes_every_dht_case() -> None:
    assert _report(await run_on(dht_cases(), "ours"), {Verdict.PASS}) == {}


@pytest.mark.slow
async def test_the_conforming_broken_dht_passes_every_dht_case() -> None:
    assert _report(await run_on(dht_cases(), "broken"), {Verdict.PASS}) == {}


@pytest.mark.slow
async def test_a_peer_without_a_dht_is_unimplemented_not_failed() -> None:
    results = await run_on(dht_cases(), "none")
    assert _report(results, {Verdict.UNIMPLEMENTED, Verdict.PASS}) == {}
    assert {r.case.id for r in results if r.verdict is Verdict.PASS} == {"12.3/7", "12.5.5/1"}


#: More broken peers that a case must catch, beyond the one in BREAKERS.
MORE_BREAKERS: list[tuple[str, DhtFaults]] = [
    ("12.3.2/7", DhtFaults(skip_closest=True)),
    ("12.3.3/8", DhtFaults(skip_closest=True)),
]


@pytest.mark.slow
@pytest.mark.parametrize(("case_id", "faults"), MORE_BREAKERS)
async def test_dht_case_fails_under_more_broken_peers(case_id: str, faults: DhtFaults) -> None:
    (result,) = await run_on([_case(case_id)], "broken", faults)
    assert result.verdict is Verdict.FAIL, f"{result.verdict.value}: {result.observed}"


@pytest.mark.slow
@pytest.mark.parametrize("case_id", sorted(BREAKERS))
async def test_dht_case_fails_under_its_broken_peer(case_id: str) -> None:
    (result,) = await run_on([_case(case_id)], "broken", BREAKERS[case_id])
    assert result.verdict is Verdict.FAIL, f"{result.verdict.value}: {result.observed}"


async def test_the_reader_self_check_fails_when_our_reader_trusts_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from petalproto.core.dht import _lookup

    monkeypatch.setattr(_lookup, "validate_record", lambda record, unix_now: None)
    (result,) = await run_cases([_case("12.5.5/1")], Options(host="127.0.0.1", port=1, timeout=1.0))
    assert result.verdict is Verdict.FAIL, result.observed


async def test_our_dht_resets_an_answer_over_the_callers_window() -> None:
    (result,) = await run_on([_case("8.4/3")], "ours")
    assert result.verdict is Verdict.PASS, result.observed


async def test_an_answer_cut_to_the_window_fails_8_4_3() -> None:
    # A §8.4 case, so it has no place in BREAKERS (§12 only); it needs a DHT to fail.
    (result,) = await run_on([_case("8.4/3")], "broken", DhtFaults(fit_the_window=True))
    assert result.verdict is Verdict.FAIL, result.observed
