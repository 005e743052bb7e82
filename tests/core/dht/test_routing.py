"""The routing table: buckets, old-node preference, diversity, refresh (SPEC.md §12.4)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petalproto.core.dht import (
    Contact,
    Ping,
    RefreshDue,
    RoutingConfig,
    RoutingTable,
    SendRequest,
    common_prefix_length,
    node_id_of,
)

from .factories import contact, host_of, in_bucket, peer

OWNER = 0


def _table(**config: Any) -> RoutingTable:
    return RoutingTable(
        peer(OWNER), random_bytes=os.urandom, now=0.0, config=RoutingConfig(**config)
    )


def test_empty_table() -> None:
    table = _table()
    assert len(table) == 0
    assert table.closest(123, 20) == []
    assert table.next_deadline() is None
    assert table.handle_timer(1e9) == []
    assert table.get(peer(1)) is None and peer(1) not in table
    assert "not a peer" not in table


def test_observe_adds_and_ignores_ourselves() -> None:
    table = _table()
    assert table.observe(contact(1), 0.0) == []
    assert table.observe(contact(OWNER), 0.0) == []
    assert len(table) == 1 and peer(1) in table
    assert table.get(peer(1)) == contact(1)
    assert list(table.contacts()) == [contact(1)]
    assert table.record_failure(peer(OWNER), 0.0) is False
    assert table.bucket_of(node_id_of(peer(OWNER))) == 256


def test_contacts_land_in_the_bucket_of_their_cpl() -> None:
    table = _table()
    for index in range(4):
        for i in in_bucket(OWNER, index, 2):
            table.observe(contact(i), 0.0)
            assert table.bucket_of(contact(i).node_id) == index


def test_old_node_preference() -> None:
    """A full bucket pings its least recently seen contact and keeps it if it answers."""
    table = _table(k=3)
    old, newcomer, later = in_bucket(OWNER, 0, 3), *in_bucket(OWNER, 0, 2, start=5000)
    for i in old:
        assert table.observe(contact(i), 1.0) == []
    table.observe(contact(old[0]), 2.0)  # old[0] is now the most recently seen
    commands = table.observe(contact(newcomer), 3.0)
    assert commands == [SendRequest(peer=contact(old[1]), message=Ping())]
    assert table.observe(contact(later), 3.5) == []  # one ping per bucket at a time
    table.observe(contact(old[1]), 4.0)  # the ping was answered
    assert peer(newcomer) not in table and peer(old[1]) in table
    # the next newcomer pings the next oldest; when that ping fails, it is replaced
    commands = table.observe(contact(newcomer), 5.0)
    assert commands == [SendRequest(peer=contact(old[2]), message=Ping())]
    assert table.record_failure(peer(old[2]), 6.0) is True
    assert peer(old[2]) not in table and peer(newcomer) in table  # the newest replacement
    assert len(table) == 3


def test_failures_evict_after_max_failures_and_answers_reset_them() -> None:
    table = _table(max_failures=2)
    table.observe(contact(1), 0.0)
    assert table.record_failure(peer(1), 1.0) is False
    table.observe(contact(1), 2.0)
    assert table.record_failure(peer(1), 3.0) is False
    assert table.record_failure(peer(1), 4.0) is True
    assert peer(1) not in table
    assert table.record_failure(peer(1), 5.0) is False  # unknown now
    assert table.record_failure(peer(2), 5.0) is False  # a never-used bucket


def test_failure_of_a_replacement_drops_it() -> None:
    table = _table(k=1)
    a, b = in_bucket(OWNER, 0, 2)
    table.observe(contact(a), 0.0)
    table.observe(contact(b), 0.0)  # cached, a is pinged
    table.record_failure(peer(b), 0.0)  # the replacement itself failed somewhere
    assert table.record_failure(peer(a), 1.0) is True
    assert len(table) == 0


def test_replacement_cache_is_bounded_and_newest_first() -> None:
    table = _table(k=1, replacement_cache=2)
    first, *cached = in_bucket(OWNER, 0, 4)
    table.observe(contact(first), 0.0)
    for i in cached:
        table.observe(contact(i), 1.0)
    table.observe(contact(cached[1]), 1.5)  # seen again: moves to the newest end
    table.remove(peer(first))
    assert list(table.contacts()) == [contact(cached[1])]
    table.remove(peer(cached[1]))
    assert list(table.contacts()) == [contact(cached[2])]  # cached[0] fell out of the cache
    assert table.remove(peer(first)) is False


def test_per_bucket_prefix_limit() -> None:
    table = _table()
    members = in_bucket(OWNER, 0, 4)
    for n, i in enumerate(members):
        table.observe(contact(i, host=f"30.1.2.{n + 1}"), 0.0)
    assert len(table) == 2  # at most 2 per /24 in a bucket
    other = in_bucket(OWNER, 1, 1)[0]
    table.observe(contact(other, host="30.1.2.99"), 0.0)
    assert len(table) == 3  # another bucket has its own /24 budget


def test_per_table_prefix_limit() -> None:
    table = _table()
    members = [i for index in range(4) for i in in_bucket(OWNER, index, 5)]
    for n, i in enumerate(members):
        table.observe(contact(i, host=f"40.7.{n}.1"), 0.0)  # one /16, many /24s
    assert len(table) == 10


def test_ipv6_and_mapped_addresses_are_grouped() -> None:
    table = _table()
    members = in_bucket(OWNER, 0, 4)
    table.observe(contact(members[0], host="2001:db8::1"), 0.0)
    table.observe(contact(members[1], host="2001:db8::2"), 0.0)
    table.observe(contact(members[2], host="2001:db8::3"), 0.0)  # third in the /64
    assert len(table) == 2
    mapped = _table()
    mapped.observe(contact(members[0], host="50.0.0.1"), 0.0)
    mapped.observe(contact(members[1], host="::ffff:50.0.0.2"), 0.0)
    mapped.observe(contact(members[2], host="50.0.0.3"), 0.0)
    assert len(mapped) == 2


def test_loopback_is_exempt_by_default_and_private_on_request() -> None:
    members = in_bucket(OWNER, 0, 5)
    table = _table()
    for i in members:
        table.observe(contact(i, host="127.0.0.1", port=4000 + i), 0.0)
    table.observe(contact(in_bucket(OWNER, 1, 1)[0], host="::1"), 0.0)
    assert len(table) == 6
    strict = _table(exempt_loopback=False)
    for i in members:
        strict.observe(contact(i, host="127.0.0.1", port=4000 + i), 0.0)
    assert len(strict) == 2
    private = _table(exempt_private=True)
    for i in members:
        private.observe(contact(i, host="192.168.1.1", port=4000 + i), 0.0)
    private.observe(contact(in_bucket(OWNER, 1, 1)[0], host="fd00::1"), 0.0)
    private.observe(contact(in_bucket(OWNER, 2, 1)[0], host="2001:db8::1"), 0.0)
    assert len(private) == 7


def test_promotion_respects_diversity() -> None:
    table = _table(k=2)
    a, b, c, d = in_bucket(OWNER, 0, 4)
    table.observe(contact(a, host="60.0.0.1"), 0.0)
    table.observe(contact(b, host="60.0.0.2"), 0.0)
    table.observe(contact(c, host="60.0.0.3"), 0.0)  # refused: third in the /24
    table.observe(contact(d, host="61.0.0.1"), 0.0)  # cached
    table.remove(peer(a))
    assert set(table.contacts()) == {contact(b, host="60.0.0.2"), contact(d, host="61.0.0.1")}


def test_address_change_follows_the_peer_if_diversity_allows() -> None:
    table = _table()
    a, b, c = in_bucket(OWNER, 0, 3)
    table.observe(contact(a, host="70.0.0.1"), 0.0)
    table.observe(contact(b, host="70.0.1.1"), 0.0)
    table.observe(contact(c, host="70.0.1.2"), 0.0)
    table.observe(contact(a, host="70.0.2.1", port=99), 1.0)
    assert table.get(peer(a)) == contact(a, host="70.0.2.1", port=99)
    table.observe(contact(a, host="70.0.1.3"), 2.0)  # that /24 is full in this bucket
    assert table.get(peer(a)) == contact(a, host="70.0.2.1", port=99)


def test_closest_matches_brute_force() -> None:
    table = _table()
    contacts = [contact(i) for i in range(1, 300)]
    for c in contacts:
        table.observe(c, 0.0)
    stored = list(table.contacts())
    for target in [0, node_id_of(peer(OWNER)), node_id_of(peer(5)), (1 << 256) - 1, 1 << 255]:
        expected = sorted(stored, key=lambda c: c.node_id ^ target)
        for n in (1, 5, 20, 1000):
            assert table.closest(target, n) == expected[:n]
    target = node_id_of(peer(5))
    assert table.closest(target, 1, exclude=peer(5))[0].peer_id != peer(5)


@settings(max_examples=40, deadline=None)
@given(
    members=st.lists(st.integers(1, 400), unique=True, max_size=120),
    target=st.integers(0, (1 << 256) - 1),
    n=st.integers(1, 40),
)
def test_closest_is_sorted_and_exact(members: list[int], target: int, n: int) -> None:
    table = _table(k=20)
    for i in members:
        table.observe(contact(i), 0.0)
    stored = list(table.contacts())
    got = table.closest(target, n)
    assert got == sorted(stored, key=lambda c: c.node_id ^ target)[:n]
    assert len(table) == len(stored) <= len(members)


def test_refresh_deadlines_and_targets() -> None:
    table = _table(refresh_interval=100.0)
    for index in range(3):
        table.observe(contact(in_bucket(OWNER, index, 1)[0]), 0.0)
    assert table.next_deadline() == 100.0
    assert table.handle_timer(99.0) == []  # early: harmless
    table.mark_refreshed(table.random_id_in(1), 50.0)
    table.mark_refreshed(node_id_of(peer(OWNER)), 50.0)  # our own id: no bucket
    due = table.handle_timer(120.0)
    assert [d.bucket for d in due] == [0, 2]
    for d in due:
        assert isinstance(d, RefreshDue)
        assert common_prefix_length(node_id_of(peer(OWNER)), d.target) == d.bucket
    assert table.next_deadline() == 150.0
    assert [d.bucket for d in table.handle_timer(1000.0)] == [0, 1, 2]  # late: harmless


def test_refresh_covers_untouched_buckets_below_the_deepest() -> None:
    table = _table(refresh_interval=10.0)
    table.observe(contact(in_bucket(OWNER, 3, 1)[0]), 0.0)
    assert [d.bucket for d in table.handle_timer(10.0)] == [0, 1, 2, 3]


def test_random_id_in_range() -> None:
    table = _table()
    for index in (0, 100, 255):
        target = table.random_id_in(index)
        assert common_prefix_length(node_id_of(peer(OWNER)), target) == index
    with pytest.raises(ValueError, match=r"0\.\.255"):
        table.random_id_in(256)


def test_host_factory_spreads_prefixes() -> None:
    assert len({host_of(i).rsplit(".", 2)[0] for i in range(600)}) == 600
    assert isinstance(contact(1), Contact)


def test_a_replacement_that_no_longer_fits_is_not_promoted() -> None:
    table = _table(k=1, table_prefix_limit=1)
    a, c = in_bucket(OWNER, 0, 2)
    table.observe(contact(a, host="70.0.0.1"), 0.0)
    table.observe(contact(c, host="71.0.0.1"), 0.0)  # cached: its /16 is empty
    table.observe(contact(in_bucket(OWNER, 1, 1)[0], host="71.0.5.1"), 0.0)  # now it is not
    table.remove(peer(a))
    assert peer(c) not in table and len(table) == 1
