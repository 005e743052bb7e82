"""The iterative lookup state machine, on a simulated clock (SPEC.md §12.8)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petalproto.core._errors import LocalProtocolError
from petalproto.core._identity import PeerId
from petalproto.core.dht import (
    Contact,
    FindNode,
    Get,
    Lookup,
    LookupCommand,
    PeerMisbehaved,
    Record,
    SendRequest,
    nodes_body,
    select_best,
)

from .factories import NOW, contact, dictionary, named, peer, with_fields

WORLD = [contact(i) for i in range(1, 121)]
TARGET = bytes.fromhex("5a" * 32)
TARGET_ID = int.from_bytes(TARGET, "big")


def _closest(target: int, n: int = 20, exclude: PeerId | None = None) -> list[Contact]:
    return sorted((c for c in WORLD if c.peer_id != exclude), key=lambda c: c.node_id ^ target)[:n]


def _honest(command: SendRequest) -> dict[str, Any]:
    message = command.message
    target = message.target if isinstance(message, FindNode) else message.key  # type: ignore[union-attr]
    nodes = nodes_body(_closest(int.from_bytes(target, "big"), exclude=command.peer.peer_id))
    return {"nodes": nodes, "records": []} if isinstance(message, Get) else {"nodes": nodes}


Answer = Callable[[SendRequest], dict[str, Any] | None]  # None: never answers


def _drive(
    lookup: Lookup, answer: Answer = _honest, now: float = 0.0
) -> tuple[list[SendRequest], list[PeerMisbehaved], float]:
    """Answer requests in order, one at a time; silent peers time out through handle_timer."""
    sent: list[SendRequest] = []
    bad: list[PeerMisbehaved] = []
    queue: list[SendRequest] = []

    def take(commands: list[LookupCommand]) -> None:
        for command in commands:
            if isinstance(command, SendRequest):
                sent.append(command)
                queue.append(command)
            else:
                bad.append(command)

    take(lookup.start(now))
    while not lookup.done:
        answered = False
        while queue:
            command = queue.pop(0)
            body = answer(command)
            if body is not None:
                now += 0.01
                take(lookup.on_response(command.peer.peer_id, body, now))
                answered = True
                break
        if not answered and not lookup.done:
            deadline = lookup.next_deadline()
            assert deadline is not None
            now = deadline
            take(lookup.handle_timer(now))
    return sent, bad, now


def test_finds_the_k_closest() -> None:
    seeds = WORLD[:5]
    lookup = Lookup(TARGET, seeds)
    sent, bad, _ = _drive(lookup)
    result = lookup.result()
    assert [n.contact for n in result.closest] == _closest(TARGET_ID)
    assert result.rpcs == len(sent) and result.failures == 0 and not bad
    assert len({s.peer.peer_id for s in sent}) == len(sent)  # nobody asked twice
    assert all(s.message == FindNode(target=TARGET) for s in sent)
    hops = {n.contact.peer_id: n.hops for n in result.closest}
    assert all(hops.get(c.peer_id, 0) == 0 for c in seeds)
    assert max(hops.values()) >= 1
    assert result.find(result.closest[0].contact.peer_id) is result.closest[0]
    assert result.find(peer(999)) is None
    assert lookup.next_deadline() is None
    assert "done=True" in repr(lookup)


def test_alpha_requests_in_flight() -> None:
    lookup = Lookup(TARGET, WORLD[:10], alpha=3)
    commands = lookup.start(0.0)
    assert len(commands) == 3
    assert lookup.next_deadline() == 2.0
    with pytest.raises(LocalProtocolError):
        lookup.start(0.0)


def test_no_seeds_is_done_at_once() -> None:
    lookup = Lookup(TARGET, [contact(0)], our_id=peer(0))
    assert lookup.start(0.0) == []
    assert lookup.done and lookup.result().closest == ()
    assert lookup.on_response(peer(0), {"nodes": []}, 1.0) == []
    assert lookup.on_failure(peer(0), 1.0) == []
    assert lookup.handle_timer(5.0) == []


def test_terminates_when_the_k_closest_answered_even_with_requests_outstanding() -> None:
    best = _closest(TARGET_ID, 2)
    far1, far2 = sorted(WORLD, key=lambda c: c.node_id ^ TARGET_ID)[-2:]
    lookup = Lookup(TARGET, [far1, far2], k=2, alpha=2)
    assert len(lookup.start(0.0)) == 2
    [ask0] = lookup.on_response(far1.peer_id, {"nodes": nodes_body(best)}, 0.1)
    [ask1] = lookup.on_response(best[0].peer_id, {"nodes": []}, 0.2)
    assert isinstance(ask0, SendRequest) and isinstance(ask1, SendRequest)
    assert [ask0.peer, ask1.peer] == best
    assert lookup.on_response(best[1].peer_id, {"nodes": []}, 0.3) == []
    assert lookup.done  # far2 never answered, and need not
    assert [n.contact for n in lookup.result().closest] == best
    assert [n.hops for n in lookup.result().closest] == [1, 1]


def test_timeouts_free_the_slot_and_late_answers_count() -> None:
    seeds = WORLD[:20]
    silent = set(sorted(seeds, key=lambda c: c.node_id ^ TARGET_ID)[:2])
    lookup = Lookup(TARGET, seeds, alpha=2, request_timeout=1.0)

    commands = [c for c in lookup.start(0.0) if isinstance(c, SendRequest)]
    assert {c.peer for c in commands} == silent  # the seeds closest to the target go first
    assert lookup.handle_timer(0.5) == []  # early: harmless
    replacements = lookup.handle_timer(1.0)
    assert len(replacements) == 2 and lookup.result().failures == 2
    assert lookup.handle_timer(1.0) == []  # twice: harmless
    # one silent peer answers late: it joins the result
    late = commands[0].peer
    lookup.on_response(late.peer_id, {"nodes": []}, 1.5)
    assert lookup.result().find(late.peer_id) is not None
    # the other fails for good: nothing new happens
    assert lookup.on_failure(commands[1].peer.peer_id, 1.6) == []
    assert lookup.on_failure(commands[1].peer.peer_id, 1.7) == []  # repeated: ignored


def test_silent_nodes_are_skipped() -> None:
    dead = {c.peer_id for c in _closest(TARGET_ID, 30)[1::3]}

    def answer(command: SendRequest) -> dict[str, Any] | None:
        return None if command.peer.peer_id in dead else _honest(command)

    lookup = Lookup(TARGET, WORLD[:20])
    _, _, elapsed = _drive(lookup, answer)
    result = lookup.result()
    alive = [c for c in _closest(TARGET_ID, 20) if c.peer_id not in dead]
    assert [n.contact for n in result.closest][: len(alive)] == alive
    assert not dead & {n.contact.peer_id for n in result.closest}
    assert result.failures >= 1 and elapsed >= 2.0


def test_failures_move_on() -> None:
    lookup = Lookup(TARGET, WORLD[:4], alpha=1)
    first = lookup.start(0.0)[0]
    assert isinstance(first, SendRequest)
    nxt = lookup.on_failure(first.peer.peer_id, 0.1)
    assert len(nxt) == 1 and nxt[0] != first
    assert lookup.result().failures == 1


def test_malformed_answers_are_misbehaviour_not_exceptions() -> None:
    lookup = Lookup(TARGET, WORLD[:3], alpha=1)
    first = lookup.start(0.0)[0]
    assert isinstance(first, SendRequest)
    commands = lookup.on_response(first.peer.peer_id, {"nodes": "garbage"}, 0.1)
    assert isinstance(commands[0], PeerMisbehaved)
    assert commands[0].peer == first.peer.peer_id
    assert isinstance(commands[1], SendRequest)
    assert lookup.result().failures == 1
    # an answer from someone we never asked, or asked already, is ignored
    assert lookup.on_response(peer(999), {"nodes": []}, 0.2) == []
    assert lookup.on_response(first.peer.peer_id, {"nodes": []}, 0.2) == []


def test_our_own_id_is_never_contacted() -> None:
    me = WORLD[0]

    def answer(command: SendRequest) -> dict[str, Any]:
        body = _honest(command)
        body["nodes"] = [me.to_wire(), *body["nodes"][:19]]
        return body

    lookup = Lookup(TARGET, WORLD[:10], our_id=me.peer_id)
    sent, _, _ = _drive(lookup, answer)
    assert me.peer_id not in {s.peer.peer_id for s in sent}


def test_disjoint_paths_never_share_a_node() -> None:
    lookup = Lookup(TARGET, WORLD[:20], disjoint_paths=4, alpha=2)
    first = lookup.start(0.0)
    assert len(first) == 8
    sent, _, _ = _drive_started(lookup, first)
    result = lookup.result()
    assert len({s.peer.peer_id for s in sent}) == len(sent)
    assert [n.contact for n in result.closest] == _closest(TARGET_ID)
    assert {n.path for n in result.closest} <= {0, 1, 2, 3}


def _drive_started(
    lookup: Lookup, first: list[LookupCommand]
) -> tuple[list[SendRequest], list[PeerMisbehaved], float]:
    queue = [c for c in first if isinstance(c, SendRequest)]
    sent = list(queue)
    now = 0.0
    while queue and not lookup.done:
        command = queue.pop(0)
        now += 0.01
        new = [
            c
            for c in lookup.on_response(command.peer.peer_id, _honest(command), now)
            if isinstance(c, SendRequest)
        ]
        sent += new
        queue += new
    return sent, [], now


def test_disjoint_paths_survive_a_colluding_path() -> None:
    """Adversaries answering with each other capture only the paths that ask them."""
    evil = {c.peer_id for c in WORLD[60:]}
    evil_contacts = [c for c in WORLD if c.peer_id in evil]

    def answer(command: SendRequest) -> dict[str, Any]:
        if command.peer.peer_id in evil:
            return {
                "nodes": nodes_body(sorted(evil_contacts, key=lambda c: c.node_id ^ TARGET_ID)[:20])
            }
        return _honest(command)

    honest_best = min(
        (c for c in WORLD if c.peer_id not in evil), key=lambda c: c.node_id ^ TARGET_ID
    )
    seeds = [c for c in WORLD if c.peer_id not in evil][:4] + evil_contacts[:12]
    lookup = Lookup(TARGET, seeds, disjoint_paths=4)
    _drive(lookup, answer)
    found = lookup.result().find(honest_best.peer_id)
    assert found is not None


def _value_answer(records: dict[bytes, list[Record]]) -> Answer:
    def answer(command: SendRequest) -> dict[str, Any]:
        body = _honest(command)
        body["records"] = [r.to_wire() for r in records.get(command.peer.peer_id.raw, [])]
        return body

    return answer


def test_value_lookup_collects_verifies_and_finds_outdated_copies() -> None:
    key = named(1).key
    key_id = int.from_bytes(key, "big")
    holders = _closest(key_id, 20)
    new, old = named(1, seq=2, value="new"), named(1, seq=1, value="old")
    forged = with_fields(named(1, seq=9, value="x"), value="forged")
    foreign = dictionary(2)
    records = {
        holders[0].peer_id.raw: [new],
        holders[1].peer_id.raw: [old],
        holders[2].peer_id.raw: [forged, new],
        holders[3].peer_id.raw: [foreign],
    }
    lookup = Lookup(key, WORLD[:10], value=True, clock_offset=NOW)
    sent, bad, _ = _drive(lookup, _value_answer(records))
    assert all(s.message == Get(key=key) for s in sent)
    result = lookup.result()
    assert result.records == (new,)
    assert {b.peer for b in bad} == {holders[2].peer_id, holders[3].peer_id}
    assert any("bad signature" in b.reason for b in bad)
    assert any("another key" in b.reason for b in bad)
    outdated = {c.peer_id for c, r in result.outdated}
    assert holders[1].peer_id in outdated  # older copy
    assert holders[5].peer_id in outdated  # no copy
    assert holders[0].peer_id not in outdated and holders[2].peer_id not in outdated


def test_expired_records_are_dropped_by_the_reader() -> None:
    key = named(1).key
    holder = _closest(int.from_bytes(key, "big"), 1)[0]
    records = {holder.peer_id.raw: [named(1, expires=NOW + 10)]}
    lookup = Lookup(key, WORLD[:10], value=True, clock_offset=NOW + 20)
    _, bad, _ = _drive(lookup, _value_answer(records))
    assert lookup.result().records == ()
    assert [b.peer for b in bad] == [holder.peer_id]


def test_quorum_ends_a_value_lookup_early() -> None:
    key = named(1).key
    records = {c.peer_id.raw: [named(1)] for c in WORLD}
    lookup = Lookup(key, WORLD[:10], value=True, quorum=2, alpha=1, clock_offset=NOW)
    sent, _, _ = _drive(lookup, _value_answer(records))
    assert lookup.done and len(sent) == 2
    assert lookup.result().records == (named(1),)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": b"short"},
        {"k": 0},
        {"alpha": 0},
        {"disjoint_paths": 0},
        {"request_timeout": 0},
        {"quorum": 2},
        {"quorum": 0, "value": True},
    ],
)
def test_bad_parameters(kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"target": TARGET, "seeds": []}
    arguments.update(kwargs)
    with pytest.raises(ValueError):
        Lookup(**arguments)


def test_send_request_validates() -> None:
    with pytest.raises(ValueError):
        SendRequest(peer=contact(1), message=FindNode(target=TARGET), timeout=0)
    with pytest.raises(ValueError):
        SendRequest(peer=contact(1), message=FindNode(target=TARGET), request_id=-1)


_KINDS = st.sampled_from(["good", "tampered", "forged", "expired", "foreign", "other_key"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(1, 3), st.integers(0, 5), _KINDS), max_size=20
    )
)
def test_reader_never_selects_bad_records(copies: list[tuple[int, int, int, str]]) -> None:
    """Property (SPEC.md §12.5.5): whatever peers send, the reader selects, per slot, the
    best *valid* record it was given, and never a forged, tampered, expired or foreign one."""
    key = b"\x33" * 32
    holders = _closest(int.from_bytes(key, "big"), 10)
    sent: dict[bytes, list[Record]] = {}
    valid: list[Record] = []
    for holder, publisher, seq, kind in copies:
        record = dictionary(publisher, key, value=f"v{seq}", seq=seq)
        if kind == "good":
            valid.append(record)
        elif kind == "tampered":
            record = with_fields(record, seq=seq + 1)
        elif kind == "forged":
            record = with_fields(record, publisher=peer(publisher + 10))
        elif kind == "expired":
            record = dictionary(publisher, key, value=f"v{seq}", seq=seq, expires=NOW - 1)
        elif kind == "foreign":
            record = with_fields(record, subkey=peer(publisher + 10).raw)
        else:
            record = dictionary(publisher, b"\x44" * 32, value=f"v{seq}", seq=seq)
        sent.setdefault(holders[holder].peer_id.raw, []).append(record)
    lookup = Lookup(key, holders, value=True, clock_offset=NOW)
    _, bad, _ = _drive(lookup, _value_answer(sent))
    expected = select_best(valid)
    assert {(r.key, r.subkey): r for r in lookup.result().records} == expected
    assert len(bad) == sum(kind != "good" for *_, kind in copies)
