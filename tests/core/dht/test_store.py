"""The record store: sequence rules, quotas, expiry (SPEC.md §12.6)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petalproto.core._errors import ErrorCode
from petalproto.core.dht import (
    Record,
    RecordRejected,
    RecordStore,
    StoreConfig,
    record_rank,
    select_best,
)

from .factories import NOW, dictionary, named, peer, with_fields


def _put_code(store: RecordStore, record: Record, now: float = NOW) -> ErrorCode | None:
    try:
        store.put(record, now)
    except RecordRejected as exc:
        return exc.code
    return None


def test_put_and_get() -> None:
    store = RecordStore()
    a, b = dictionary(1), dictionary(2)
    assert store.put(a, NOW) and store.put(b, NOW)
    assert sorted(store.get(a.key, NOW), key=lambda r: r.subkey) == sorted(
        [a, b], key=lambda r: r.subkey
    )
    assert len(store) == 2
    assert store.get(bytes([9]) * 32, NOW) == []


def test_sequence_rules() -> None:
    store = RecordStore()
    store.put(named(seq=5, value="five"), NOW)
    assert _put_code(store, named(seq=4, value="four")) == ErrorCode.RECORD_SEQ_TOO_LOW
    # "five" encodes as a4 66 69 76 65; "eight" (a5 ...) is greater, "four" (a4 66 6f ...)
    # is greater too, "abcd" (a4 61 ...) is smaller
    assert _put_code(store, named(seq=5, value="abcd")) == ErrorCode.RECORD_SEQ_TOO_LOW
    assert _put_code(store, named(seq=5, value="eight", expires=NOW + 10)) == (
        ErrorCode.RECORD_SEQ_TOO_LOW
    )
    # the same record again, or with an earlier expiry: accepted, nothing changes
    assert store.put(named(seq=5, value="five"), NOW) is False
    assert store.put(named(seq=5, value="five", expires=NOW + 10), NOW) is False
    # the same value and seq with a later expiry is a republish
    assert store.put(named(seq=5, value="five", expires=NOW + 7200), NOW) is True
    assert store.get(named().key, NOW)[0].expires == NOW + 7200
    assert store.put(named(seq=6, value="six"), NOW) is True
    assert [r.value for r in store.get(named().key, NOW)] == ["six"]
    assert len(store) == 1


def test_invalid_records_are_refused_before_anything_else() -> None:
    store = RecordStore()
    assert _put_code(store, with_fields(dictionary(), value="x")) == (
        ErrorCode.RECORD_BAD_SIGNATURE
    )
    assert _put_code(store, dictionary(), NOW + 7200) == ErrorCode.RECORD_EXPIRED
    assert _put_code(store, with_fields(dictionary(1), subkey=peer(2).raw)) == (
        ErrorCode.RECORD_FOREIGN_SUBKEY
    )
    assert len(store) == 0


def test_quotas() -> None:
    store = RecordStore(
        StoreConfig(max_subkeys_per_key=2, max_records_per_publisher=2, max_records=3)
    )
    store.put(dictionary(1), NOW)
    store.put(dictionary(2), NOW)
    assert _put_code(store, dictionary(3)) == ErrorCode.QUOTA_EXCEEDED  # key full
    store.put(dictionary(1, key=b"\x01" * 32), NOW)
    assert _put_code(store, dictionary(1, key=b"\x02" * 32)) == ErrorCode.QUOTA_EXCEEDED
    assert _put_code(store, dictionary(3, key=b"\x02" * 32)) == ErrorCode.QUOTA_EXCEEDED
    # replacing a slot never counts against a quota
    assert store.put(dictionary(1, seq=2), NOW)


def test_expiry_sweep() -> None:
    store = RecordStore()
    short, long_ = dictionary(1, expires=NOW + 10), dictionary(2, expires=NOW + 20)
    store.put(short, NOW)
    store.put(long_, NOW)
    assert store.next_expiry() == NOW + 10
    assert store.sweep(NOW + 9) == 0
    assert store.sweep(NOW + 10) == 1
    assert store.get(short.key, NOW + 10) == [long_]
    assert store.sweep(NOW + 100) == 1
    assert store.next_expiry() is None and len(store) == 0


def test_expired_record_frees_its_slot_for_any_seq() -> None:
    store = RecordStore()
    store.put(named(seq=9, expires=NOW + 10), NOW)
    assert store.put(named(seq=1, expires=NOW + 100), NOW + 20)


def test_replaced_records_leave_stale_heap_entries_that_are_skipped() -> None:
    store = RecordStore()
    for seq in range(1, 40):  # each replacement leaves its predecessor's heap entry behind
        store.put(named(seq=seq, expires=NOW + 100 + seq), NOW)
    assert len(store._expiry) <= 2 * len(store) + 16  # rebuilt, not unbounded
    store.put(named(seq=40, expires=NOW + 200), NOW)
    assert store.sweep(NOW + 199) == 0  # only stale entries were due: skipped
    assert store.sweep(NOW + 200) == 1
    assert list(store.records()) == []


def test_same_expiry_replacement_expires_once() -> None:
    store = RecordStore()
    store.put(named(seq=1, expires=NOW + 10), NOW)
    store.put(named(seq=2, expires=NOW + 10), NOW)
    assert store.sweep(NOW + 10) == 1
    assert len(store) == 0


_ops = st.lists(
    st.tuples(
        st.integers(1, 3),  # publisher
        st.integers(0, 4),  # seq
        st.sampled_from(["a", "b"]),  # value
        st.integers(-5, 50),  # expires - NOW
        st.sampled_from(["ok", "tamper", "forge", "foreign"]),
        st.integers(0, 30),  # time step
    ),
    max_size=25,
)


@settings(max_examples=80, deadline=None)
@given(_ops)
def test_store_never_holds_bad_or_downgraded_records(ops: list[tuple[Any, ...]]) -> None:
    """Property: forged, tampered, expired or lower-seq records are never accepted, and
    what the store serves is exactly the best valid record each publisher put."""
    store = RecordStore()
    now = NOW
    best: dict[int, Record] = {}
    for publisher, seq, value, ttl, kind, step in ops:
        now += step
        record = dictionary(publisher, value=value, seq=seq, expires=NOW + ttl)
        if kind == "tamper":
            record = with_fields(record, value=value + "!")
        elif kind == "forge":
            record = with_fields(record, publisher=peer(9))
        elif kind == "foreign":
            record = with_fields(record, subkey=peer(9).raw)
        code = _put_code(store, record, now)
        current = best.get(publisher)
        if current is not None and current.expires <= now:
            current = best.pop(publisher)
            current = None
        if kind != "ok":
            assert code is not None
        elif record.expires <= now:
            assert code == ErrorCode.RECORD_EXPIRED
        elif current is not None and (
            record.seq < current.seq
            or (
                record.seq == current.seq
                and record.value_bytes != current.value_bytes
                and record_rank(record) < record_rank(current)
            )
        ):
            assert code == ErrorCode.RECORD_SEQ_TOO_LOW
        else:
            assert code is None
            if (
                current is None
                or select_best([current, record])[(record.key, record.subkey)] is record
            ):
                best[publisher] = record
        held = {r.publisher: r for r in store.get(bytes(32), now)}
        assert held == {peer(p): r for p, r in best.items() if r.expires > now}


def test_select_never_picks_a_lower_seq() -> None:
    records = [dictionary(1, seq=s, value=str(s)) for s in (3, 1, 2)]
    assert select_best(records)[(records[0].key, records[0].subkey)].seq == 3


@pytest.mark.parametrize("n", [1, 3])
def test_records_iterates_everything(n: int) -> None:
    store = RecordStore()
    for i in range(n):
        store.put(dictionary(i + 1), NOW)
    assert len(list(store.records())) == n


def test_per_publisher_count_follows_removals() -> None:
    store = RecordStore(StoreConfig(max_records_per_publisher=2))
    store.put(dictionary(1, expires=NOW + 10), NOW)
    store.put(dictionary(1, key=b"\x01" * 32, expires=NOW + 20), NOW)
    assert store.sweep(NOW + 10) == 1
    store.put(dictionary(1, key=b"\x02" * 32), NOW + 10)  # room again for publisher 1
    assert len(store) == 2


def test_the_better_of_two_values_under_one_seq_wins_in_either_order() -> None:
    # SPEC.md §12.5.4 and §12.6 agree: with equal seq and expires the bytewise greater
    # canonical value is stored, whichever copy arrives first, so entry correction converges.
    low, high = named(seq=7, value="a"), named(seq=7, value="b")
    for first, second in ((low, high), (high, low)):
        store = RecordStore()
        assert store.put(first, NOW) is True
        if second is high:
            assert store.put(second, NOW) is True
        else:
            assert _put_code(store, second) == ErrorCode.RECORD_SEQ_TOO_LOW
        assert store.get(low.key, NOW) == [high]


def test_another_value_with_a_later_expiry_replaces() -> None:
    store = RecordStore()
    store.put(named(seq=3, value="b"), NOW)
    later = named(seq=3, value="a", expires=NOW + 7200)
    assert store.put(later, NOW) is True
    assert store.get(later.key, NOW) == [later]
