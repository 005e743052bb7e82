"""Signed records and their storage (SPEC.md §12.3.3, §12.3.4, §12.5, §12.6).

Every case uses fresh identities and fresh keys, so cases never see each other's records on
the same target.  Records are correctly signed unless the case is about the signature; an
invalid record differs from a valid one in exactly the field the case names (and, for the
order cases of §12.5.3, in exactly two).  The expiry cases wait for a record to expire
(about three seconds); they assume the target's clock is within a second of ours.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import trio

from petalproto.core import ErrorCode, PeerId
from petalproto.core.dht import Contact, Lookup, Record, named_key

from .._ed25519 import (
    SMALL_ORDER_POINTS,
    forge_small_order,
    identity_r_signature,
    non_canonical_s,
)
from .._harness import QUOTE_GAP, CaseContext, Outcome, case
from ._dht_common import (
    MAX_RECORDS,
    DhtClient,
    dht_case,
    dictionary,
    expect_answer,
    expect_code,
    forge,
    fresh,
    named,
    signed,
    unix,
)
from ._noise_common import R_3_3_VALID_KEY, R_3_3_VALID_SIG

R_12_3_3_2 = (
    "`records` MUST hold every live record the server stores under `key` (§12.6), at most "
    "128 of them."
)
R_12_3_3_3 = "A server MUST NOT return a record whose `expires` is at or before its current time."
R_12_3_4_1 = (
    "A `record` field that is missing MUST be answered with `BAD_REQUEST`; a `record` that "
    "breaks §12.5.1 MUST be answered with `RECORD_INVALID`."
)
R_12_3_4_2 = (
    "A server MUST validate the record (§12.5.3) before it stores it, and store it only if "
    "the storage rules of §12.6 allow."
)
R_12_3_4_3 = (
    "After a server answered a `dht.put` with `{}`, its `dht.get` for the same key MUST "
    "return that record or one that replaced it (§12.6) until the record expires."
)
R_12_5_1_SCHEMA = (
    "A record is a msgpack map with exactly these eight fields; a record with another field "
    "or a missing field is invalid (`RECORD_INVALID`)."
)
R_12_5_1_NAMED = "Its key MUST equal `SHA-256(publisher ‖ name)` (BEP 44's key with salt)."
R_12_5_3 = (
    "Storers and readers MUST both validate every record, with these checks in this order; "
    "the first that fails decides the error code:"
)
R_SIZE = (
    "**Size**: `name` at most 64 bytes and the canonical encoding of `value` at most 4096 "
    "bytes; otherwise `RECORD_TOO_LARGE`."
)
R_SLOT = (
    "**Slot ownership**: a named record's key MUST equal `SHA-256(publisher ‖ name)` "
    "(otherwise `RECORD_INVALID`); a dictionary record's `subkey` MUST equal `publisher` "
    "(otherwise `RECORD_FOREIGN_SUBKEY`) and its `name` MUST be empty (otherwise "
    "`RECORD_INVALID`)."
)
R_LIFETIME = (
    "**Lifetime**: `expires` MUST be later than the validator's current unix time "
    "(otherwise `RECORD_EXPIRED`) and no later than that time plus 86,400 + 300 seconds "
    "(24 hours plus clock skew; otherwise `RECORD_INVALID`)."
)
R_SIGNATURE = (
    "**Signature** (§12.5.2): `sig` MUST be a valid signature encoding (§3.3) that "
    "verifies; otherwise `RECORD_BAD_SIGNATURE`."
)
R_12_5_5_1 = (
    "A reader MUST validate every record it fetches (§12.5.3) and MUST discard a record "
    "whose `key` differs from the key it asked for."
)
R_12_5_5_2 = (
    "A reader MUST NOT select a record that failed validation, and SHOULD treat the peer "
    "that sent it as misbehaving (§12.4 item 4)."
)
R_12_6_1 = (
    "A server MUST refuse a record that fails validation (§12.5.3), with the code of the "
    "first failed check."
)
R_12_6_2 = (
    "While a slot holds a live record, a server MUST refuse a record for that slot with a "
    "lower `seq`, or with the same `seq`, a different value (different canonical value "
    "bytes) and not better under §12.5.4, with `RECORD_SEQ_TOO_LOW`."
)
R_12_6_3_HIGHER = (
    "A valid record that is better under §12.5.4 than the stored one MUST replace it "
    "(subject to item 1): a higher `seq`, the same `seq` and a later `expires` (a "
    "republish, or another value), or the same `seq` and `expires` and a bytewise greater "
    "canonical value."
)
R_12_6_3_SAME = (
    "A record equal to the stored one, or a copy of it (the same `seq` and value) with an "
    "earlier `expires`, MUST be answered with `{}` and change nothing."
)
R_12_5_4 = (
    "Among valid records of one slot, the best has the highest `seq`, then the latest "
    "`expires`, then the bytewise greatest canonical value encoding (so that every reader "
    "picks the same record even from a publisher that signed two values under one `seq`)."
)
R_12_5_1_PUBLISHER = (
    "the publisher's peer id: a valid Ed25519 public key (§3.3); a small-order or "
    "non-canonical key makes the record invalid (`RECORD_INVALID`)"
)
R_12_6_4 = (
    "A server MUST NOT hold more than 128 records under one key. A server that refuses a "
    "valid record because a quota is full MUST answer `QUOTA_EXCEEDED`."
)
R_12_6_6 = (
    "A server MUST drop a record once its `expires` has passed and MUST NOT serve it "
    "afterwards (§12.3.3 item 3); an expired record no longer blocks its slot."
)

#: Seconds a short-lived record lives, and how long past its expiry a case waits so that a
#: target whose clock is up to a second behind ours has dropped it too.
_SHORT_LIFE, _MARGIN = 2, 1.2
_TOO_FAR = 86_400 + 300 + 3600


def _in_slot(records: Any, record: Record) -> list[dict[str, Any]]:
    """The records of an answer in ``record``'s slot."""
    return [
        r
        for r in records
        if isinstance(r, dict) and r.get("key") == record.key and r.get("subkey") == record.subkey
    ]


