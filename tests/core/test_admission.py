"""The admission policy of a listener (SPEC.md §9.3), with plain numbers for time."""

from __future__ import annotations

import pytest

from petalproto.core import (
    Activity,
    Admission,
    Admitted,
    Limits,
    LocalProtocolError,
    Promoted,
    RefusalReason,
    Refused,
    source_of,
)

SMALL = Limits(
    handshake_timeout=5.0,
    max_pending=4,
    pending_per_address=1,
    pending_per_prefix=2,
    max_established=4,
    established_per_address=1,
    established_per_prefix=2,
    shed_idle_after=10.0,
)


def admitted(admission: Admission, address: str, now: float = 0.0) -> Admitted:
    verdict = admission.admit(address, now)
    assert isinstance(verdict, Admitted), verdict
    return verdict


def established(admission: Admission, address: str, now: float = 0.0) -> int:
    ticket = admitted(admission, address, now).ticket
    assert admission.promote(ticket, now, _never_asked) == Promoted()
    return ticket


def _never_asked(ticket: int) -> Activity:
    raise AssertionError("activity is asked only when the table is full")


# -- sources ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "source"),
    [
        ("10.1.2.3", ("10.1.2.3", "10.1.2.0/24")),
        ("::ffff:10.1.2.3", ("10.1.2.3", "10.1.2.0/24")),
        ("2001:db8:1:2:3::4", ("2001:db8:1:2:3::4", "2001:db8:1:2::/64")),
        ("127.0.1.2", ("127.0.1.2", "127.0.1.0/24")),
        (None, ("", "")),
        ("not an address", ("not an address", "not an address")),
    ],
)
def test_sources(address: str | None, source: tuple[str, str]) -> None:
    assert source_of(address) == source


@pytest.mark.parametrize(
    "kwargs",
    [
        {"handshake_timeout": 0.0},
        {"shed_idle_after": -1.0},
        {"pending_per_address": 0},
        {"pending_per_address": 20, "pending_per_prefix": 16},
        {"established_per_prefix": 600},
    ],
)
def test_bad_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_reference_values() -> None:
    limits = Limits()
    assert (limits.handshake_timeout, limits.max_pending, limits.max_established) == (5.0, 64, 512)
    assert (limits.pending_per_address, limits.pending_per_prefix) == (8, 16)
    assert (limits.established_per_address, limits.established_per_prefix) == (64, 128)


# -- pending ----------------------------------------------------------------------------


def test_admitted_with_a_deadline_and_fresh_tickets() -> None:
    admission = Admission()
    first = admitted(admission, "10.0.0.1", now=3.0)
    second = admitted(admission, "10.0.0.1", now=4.0)
    assert first.handshake_deadline_at == 8.0
    assert first.shed is None
    assert second.ticket != first.ticket
    assert admission.pending == 2


def test_shares_do_not_bite_while_there_is_room() -> None:
    # A local swarm: everything on 127.0.0.1, far over the per-address share.
    admission = Admission(SMALL)
    for _ in range(SMALL.max_pending):
        admitted(admission, "127.0.0.1")
    assert admission.pending == SMALL.max_pending
    assert not admission.refused


def test_a_full_table_sheds_the_oldest_of_the_flooding_address() -> None:
    admission = Admission(SMALL)
    flood = [admitted(admission, "10.9.9.9", now=float(i)).ticket for i in range(3)]
    admitted(admission, "10.8.0.1", now=3.0)
    verdict = admitted(admission, "192.0.2.1", now=4.0)
    assert verdict.shed == flood[0]
    assert admission.pending == SMALL.max_pending
    assert admission.shed == 1


def test_the_flooder_itself_is_refused_when_full() -> None:
    admission = Admission(SMALL)
    for i in range(4):
        admitted(admission, "10.9.9.9", now=float(i))
    assert admission.admit("10.9.9.9", 5.0) == Refused(reason=RefusalReason.OVER_SHARE)
    # ... and its neighbours in the same /24 too: the prefix is over its share.
    assert admission.admit("10.9.9.10", 5.0) == Refused(reason=RefusalReason.OVER_SHARE)
    assert admission.refused[RefusalReason.OVER_SHARE] == 2


def test_the_prefix_pays_before_its_biggest_address() -> None:
    admission = Admission(SMALL)
    # Prefix 10.9.9.0/24 holds 3 (over 2) across three addresses, each within its share.
    spread = [admitted(admission, f"10.9.9.{i}", now=float(i)).ticket for i in range(3)]
    admitted(admission, "10.1.1.1", now=3.0)
    assert admitted(admission, "10.2.2.2", now=4.0).shed == spread[0]


def test_an_address_over_share_within_its_prefix() -> None:
    limits = Limits(max_pending=4, pending_per_address=1, pending_per_prefix=4)
    admission = Admission(limits)
    a = admitted(admission, "10.0.0.1", now=0.0).ticket
    admitted(admission, "10.0.0.1", now=1.0)
    admitted(admission, "10.0.1.1", now=2.0)
    admitted(admission, "10.0.2.1", now=3.0)
    # 10.0.0.1 holds 2 > 1; the other two are within their shares.
    assert admitted(admission, "10.0.3.1", now=4.0).shed == a
    # Then nobody is over: the newcomer is refused.
    assert admission.admit("10.0.4.1", 5.0) == Refused(reason=RefusalReason.PENDING_FULL)


