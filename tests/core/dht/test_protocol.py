"""The sans-IO DHT node: serving requests and running operations (SPEC.md §12.3, §12.8)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from petalproto.core._errors import ErrorCode
from petalproto.core._identity import PeerId
from petalproto.core._msgpack import decode_strict, encode
from petalproto.core.dht import (
    FIND_NODE,
    GET,
    PING,
    PUT,
    Contact,
    DhtConfig,
    DhtEvent,
    DhtNode,
    DhtRequestError,
    FindNode,
    GetFinished,
    LookupFinished,
    PeerMisbehaved,
    Ping,
    Put,
    PutFinished,
    RoutingConfig,
    SendRequest,
    StoreConfig,
)

from .factories import NOW, contact, dictionary, host_of, in_bucket, named, peer, with_fields


def _node(i: int, *, listen: bool = True, **config: Any) -> DhtNode:
    return DhtNode(
        peer(i),
        listen=(host_of(i), 4001) if listen else None,
        random_bytes=os.urandom,
        now=0.0,
        config=DhtConfig(clock_offset=NOW, **config),
    )


class Net:
    """Nodes that answer each other at once, in order; ``down`` ones never answer."""

    def __init__(self, nodes: dict[int, DhtNode]) -> None:
        self.nodes = nodes
        self.by_peer = {node.our_id: node for node in nodes.values()}
        self.down: set[PeerId] = set()
        self.events: dict[PeerId, list[DhtEvent]] = {p: [] for p in self.by_peer}
        self.now = 0.0

    def pump(self, *, answer_ping: bool = True) -> None:
        busy = True
        while busy:
            busy = False
            for node in list(self.by_peer.values()):
                for request in node.requests_to_send():
                    busy = True
                    self.now += 0.001
                    self.events[node.our_id] += self._deliver(node, request)

    def _deliver(self, node: DhtNode, request: SendRequest) -> list[DhtEvent]:
        remote = self.by_peer.get(request.peer.peer_id)
        if remote is None or request.peer.peer_id in self.down:
            return node.on_failure(request.request_id, self.now)
        body = decode_strict(encode(request.message.to_body()))
        try:
            answer = remote.handle_request(node.our_id, request.message.method, body, self.now)
        except DhtRequestError as exc:
            return node.on_failure(request.request_id, self.now, code=exc.code)
        return node.on_response(request.request_id, decode_strict(encode(answer)), self.now)

    def finished(self, i: int, op_id: int) -> DhtEvent:
        for event in self.events[self.nodes[i].our_id]:
            if getattr(event, "op_id", None) == op_id:
                return event
        raise AssertionError(f"operation {op_id} of node {i} did not finish")


def _mesh(count: int, **config: Any) -> Net:
    """``count`` nodes where node 0 was told of everyone and the rest joined through it."""
    nodes = {i: _node(i, **config) for i in range(count)}
    net = Net(nodes)
    for i in range(1, count):
        nodes[0].table.observe(contact(i), 0.0)
    for i in range(1, count):
        op = nodes[i].bootstrap([contact(0)], net.now)
        net.pump()
        assert isinstance(net.finished(i, op), LookupFinished)
    return net


# Serving --------------------------------------------------------------------------------


def test_ping_with_listen_adds_the_sender() -> None:
    node = _node(0)
    assert node.handle_request(peer(1), PING, {"listen": [host_of(1), 4001]}, 1.0) == {}
    assert node.table.get(peer(1)) == contact(1)
    assert node.handle_request(peer(2), PING, {}, 1.0) == {}  # a client: not added
    assert peer(2) not in node.table
    node.handle_request(peer(3), PING, {"listen": ["0.0.0.0", 7]}, 1.0, remote_host="9.9.9.9")
    assert node.table.get(peer(3)) == Contact(peer_id=peer(3), host="9.9.9.9", port=7)
    node.handle_request(peer(4), PING, {"listen": ["1.2.3.4", 7]}, 1.0, remote_host="bad host")
    assert peer(4) not in node.table
    node.handle_request(peer(0), PING, {"listen": ["1.2.3.4", 7]}, 1.0)
    assert peer(0) not in node.table


def test_find_node_answers_at_most_k_sorted_and_without_the_requester() -> None:
    node = _node(0)
    for i in range(1, 200):
        node.table.observe(contact(i), 0.0)
    target = os.urandom(32)
    answer = node.handle_request(peer(5), FIND_NODE, {"target": target}, 1.0)
    contacts = [Contact.from_wire(c) for c in answer["nodes"]]
    assert len(contacts) == 20
    t = int.from_bytes(target, "big")
    assert contacts == sorted(contacts, key=lambda c: c.node_id ^ t)
    assert peer(5) not in {c.peer_id for c in contacts}
    assert contacts == node.table.closest(t, 20, exclude=peer(5))


def test_put_and_get() -> None:
    node = _node(0)
    record = dictionary(1)
    assert node.handle_request(peer(1), PUT, {"record": record.to_wire()}, 1.0) == {}
    answer = node.handle_request(peer(2), GET, {"key": record.key}, 1.0)
    assert answer == {"records": [record.to_wire()], "nodes": []}


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (with_fields(dictionary(1), value="x"), ErrorCode.RECORD_BAD_SIGNATURE),
        (dictionary(1, expires=NOW - 1), ErrorCode.RECORD_EXPIRED),
        (with_fields(dictionary(1), value=b"x" * 5000), ErrorCode.RECORD_TOO_LARGE),
        (with_fields(dictionary(1), subkey=peer(2).raw), ErrorCode.RECORD_FOREIGN_SUBKEY),
        (dictionary(1, seq=1), ErrorCode.RECORD_SEQ_TOO_LOW),
        (dictionary(1, seq=2, value="a"), ErrorCode.RECORD_SEQ_TOO_LOW),  # "a" < "v"
        (dictionary(3), ErrorCode.QUOTA_EXCEEDED),
    ],
)
def test_put_rejections_carry_their_codes(record: Any, code: ErrorCode) -> None:
    node = _node(0, store=StoreConfig(max_subkeys_per_key=1))
    node.handle_request(peer(1), PUT, {"record": dictionary(1, seq=2).to_wire()}, 0.0)
    with pytest.raises(DhtRequestError) as info:
        node.handle_request(peer(1), PUT, {"record": record.to_wire()}, 0.0)
    assert info.value.code == code


def test_unknown_method_and_bad_bodies() -> None:
    node = _node(0)
    with pytest.raises(DhtRequestError) as info:
        node.handle_request(peer(1), "dht.frobnicate", {}, 0.0)
    assert info.value.code == ErrorCode.UNKNOWN_METHOD
    with pytest.raises(DhtRequestError) as info:
        node.handle_request(peer(1), FIND_NODE, {"target": 5}, 0.0)
    assert info.value.code == ErrorCode.BAD_REQUEST


def test_full_bucket_pings_its_oldest_and_evicts_on_failure() -> None:
    node = _node(0, routing=RoutingConfig(k=2))
    a, b, c = in_bucket(0, 0, 3)
    for i in (a, b, c):
        node.handle_request(peer(i), PING, {"listen": [host_of(i), 4001]}, 1.0)
    [ping] = node.requests_to_send()
    assert ping.peer == contact(a) and ping.message == Ping(listen=(host_of(0), 4001))
    assert ping.request_id > 0
    assert node.on_failure(ping.request_id, 2.0) == []
    assert {x.peer_id for x in node.table.contacts()} == {peer(b), peer(c)}
    assert node.on_failure(ping.request_id, 2.0) == []  # already settled: ignored
    assert node.on_response(12345, {}, 2.0) == []


# Operations -----------------------------------------------------------------------------


@pytest.mark.slow
def test_bootstrap_fills_tables_and_find_node_finds() -> None:
    net = _mesh(40)
    assert all(len(node.table) >= 10 for node in net.nodes.values())
    target = os.urandom(32)
    op = net.nodes[7].find_node(target, net.now)
    net.pump()
    event = net.finished(7, op)
    assert isinstance(event, LookupFinished)
    t = int.from_bytes(target, "big")
    everyone = sorted((contact(i) for i in range(40) if i != 7), key=lambda c: c.node_id ^ t)
    assert [n.contact for n in event.result.closest] == everyone[:20]


@pytest.mark.slow
def test_put_then_get_with_entry_correction() -> None:
    net = _mesh(30)
    record = named(3, b"model", {"spans": [[0, 4]]})
    op = net.nodes[3].put(record, net.now)
    net.pump()
    done = net.finished(3, op)
    assert isinstance(done, PutFinished) and done.ok and done.stored >= 20
    assert done.record == record and done.rejected == ()
    key_id = int.from_bytes(record.key, "big")
    holders = sorted(
        (n for n in net.nodes.values() if n.store.get(record.key, NOW)),
        key=lambda n: n.table._our ^ key_id,
    )
    victim = next(n for n in holders if n.our_id not in (peer(3), peer(9)))
    victim.store = type(victim.store)()  # it lost its copy
    op = net.nodes[9].get(record.key, net.now)
    net.pump()
    got = net.finished(9, op)
    assert isinstance(got, GetFinished)
    assert got.records == (record,) and got.key == record.key
    assert got.result.find(victim.our_id) is not None
    assert victim.store.get(record.key, NOW) == [record]  # entry correction put it back


def test_put_rejections_are_reported() -> None:
    net = _mesh(8)
    newer, older = dictionary(2, seq=5), dictionary(2, seq=4)
    net.nodes[2].put(newer, net.now)
    net.pump()
    op = net.nodes[2].put(older, net.now)
    net.pump()
    done = net.finished(2, op)
    assert isinstance(done, PutFinished)
    assert done.stored == 0 and not done.ok
    assert {code for _, code in done.rejected} == {ErrorCode.RECORD_SEQ_TOO_LOW}
    assert peer(2) in {p for p, _ in done.rejected}  # our own store refused it too


def test_operations_without_seeds_finish_on_the_next_timer() -> None:
    node = _node(0)
    op = node.find_node(bytes(32), 5.0)
    assert node.next_deadline() == 5.0
    [event] = node.handle_timer(5.0)
    assert isinstance(event, LookupFinished) and event.op_id == op
    assert event.result.closest == ()
    put = node.put(dictionary(0), 6.0)
    [done] = node.handle_timer(6.0)
    assert isinstance(done, PutFinished) and done.op_id == put
    assert done.stored == 1 and not done.ok  # only ourselves
    client = _node(1, listen=False)
    client.put(dictionary(1), 0.0)
    [done] = client.handle_timer(0.0)
    assert isinstance(done, PutFinished) and done.stored == 0
    get = client.get(dictionary(1).key, 0.0)
    [got] = client.handle_timer(0.0)
    assert isinstance(got, GetFinished) and got.op_id == get and got.records == ()
    with pytest.raises(ValueError):
        node.find_node(b"short", 0.0)


def test_silent_peers_time_out_and_lose_their_place() -> None:
    net = _mesh(12, routing=RoutingConfig(max_failures=1))
    asker = net.nodes[1]
    net.down = {peer(i) for i in range(2, 12)}
    op = asker.find_node(os.urandom(32), net.now)
    for _ in range(50):
        net.pump()
        deadline = asker.next_deadline()
        assert deadline is not None
        net.events[asker.our_id] += asker.handle_timer(deadline)
        net.now = deadline
        if any(getattr(e, "op_id", None) == op for e in net.events[asker.our_id]):
            break
    event = net.finished(1, op)
    assert isinstance(event, LookupFinished)
    assert {n.contact.peer_id for n in event.result.closest} <= {peer(0)}
    assert all(peer(i) not in asker.table for i in range(2, 12))


def test_misbehaving_peer_is_reported_and_dropped() -> None:
    node = _node(0)
    node.table.observe(contact(1), 0.0)
    op = node.find_node(os.urandom(32), 0.0)
    [request] = node.requests_to_send()
    assert isinstance(request.message, FindNode) and request.timeout == 10.0
    assert node.next_deadline() == 2.0  # the lookup's request timeout
    events = node.on_response(request.request_id, {"nodes": 7}, 0.1)
    assert isinstance(events[0], PeerMisbehaved) and events[0].peer == peer(1)
    assert isinstance(events[1], LookupFinished) and events[1].op_id == op
    assert peer(1) not in node.table


def test_a_misbehaving_peer_stays_out_of_the_table_for_a_while() -> None:
    node = _node(0, distrust_time=100.0)
    for i in (1, 2):
        node.table.observe(contact(i), 0.0)
    node.find_node(os.urandom(32), 0.0)
    first, second = node.requests_to_send()
    bad, late = (first, second) if first.peer.peer_id == peer(1) else (second, first)
    node.on_response(bad.request_id, {"nodes": 7}, 0.1)
    assert peer(1) not in node.table
    listen = {"listen": [host_of(1), 4001]}
    assert node.handle_request(peer(1), PING, listen, 50.0) == {}  # it calls us: still out
    assert peer(1) not in node.table
    node.on_response(late.request_id, {"nodes": []}, 60.0)  # another peer answers: in
    assert peer(2) in node.table
    node.handle_request(peer(1), PING, listen, 101.0)  # distrust has run out
    assert peer(1) in node.table


def test_distrust_remembers_a_bounded_number_of_peers() -> None:
    node = _node(0, max_distrusted=2)
    for i in (1, 2, 3):
        node._distrust(peer(i), 0.0)
    node._distrust(peer(2), 0.0)  # again: it becomes the newest
    assert list(node._distrusted) == [peer(3), peer(2)]
    node.handle_request(peer(1), PING, {"listen": [host_of(1), 4001]}, 1.0)
    assert peer(1) in node.table  # forgotten first, so no longer kept out


def test_error_answers_keep_the_peer_alive_in_lookups() -> None:
    node = _node(0, routing=RoutingConfig(max_failures=1))
    node.table.observe(contact(1), 0.0)
    node.find_node(os.urandom(32), 0.0)
    [request] = node.requests_to_send()
    [event] = node.on_failure(request.request_id, 0.1, code=ErrorCode.OVERLOADED)
    assert isinstance(event, LookupFinished)
    assert peer(1) in node.table


def test_late_answers_after_an_operation_only_update_the_table() -> None:
    node = _node(0)
    node.table.observe(contact(1), 0.0)
    node.find_node(os.urandom(32), 0.0)
    [request] = node.requests_to_send()
    node.handle_timer(5.0)  # the lookup times the request out and finishes
    assert node.on_response(request.request_id, {"nodes": []}, 6.0) == []
    assert peer(1) in node.table


def test_republish_and_expiry() -> None:
    node = _node(0, republish_interval=100.0)
    node.table.observe(contact(1), 0.0)
    record = dictionary(0, expires=NOW + 250)
    node.put(record, 0.0, republish=True)
    [request] = node.requests_to_send()
    node.on_response(request.request_id, {"nodes": []}, 0.1)
    [put] = node.requests_to_send()
    assert isinstance(put.message, Put) and put.message.record == record
    node.on_response(put.request_id, {}, 0.2)
    assert node.store.get(record.key, NOW) == [record]
    assert node.next_deadline() == 100.0
    node.handle_timer(100.0)  # the republish starts with a lookup
    [again] = node.requests_to_send()
    assert isinstance(again.message, FindNode)
    node.on_failure(again.request_id, 100.5)
    node.handle_timer(250.0)  # expired: swept and no longer republished
    assert node.store.get(record.key, NOW + 250) == []
    assert node.next_deadline() == 600.0  # only the bucket refresh is left
    assert node.unpublish(record.key, record.subkey) is False
    node.put(record, 300.0, republish=True)
    assert node.unpublish(record.key, record.subkey) is True


def test_refresh_timer_starts_lookups() -> None:
    node = _node(0)
    node.table.observe(contact(in_bucket(0, 0, 1)[0]), 0.0)
    assert node.next_deadline() == 600.0
    assert node.handle_timer(600.0) == []
    [request] = node.requests_to_send()
    assert isinstance(request.message, FindNode)
    node.on_response(request.request_id, {"nodes": []}, 600.5)
    assert node.next_deadline() == 1200.5  # the lookup's end counts as the refresh


def test_put_quorum_and_disjoint_lookups_are_configurable() -> None:
    net = _mesh(25, disjoint_paths=2, put_quorum=25)
    op = net.nodes[4].put(dictionary(4), net.now)
    net.pump()
    done = net.finished(4, op)
    assert isinstance(done, PutFinished) and done.stored >= 20
    # A quorum above the number of targets asks for all of them (SPEC.md §12.8.3).
    assert done.targets == 20 and done.quorum == 20 and done.ok == (done.acked == 20)


def test_get_quorum_stops_early() -> None:
    net = _mesh(25, get_quorum=1)
    record = dictionary(6)
    net.nodes[6].put(record, net.now)
    net.pump()
    op = net.nodes[8].get(record.key, net.now)
    net.pump()
    got = net.finished(8, op)
    assert isinstance(got, GetFinished) and got.records == (record,)
    assert got.result.rpcs < 20


def test_client_requests_carry_no_listen_address() -> None:
    net = _mesh(6)
    client = _node(50, listen=False)
    net.by_peer[client.our_id] = client
    net.events[client.our_id] = []
    client.table.observe(contact(0), 0.0)
    op = client.find_node(os.urandom(32), net.now)
    [first] = client.requests_to_send()
    assert first.message.listen is None
    net.events[client.our_id] += net._deliver(client, first)
    net.pump()
    assert isinstance(net.events[client.our_id][-1], LookupFinished)
    assert net.events[client.our_id][-1].op_id == op  # type: ignore[union-attr]
    assert all(client.our_id not in n.table for n in net.nodes.values())


def test_put_to_a_peer_that_fails_counts_nothing() -> None:
    node = _node(0, request_timeout=1.0)
    node.table.observe(contact(1), 0.0)
    op = node.put(dictionary(0), 0.0)
    [lookup_request] = node.requests_to_send()
    node.on_response(lookup_request.request_id, {"nodes": []}, 0.1)
    [put] = node.requests_to_send()
    assert node.next_deadline() == 600.0  # a put in flight has no lookup timer
    assert node.handle_timer(1.0) == []  # nor does the lookup, which is done
    [done] = node.on_failure(put.request_id, 2.0)
    assert isinstance(done, PutFinished) and done.op_id == op
    assert done.stored == 1 and done.rejected == ()  # ourselves only
    assert (done.targets, done.acked, done.ok) == (1, 0, False)
    assert done.unanswered == (peer(1),)


def test_bootstrap_through_dead_seeds() -> None:
    node = _node(0)
    op = node.bootstrap([contact(1)], 0.0)
    [request] = node.requests_to_send()
    [event] = node.on_failure(request.request_id, 1.0)
    assert isinstance(event, LookupFinished) and event.op_id == op
    assert event.result.closest == () and node.requests_to_send() == []


def test_contact_cache_is_bounded() -> None:
    net = _mesh(12, contact_cache=3)
    node = net.nodes[5]
    node.find_node(os.urandom(32), net.now)
    net.pump()
    assert len(node._contacts) <= 3


def test_republish_waits_for_each_record() -> None:
    node = _node(0, republish_interval=100.0)
    node.put(dictionary(0), 0.0, republish=True)
    node.handle_timer(0.0)
    node.put(dictionary(0, key=b"\x01" * 32), 50.0, republish=True)
    node.handle_timer(50.0)
    node.handle_timer(100.0)  # only the first record is due
    assert [at for _, at in node._published.values()] == [200.0, 150.0]


def test_get_corrects_peers_without_the_record() -> None:
    node = _node(0)
    node.table.observe(contact(1), 0.0)
    node.table.observe(contact(2), 0.0)
    record = dictionary(1)
    op = node.get(record.key, 0.0)
    requests = {r.peer.peer_id: r for r in node.requests_to_send()}
    node.on_response(
        requests[peer(1)].request_id, {"nodes": [], "records": [record.to_wire()]}, 0.1
    )
    [got] = node.on_response(requests[peer(2)].request_id, {"nodes": [], "records": []}, 0.2)
    assert isinstance(got, GetFinished) and got.op_id == op and got.records == (record,)
    [correction] = node.requests_to_send()
    assert correction.peer == contact(2) and correction.message.record == record  # type: ignore[union-attr]
    assert node.on_response(correction.request_id, {}, 0.3) == []


# Puts past dead contacts (SPEC.md §12.8.3) ----------------------------------------------


def _crowd(node: DhtNode, key: bytes, behind: Contact, count: int) -> list[Contact]:
    """Fill ``node``'s table with ``count`` contacts closer to ``key`` than ``behind`` (they
    are in no network, so every request to them fails), and drop the old-node pings."""
    target = int.from_bytes(key, "big")
    limit = behind.node_id ^ target
    dead = [c for c in map(contact, range(100, 2000)) if c.node_id ^ target < limit]
    for c in dead[:count]:
        node.table.observe(c, 0.0)
    node.requests_to_send()
    return dead[:count]


def test_a_put_reaches_the_node_we_joined_through_behind_dead_contacts() -> None:
    net = _mesh(2)
    publisher = net.nodes[1]
    far = contact(0).node_id ^ (1 << 255)  # node 0, our seed, is far from the key
    record = dictionary(1, key=far.to_bytes(32, "big"))
    _crowd(publisher, record.key, contact(0), 40)
    closest = publisher.table.closest(int.from_bytes(record.key, "big"), 20)
    assert peer(0) not in {c.peer_id for c in closest}
    publisher.table.remove(peer(0))  # and the table lost it: only the seed list has it
    op = publisher.put(record, net.now)
    net.pump()
    done = net.finished(1, op)
    assert isinstance(done, PutFinished)
    assert (done.targets, done.acked, done.quorum, done.ok) == (1, 1, 1, True)
    assert net.nodes[0].store.get(record.key, NOW) == [record]


def test_a_put_goes_on_through_the_rest_of_the_table() -> None:
    net = Net({0: _node(0), 1: _node(1)})
    publisher = net.nodes[0]
    record = dictionary(0, key=(contact(1).node_id ^ (1 << 255)).to_bytes(32, "big"))
    publisher.table.observe(contact(1), 0.0)  # not a seed: only the table knows it
    dead = _crowd(publisher, record.key, contact(1), 25)
    op = publisher.put(record, net.now)
    net.pump()
    done = net.finished(0, op)
    assert isinstance(done, PutFinished) and done.ok
    assert (done.targets, done.acked, done.quorum, done.stored) == (1, 1, 1, 2)
    assert net.nodes[1].store.get(record.key, NOW) == [record]
    assert len(dead) == 25 and peer(1) in publisher.table


def test_our_own_store_is_no_acknowledgement() -> None:
    node = _node(0)
    op = node.put(dictionary(0), 0.0)
    [done] = node.handle_timer(0.0)
    assert isinstance(done, PutFinished) and done.op_id == op
    assert (done.stored, done.targets, done.acked, done.quorum, done.ok) == (1, 0, 0, 1, False)