async def _records(ctx: CaseContext, dht: DhtClient, key: bytes) -> list[Any] | Outcome:
    reply = await dht.get(key)
    if (bad := expect_answer(ctx, reply, "dht.get")) is not None:
        return bad
    records = reply.body.get("records")
    if not isinstance(records, list):
        return ctx.violated(f"records is {records!r}, not a list")
    return records


async def _stored(ctx: CaseContext, dht: DhtClient, record: Record) -> Outcome | None:
    """Put a valid record, expecting ``{}``; None when it was accepted."""
    reply = await dht.put(record)
    if reply.kind == "answer" and reply.body == {}:
        return None
    return ctx.violated(f"a valid record was not accepted: {reply.describe()}")


async def _sleep_past(expires: int) -> None:
    await trio.sleep(max(0.0, expires + _MARGIN - time.time()))


# §12.3.3: what dht.get returns ------------------------------------------------------------


@dht_case(
    "12.3.3/2",
    description="three publishers put dictionary records under one key; dht.get",
    requirement=R_12_3_3_2,
    expected="all three records",
)
async def get_returns_all(ctx: CaseContext, dht: DhtClient) -> Outcome:
    key = os.urandom(32)
    records = [dictionary(key=key, value=i) for i in range(3)]
    for record in records:
        if (bad := await _stored(ctx, dht, record)) is not None:
            return bad
    got = await _records(ctx, dht, key)
    if isinstance(got, Outcome):
        return got
    missing = [r for r in records if not _in_slot(got, r)]
    if missing or len(got) > MAX_RECORDS:
        return ctx.violated(f"{len(got)} records returned, {len(missing)} of ours missing")
    return ctx.passed(f"{len(got)} records")