def test_full_of_distinct_sources_refuses_the_newcomer() -> None:
    admission = Admission(SMALL)
    for i in range(4):
        admitted(admission, f"10.{i}.0.1")
    assert admission.admit("10.7.0.1", 0.0) == Refused(reason=RefusalReason.PENDING_FULL)


def test_the_larger_of_two_over_share_sources_pays() -> None:
    limits = Limits(max_pending=6, pending_per_address=1, pending_per_prefix=1)
    admission = Admission(limits)
    small = [admitted(admission, "10.1.0.1", now=float(i)).ticket for i in range(2)]
    big = [admitted(admission, "10.2.0.1", now=float(i)).ticket for i in range(2, 6)]
    assert admitted(admission, "10.3.0.1", now=7.0).shed == big[0]
    assert small


def test_mapped_and_plain_ipv4_are_one_address() -> None:
    admission = Admission(SMALL)
    for _ in range(2):
        admitted(admission, "::ffff:10.9.9.9")
    admitted(admission, "10.1.0.1")
    admitted(admission, "10.2.0.1")
    assert admission.admit("10.9.9.9", 0.0) == Refused(reason=RefusalReason.OVER_SHARE)


def test_release_frees_the_slot_and_is_idempotent() -> None:
    admission = Admission(SMALL)
    tickets = [admitted(admission, "10.9.9.9").ticket for _ in range(4)]
    admission.release(tickets[0])
    admission.release(tickets[0])
    assert admission.pending == 3
    assert admitted(admission, "10.9.9.9").shed is None


# -- established ------------------------------------------------------------------------


def test_promote_moves_a_ticket_and_only_once() -> None:
    admission = Admission(SMALL)
    ticket = established(admission, "10.0.0.1")
    assert (admission.pending, admission.established) == (0, 1)
    with pytest.raises(LocalProtocolError):
        admission.promote(ticket, 1.0, _never_asked)
    admission.release(ticket)
    assert admission.established == 0


def test_a_shed_pending_ticket_cannot_be_promoted() -> None:
    admission = Admission(SMALL)
    old = [admitted(admission, "10.9.9.9", now=float(i)).ticket for i in range(4)]
    admitted(admission, "10.1.0.1", now=5.0)
    with pytest.raises(LocalProtocolError):
        admission.promote(old[0], 6.0, _never_asked)


def test_full_established_sheds_the_flooders_least_active_connection() -> None:
    admission = Admission(SMALL)
    flood = [established(admission, "10.9.9.9", now=float(i)) for i in range(3)]
    good = established(admission, "10.1.0.1", now=3.0)
    activity = {
        flood[0]: Activity(1, 50.0),  # busy: shed last within the flood
        flood[1]: Activity(0, 40.0),
        flood[2]: Activity(0, 30.0),
        good: Activity(0, 3.0),  # idlest of all, but within its share
    }
    newcomer = admitted(admission, "10.2.0.1", now=60.0).ticket
    assert admission.promote(newcomer, 60.0, activity.__getitem__) == Promoted(shed=flood[2])
    assert admission.established == SMALL.max_established


def test_a_busy_over_share_source_still_pays() -> None:
    admission = Admission(SMALL)
    flood = [established(admission, "10.9.9.9", now=float(i)) for i in range(4)]
    activity = {t: Activity(2, 60.0 - t) for t in flood}
    newcomer = admitted(admission, "10.2.0.1", now=60.0).ticket
    verdict = admission.promote(newcomer, 60.0, activity.__getitem__)
    assert verdict == Promoted(shed=max(flood))


def test_the_flooders_own_newcomer_is_refused() -> None:
    admission = Admission(SMALL)
    for i in range(4):
        established(admission, "10.9.9.9", now=float(i))
    newcomer = admitted(admission, "10.9.9.9", now=60.0).ticket
    verdict = admission.promote(newcomer, 60.0, _never_asked)
    assert verdict == Refused(reason=RefusalReason.OVER_SHARE)
    assert admission.established == SMALL.max_established
    assert admission.pending == 0


def test_within_shares_the_longest_idle_makes_room() -> None:
    admission = Admission(SMALL)
    tickets = [established(admission, f"10.{i}.0.1", now=float(i)) for i in range(4)]
    activity = {
        tickets[0]: Activity(1, 0.0),  # open streams: never shed
        tickets[1]: Activity(0, 5.0),  # idle 55 s
        tickets[2]: Activity(0, 2.0),  # idle 58 s: the one
        tickets[3]: Activity(0, 55.0),  # idle 5 s: too fresh
    }
    newcomer = admitted(admission, "10.7.0.1", now=60.0).ticket
    assert admission.promote(newcomer, 60.0, activity.__getitem__) == Promoted(shed=tickets[2])


def test_all_busy_or_fresh_refuses_the_newcomer() -> None:
    admission = Admission(SMALL)
    tickets = [established(admission, f"10.{i}.0.1", now=float(i)) for i in range(4)]
    activity = {t: Activity(t % 2, 55.0) for t in tickets}
    newcomer = admitted(admission, "10.7.0.1", now=60.0).ticket
    verdict = admission.promote(newcomer, 60.0, activity.__getitem__)
    assert verdict == Refused(reason=RefusalReason.ESTABLISHED_FULL)
    assert admission.refused[RefusalReason.ESTABLISHED_FULL] == 1


def test_pending_never_takes_an_established_slot() -> None:
    admission = Admission(SMALL)
    for i in range(4):
        established(admission, f"10.{i}.0.1")
    for i in range(4):
        admitted(admission, f"10.9.{i}.1")
    assert (admission.pending, admission.established) == (4, 4)