@dht_case(
    "12.3.3/3",
    description=f"a record that lives {_SHORT_LIFE} s is put; dht.get after it expired",
    requirement=R_12_3_3_3,
    expected="the record is not returned",
    timeout=_SHORT_LIFE + _MARGIN + 3,
)
async def get_skips_expired(ctx: CaseContext, dht: DhtClient) -> Outcome:
    record = dictionary(expires=unix() + _SHORT_LIFE)
    if (bad := await _stored(ctx, dht, record)) is not None:
        return bad
    await _sleep_past(record.expires)
    got = await _records(ctx, dht, record.key)
    if isinstance(got, Outcome):
        return got
    if _in_slot(got, record):
        return ctx.violated("the expired record was returned")
    return ctx.passed(f"{len(got)} records, the expired one not among them")


# §12.3.4 and §12.5.1: the shape of a put -----------------------------------------------------


@dht_case(
    "12.3.4/1",
    description="dht.put without a record field",
    requirement=R_12_3_4_1,
    expected="RESET(BAD_REQUEST)",
)
async def put_without_record(ctx: CaseContext, dht: DhtClient) -> Outcome:
    return expect_code(ctx, await dht.call("dht.put", {"value": 1}), ErrorCode.BAD_REQUEST)


def _schema_faults() -> list[tuple[str, Any]]:
    wire = named().to_wire()
    without_sig = {k: v for k, v in wire.items() if k != "sig"}
    return [
        ("a ninth field", {**wire, "extra": 1}),
        ("no sig field", without_sig),
        ("a negative seq", {**wire, "seq": -1}),
        ("a 63-byte sig", {**wire, "sig": wire["sig"][:63]}),
        ("a float in the value", {**wire, "value": {"x": 1.5}}),
        ("a key of 31 bytes", {**wire, "key": wire["key"][:31]}),
        ("a str name", {**wire, "name": "conformance"}),
        ("a publisher that is no Ed25519 key", {**wire, "publisher": bytes(32)}),
        ("an array in place of the map", [wire]),
    ]


def _register_schema(ordinal: int, what: str, wire: Any) -> None:
    async def run(ctx: CaseContext, dht: DhtClient) -> Outcome:
        reply = await dht.call("dht.put", {"record": wire})
        return expect_code(ctx, reply, ErrorCode.RECORD_INVALID)

    dht_case(
        f"12.3.4/{ordinal}",
        description=f"dht.put of a record with {what}",
        requirement=R_12_3_4_1 + QUOTE_GAP + R_12_5_1_SCHEMA,
        expected="RESET(RECORD_INVALID)",
    )(run)


for _i, (_what, _wire) in enumerate(_schema_faults()):
    _register_schema(2 + _i, _what, _wire)


@dht_case(
    "12.3.4/11",
    description="dht.put of a record with a bad signature into an empty slot; dht.get",
    requirement=R_12_3_4_2,
    expected="the put is refused and the record is not returned",
)
async def invalid_not_stored(ctx: CaseContext, dht: DhtClient) -> Outcome:
    record = forge(named(), value="forged")
    await dht.put(record)  # the answer is judged by 12.5.3/7
    got = await _records(ctx, dht, record.key)
    if isinstance(got, Outcome):
        return got
    if _in_slot(got, record):
        return ctx.violated("the record with a bad signature was stored and returned")
    return ctx.passed("not returned")


@dht_case(
    "12.3.4/12",
    description="dht.put of a valid named record; dht.get of its key",
    requirement=R_12_3_4_3,
    expected="{} for the put; the record in the get",
)
async def put_then_get(ctx: CaseContext, dht: DhtClient) -> Outcome:
    record = named(value={"n": 1})
    if (bad := await _stored(ctx, dht, record)) is not None:
        return bad
    got = await _records(ctx, dht, record.key)
    if isinstance(got, Outcome):
        return got
    if record.to_wire() not in got:
        return ctx.violated(f"the record is not in the answer: {got!r}")
    return ctx.passed("the record came back")


# §12.5.3: validation, one check at a time, then their order ----------------------------------


def _foreign(expires: int | None = None) -> Record:
    return signed(fresh(), key=os.urandom(32), subkey=fresh().peer_id.raw, expires=expires)


#: (what, the rule, a maker of the record, the code): records are made when the case runs,
#: since their validity depends on the time.
_VALIDATION_FAULTS: list[tuple[str, str, Callable[[], Record], ErrorCode]] = [
    ("a value of 5000 bytes", R_SIZE, lambda: named(value="x" * 5000), ErrorCode.RECORD_TOO_LARGE),
    ("a name of 65 bytes", R_SIZE, lambda: named(name=b"n" * 65), ErrorCode.RECORD_TOO_LARGE),
    (
        "a dictionary record whose subkey is another peer",
        R_SLOT,
        _foreign,
        ErrorCode.RECORD_FOREIGN_SUBKEY,
    ),
    (
        "a dictionary record with a name",
        R_SLOT,
        lambda: dictionary(name=b"n"),
        ErrorCode.RECORD_INVALID,
    ),
    (
        "an expires in the past",
        R_LIFETIME,
        lambda: named(expires=unix() - 10),
        ErrorCode.RECORD_EXPIRED,
    ),
    (
        "an expires 25 hours ahead",
        R_LIFETIME,
        lambda: named(expires=unix() + _TOO_FAR),
        ErrorCode.RECORD_INVALID,
    ),
    (
        "a bad signature",
        R_SIGNATURE,
        lambda: forge(named(), seq=2),
        ErrorCode.RECORD_BAD_SIGNATURE,
    ),
    (
        "a value of 5000 bytes and a bad signature",
        R_SIZE + QUOTE_GAP + R_SIGNATURE,
        lambda: forge(named(value="x" * 5000), seq=2),
        ErrorCode.RECORD_TOO_LARGE,
    ),
    (
        "a foreign subkey and an expires in the past",
        R_SLOT + QUOTE_GAP + R_LIFETIME,
        lambda: _foreign(unix() - 10),
        ErrorCode.RECORD_FOREIGN_SUBKEY,
    ),
    (
        "an expires in the past and a bad signature",
        R_LIFETIME + QUOTE_GAP + R_SIGNATURE,
        lambda: forge(named(expires=unix() - 10), seq=2),
        ErrorCode.RECORD_EXPIRED,
    ),
]


def _register_validation(
    ordinal: int, what: str, rule: str, make: Callable[[], Record], code: ErrorCode
) -> None:
    async def run(ctx: CaseContext, dht: DhtClient) -> Outcome:
        return expect_code(ctx, await dht.put(make()), code)

    dht_case(
        f"12.5.3/{ordinal}",
        description=f"dht.put of a record with {what}",
        requirement=R_12_5_3 + QUOTE_GAP + rule,
        expected=f"RESET({code.name})",
    )(run)


for _i, (_what, _rule, _make, _code) in enumerate(_VALIDATION_FAULTS):
    _register_validation(1 + _i, _what, _rule, _make, _code)


@dht_case(
    "12.5.1/1",
    description="dht.put of a named record whose key is not SHA-256(publisher ‖ name)",
    requirement=R_12_5_1_NAMED + QUOTE_GAP + R_SLOT,
    expected="RESET(RECORD_INVALID)",
)
async def named_key_mismatch(ctx: CaseContext, dht: DhtClient) -> Outcome:
    identity = fresh()
    record = signed(identity, key=os.urandom(32), name=b"conformance")
    return expect_code(ctx, await dht.put(record), ErrorCode.RECORD_INVALID)


@case(
    "12.5.5/1",
    description="our own reader gets a dht.get answer holding a forged record with a "
    "higher seq, a record under another key, and a valid record",
    requirement=R_12_5_5_1 + QUOTE_GAP + R_12_5_5_2,
    expected="only the valid record is selected",
    self_check=True,
)
async def our_reader_validates(ctx: CaseContext) -> Outcome:
    key, server = os.urandom(32), fresh()
    contact = Contact(peer_id=server.peer_id, host="127.0.0.1", port=1)
    lookup = Lookup(key, [contact], value=True, clock_offset=time.time())
    lookup.start(0.0)
    good = dictionary(key=key)
    forged = forge(good, seq=2, value="forged")
    elsewhere = dictionary()
    body = {"records": [r.to_wire() for r in (forged, elsewhere, good)], "nodes": []}
    lookup.on_response(server.peer_id, body, 0.0)
    chosen = lookup.result().records
    if chosen != (good,):
        return ctx.violated(f"our reader selected {chosen!r}")
    return ctx.passed("only the valid record was selected")


# §12.6: storage -------------------------------------------------------------------------------


@dht_case(
    "12.6/1",
    description="a valid record (seq 1), then the same slot at seq 2 with a bad signature; dht.get",
    requirement=R_12_6_1,
    expected="RESET(RECORD_BAD_SIGNATURE); the get returns seq 1",
)
async def invalid_does_not_replace(ctx: CaseContext, dht: DhtClient) -> Outcome:
    record = named(seq=1)
    if (bad := await _stored(ctx, dht, record)) is not None:
        return bad
    outcome = expect_code(ctx, await dht.put(forge(record, seq=2)), ErrorCode.RECORD_BAD_SIGNATURE)
    return await _holds(ctx, dht, record, outcome)


async def _holds(ctx: CaseContext, dht: DhtClient, record: Record, outcome: Outcome) -> Outcome:
    """``outcome`` unless the target's copy of ``record``'s slot is not ``record``."""
    got = await _records(ctx, dht, record.key)
    if isinstance(got, Outcome):
        return got
    copies = _in_slot(got, record)
    if copies != [record.to_wire()]:
        held = [(c.get("seq"), c.get("expires"), c.get("value")) for c in copies]
        want = (record.seq, record.expires, record.value)
        return ctx.violated(f"the slot holds (seq, expires, value) {held!r}, not {want!r}")
    return outcome


def _register_downgrade(ordinal: int, what: str, changes: dict[str, Any]) -> None:
    async def run(ctx: CaseContext, dht: DhtClient) -> Outcome:
        identity, expires = fresh(), unix() + 600
        record = named(identity, seq=5, value="first", expires=expires)
        if (bad := await _stored(ctx, dht, record)) is not None:
            return bad
        worse = named(identity, **{"seq": 5, "value": "first", "expires": expires, **changes})
        outcome = expect_code(ctx, await dht.put(worse), ErrorCode.RECORD_SEQ_TOO_LOW)
        return await _holds(ctx, dht, record, outcome)

    dht_case(
        f"12.6/{ordinal}",
        description=f"a valid record at seq 5, then the same slot with {what}",
        requirement=R_12_6_2,
        expected="RESET(RECORD_SEQ_TOO_LOW); the get returns the first record",
    )(run)


_register_downgrade(2, "seq 4", {"seq": 4})
_register_downgrade(3, "seq 5 and a bytewise smaller value", {"value": "fir"})


def _register_same_seq(ordinal: int, what: str, delta: int, replaced: bool) -> None:
    async def run(ctx: CaseContext, dht: DhtClient) -> Outcome:
        identity, expires = fresh(), unix() + 600
        record = named(identity, seq=3, expires=expires)
        if (bad := await _stored(ctx, dht, record)) is not None:
            return bad
        again = named(identity, seq=3, expires=expires + delta)
        reply = await dht.put(again)
        if reply.kind != "answer" or reply.body != {}:
            return ctx.violated(f"the same record with {what} got {reply.describe()}")
        return await _holds(ctx, dht, again if replaced else record, ctx.passed("{}"))

    dht_case(
        f"12.6/{ordinal}",
        description=f"a valid record, then the same seq and value with {what}",
        requirement=R_12_6_3_HIGHER if replaced else R_12_6_3_SAME,
        expected="{}; the get returns the " + ("new" if replaced else "first") + " expires",
    )(run)


_register_same_seq(4, "a later expires", 60, replaced=True)
_register_same_seq(5, "an earlier expires", -60, replaced=False)


@dht_case(
    "12.6/6",
    description="a valid record at seq 1, then seq 2 with another value",
    requirement=R_12_6_3_HIGHER,
    expected="{}; the get returns seq 2",
)
async def higher_seq_replaces(ctx: CaseContext, dht: DhtClient) -> Outcome:
    identity = fresh()
    if (bad := await _stored(ctx, dht, named(identity, seq=1, value="a"))) is not None:
        return bad
    newer = named(identity, seq=2, value="b")
    if (bad := await _stored(ctx, dht, newer)) is not None:
        return bad
    return await _holds(ctx, dht, newer, ctx.passed("seq 2 replaced seq 1"))


@dht_case(
    "12.6/7",
    description=f"{MAX_RECORDS + 1} publishers put dictionary records under one key; dht.get",
    requirement=R_12_6_4 + QUOTE_GAP + R_12_3_3_2,
    expected=f"at most {MAX_RECORDS} accepted, every refusal QUOTA_EXCEEDED, at most "
    f"{MAX_RECORDS} returned",
    timeout=20.0,
)
async def records_per_key(ctx: CaseContext, dht: DhtClient) -> Outcome:
    key = os.urandom(32)
    accepted = 0
    for i in range(MAX_RECORDS + 1):
        reply = await dht.put(dictionary(key=key, value=i))
        if reply.kind == "answer" and reply.body == {}:
            accepted += 1
        elif reply.kind != "reset" or reply.code != ErrorCode.QUOTA_EXCEEDED:
            return ctx.violated(f"put {i + 1}: {reply.describe()}")
    got = await _records(ctx, dht, key)
    if isinstance(got, Outcome):
        return got
    if accepted > MAX_RECORDS or len(got) > MAX_RECORDS:
        return ctx.violated(f"{accepted} puts accepted, {len(got)} records returned")
    return ctx.passed(f"{accepted} accepted, the rest QUOTA_EXCEEDED; {len(got)} returned")


@dht_case(
    "12.6/8",
    description=f"a record at seq 5 that lives {_SHORT_LIFE} s; after it expired, seq 1 "
    "for the same slot; dht.get",
    requirement=R_12_6_6,
    expected="{} for seq 1; the get returns seq 1",
    timeout=_SHORT_LIFE + _MARGIN + 3,
)
async def expired_frees_slot(ctx: CaseContext, dht: DhtClient) -> Outcome:
    identity = fresh()
    first = named(identity, seq=5, expires=unix() + _SHORT_LIFE)
    if (bad := await _stored(ctx, dht, first)) is not None:
        return bad
    await _sleep_past(first.expires)
    later = named(identity, seq=1)
    if (bad := await _stored(ctx, dht, later)) is not None:
        return bad
    return await _holds(ctx, dht, later, ctx.passed("the expired record freed its slot"))


# §12.5.4 with §12.6: storage follows selection ----------------------------------------------


def _two_values(identity_seq: int = 9) -> tuple[Record, Record]:
    """Two valid records of one slot with equal seq and expires: (smaller, greater value)."""
    identity, expires = fresh(), unix() + 600
    low = named(identity, seq=identity_seq, value="a", expires=expires)
    high = named(identity, seq=identity_seq, value="b", expires=expires)
    return low, high


@dht_case(
    "12.6/9",
    description='a valid record with value "a", then the same slot, seq and expires with '
    'the bytewise greater value "b"; dht.get',
    requirement=R_12_5_4 + QUOTE_GAP + R_12_6_3_HIGHER,
    expected='{} for both puts; the get returns "b"',
)
async def greater_value_replaces(ctx: CaseContext, dht: DhtClient) -> Outcome:
    low, high = _two_values()
    for record in (low, high):
        if (bad := await _stored(ctx, dht, record)) is not None:
            return bad
    return await _holds(ctx, dht, high, ctx.passed("the greater value replaced the smaller"))


@dht_case(
    "12.6/10",
    description='a valid record with value "b", then the same slot, seq and expires with '
    'the bytewise smaller value "a"; dht.get',
    requirement=R_12_5_4 + QUOTE_GAP + R_12_6_2,
    expected='RESET(RECORD_SEQ_TOO_LOW) for the second put; the get returns "b"',
)
async def smaller_value_refused(ctx: CaseContext, dht: DhtClient) -> Outcome:
    low, high = _two_values()
    if (bad := await _stored(ctx, dht, high)) is not None:
        return bad
    outcome = expect_code(ctx, await dht.put(low), ErrorCode.RECORD_SEQ_TOO_LOW)
    return await _holds(ctx, dht, high, outcome)


@dht_case(
    "12.6/11",
    description='a valid record with value "a", then the same slot and seq with the '
    'greater value "b" but an earlier expires; dht.get',
    requirement=R_12_5_4 + QUOTE_GAP + R_12_6_2,
    expected='RESET(RECORD_SEQ_TOO_LOW) for the second put; the get returns "a"',
)
async def greater_value_earlier_expiry_refused(ctx: CaseContext, dht: DhtClient) -> Outcome:
    identity, expires = fresh(), unix() + 600
    low = named(identity, seq=4, value="a", expires=expires)
    if (bad := await _stored(ctx, dht, low)) is not None:
        return bad
    high = named(identity, seq=4, value="b", expires=expires - 60)
    outcome = expect_code(ctx, await dht.put(high), ErrorCode.RECORD_SEQ_TOO_LOW)
    return await _holds(ctx, dht, low, outcome)


# §3.3 in records: small-order publishers, small-order R, non-canonical S ---------------------


def _small_order_record(key: bytes) -> Record:
    """A named record published by the small-order point ``key``, with a signature the
    RFC 8032 equation accepts (R of small order, S = 0): only the name varies until one fits."""
    publisher = PeerId(key, None)  # type: ignore[arg-type]  # built past the key check
    for n in range(1000):
        name = b"conformance-%d" % n
        unsigned = Record(
            key=named_key(publisher, name),
            subkey=b"",
            name=name,
            value="forged",
            seq=1,
            expires=unix() + 600,
            publisher=publisher,
            signature=bytes(64),
        )
        signature = forge_small_order(key, unsigned.signed_bytes)
        if signature is not None:
            return forge(unsigned, signature=signature)
    raise AssertionError("no forgeable name in 1000 tries")  # each try fits with p >= 1/2


def _register_small_order_publisher(ordinal: int, key: bytes) -> None:
    async def run(ctx: CaseContext, dht: DhtClient) -> Outcome:
        record = _small_order_record(key)
        outcome = expect_code(ctx, await dht.put(record), ErrorCode.RECORD_INVALID)
        got = await _records(ctx, dht, record.key)
        if isinstance(got, Outcome):
            return got
        if _in_slot(got, record):
            return ctx.violated("the record of a small-order publisher was stored")
        return outcome

    dht_case(
        f"12.5.1/{ordinal}",
        description=f"dht.put of a named record whose publisher is the small-order point "
        f"{key.hex()}, with a signature the RFC 8032 equation accepts (R small order, S = 0)",
        requirement=R_12_5_1_PUBLISHER + QUOTE_GAP + R_3_3_VALID_KEY,
        expected="RESET(RECORD_INVALID); the record is not returned",
    )(run)


for _i, _key in enumerate(SMALL_ORDER_POINTS):
    _register_small_order_publisher(2 + _i, _key)


def _resigned(make_sig: Callable[[Any, bytes], bytes]) -> Record:
    identity = fresh()
    record = named(identity, value="resigned")
    return forge(record, signature=make_sig(identity, record.signed_bytes))


def _register_bad_encoding(
    ordinal: int, what: str, make_sig: Callable[[Any, bytes], bytes]
) -> None:
    async def run(ctx: CaseContext, dht: DhtClient) -> Outcome:
        record = _resigned(make_sig)
        outcome = expect_code(ctx, await dht.put(record), ErrorCode.RECORD_BAD_SIGNATURE)
        got = await _records(ctx, dht, record.key)
        if isinstance(got, Outcome):
            return got
        if _in_slot(got, record):
            return ctx.violated(f"the record with {what} was stored")
        return outcome

    dht_case(
        f"12.5.3/{ordinal}",
        description=f"dht.put of a record signed by its publisher with {what}",
        requirement=R_12_5_3 + QUOTE_GAP + R_SIGNATURE + QUOTE_GAP + R_3_3_VALID_SIG,
        expected="RESET(RECORD_BAD_SIGNATURE); the record is not returned",
    )(run)


_register_bad_encoding(
    11, "R the identity point and S = k·a (the RFC 8032 equation holds)", identity_r_signature
)
_register_bad_encoding(
    12, "S + L in place of S", lambda identity, data: non_canonical_s(identity.sign(data))
)
