"""The DHT over real loopback TCP: several full nodes and clients in one trio process."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from petalproto.core import Address, ErrorCode, Identity
from petalproto.core.dht import (
    Contact,
    DhtConfig,
    Record,
    make_dictionary_record,
    make_named_record,
    node_id_of,
)
from petalproto.net import CallContext, ConnectionPool, Node, RpcError
from petalproto.net._dht import DhtPutError, DhtService

from .conftest import make_identity


def expires_in(seconds: int = 600) -> int:
    return int(time.time()) + seconds


def forged(record: Record, **changes: Any) -> dict[str, Any]:
    """The wire form of ``record`` with fields changed and the old signature kept."""
    return {**record.to_wire(), **changes}


@asynccontextmanager
async def swarm(size: int, *, config: DhtConfig | None = None) -> AsyncIterator[list[DhtService]]:
    """``size`` full nodes on 127.0.0.1; each joins through the first one."""
    async with trio.open_nursery() as nursery:
        services: list[DhtService] = []
        for _ in range(size):
            node: Node = await nursery.start(Node(make_identity()).run)
            first = [] if not services else [_address(services[0])]
            service = DhtService.for_node(node, initial_peers=first, config=config)
            await nursery.start(service.run)
            services.append(service)
        yield services
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(
    initial: list[Address], identity: Identity | None = None
) -> AsyncIterator[DhtService]:
    """A client-mode service (no router, no listen address) joined through ``initial``."""
    identity = identity or make_identity()
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(nursery, identity)
        service = DhtService(pool, identity, router=None, listen=None, initial_peers=initial)
        await nursery.start(service.run)
        yield service
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, for at most five seconds."""
    for _ in range(500):
        if condition():
            return
        await trio.sleep(0.01)
    raise AssertionError("the condition never held")


def _address(service: DhtService) -> Address:
    assert service.listen is not None
    return service.listen


def _holders(services: list[DhtService], record: Record) -> list[Record]:
    """The copies of ``record``'s slot that ``services`` store."""
    return [
        r
        for s in services
        for r in s.store_snapshot()
        if (r.key, r.subkey) == (record.key, record.subkey)
    ]


async def test_nodes_join_through_one_node_and_know_each_other() -> None:
    async with swarm(6) as nodes:
        for service in nodes:
            known = {c.peer_id for cs in service.routing_table_snapshot().values() for c in cs}
            assert known == {s.identity.peer_id for s in nodes} - {service.identity.peer_id}
        target = node_id_of(make_identity().peer_id)
        found = await nodes[3].find_node(target)
        assert {c.peer_id for c in found} == {s.identity.peer_id for s in nodes} - {
            nodes[3].identity.peer_id
        }
        assert [c.node_id ^ target for c in found] == sorted(c.node_id ^ target for c in found)
        assert all(s.bootstrapped and s.is_server for s in nodes)


async def test_named_and_dictionary_records_travel_between_nodes() -> None:
    async with swarm(6) as nodes:
        named = make_named_record(
            nodes[1].identity, b"model/x", {"v": 1}, seq=1, expires=expires_in()
        )
        assert await nodes[1].put(named) == 6  # every node, the publisher included
        assert await nodes[4].get(named.key) == [named]

        key = hashlib.sha256(b"block:0").digest()
        announced = [
            make_dictionary_record(s.identity, key, {"port": i}, seq=1, expires=expires_in())
            for i, s in enumerate(nodes[:3])
        ]
        for service, record in zip(nodes[:3], announced, strict=True):
            await service.put(record)
        got = await nodes[5].get(key)
        assert sorted(r.value["port"] for r in got) == [0, 1, 2]
        assert await nodes[5].get(os.urandom(32)) == []


async def test_a_client_finds_records_and_enters_no_routing_table() -> None:
    async with swarm(5) as nodes:
        record = make_named_record(nodes[2].identity, b"n", "v", seq=1, expires=expires_in())
        await nodes[2].put(record)
        async with client([_address(nodes[0])]) as us:
            assert not us.is_server
            assert await us.get(record.key) == [record]
            ours = make_dictionary_record(
                us.identity, os.urandom(32), 1, seq=1, expires=expires_in()
            )
            assert await us.put(ours) == 5
            assert await nodes[3].get(ours.key) == [ours]
            assert len(await us.find_node(node_id_of(us.identity.peer_id))) == 5
            for service in nodes:
                assert us.identity.peer_id not in service.node.table
            assert us.store_snapshot() == []


async def test_forged_and_outdated_records_are_refused_with_their_codes() -> None:
    async with swarm(3) as nodes:
        target = _address(nodes[1])
        pool = nodes[0].pool
        record = make_named_record(nodes[0].identity, b"n", "v", seq=5, expires=expires_in())

        async def put(wire: Any) -> ErrorCode | None:
            try:
                await pool.call(target, "dht.put", {"record": wire})
            except RpcError as exc:
                return exc.code
            return None

        assert await put(forged(record, value="w")) is ErrorCode.RECORD_BAD_SIGNATURE
        assert await put(forged(record, expires=1)) is ErrorCode.RECORD_EXPIRED
        assert await put(forged(record, key=bytes(32))) is ErrorCode.RECORD_INVALID
        assert await put(forged(record, extra=1)) is ErrorCode.RECORD_INVALID
        foreign = forged(record, subkey=os.urandom(32), name=b"")
        assert await put(foreign) is ErrorCode.RECORD_FOREIGN_SUBKEY
        assert await nodes[0].put(record) == 3
        assert await put(record.to_wire()) is None  # the same again: accepted, no change
        older = make_named_record(nodes[0].identity, b"n", "v", seq=4, expires=expires_in())
        assert await put(older.to_wire()) is ErrorCode.RECORD_SEQ_TOO_LOW

        # Through the service: every node refuses, and the error says why.
        with pytest.raises(DhtPutError, match="RECORD_SEQ_TOO_LOW") as caught:
            await nodes[2].put(older)
        assert {code for _, code in caught.value.rejected} == {ErrorCode.RECORD_SEQ_TOO_LOW}
        assert await nodes[2].get(record.key) == [record]


async def test_bad_requests_and_unknown_methods_get_their_codes() -> None:
    async with swarm(2) as nodes:
        target, pool = _address(nodes[1]), nodes[0].pool
        for method, body, code in [
            ("dht.find_node", {"target": b"short"}, ErrorCode.BAD_REQUEST),
            ("dht.get", [1, 2], ErrorCode.BAD_REQUEST),
            ("dht.put", {}, ErrorCode.BAD_REQUEST),
            ("dht.ping", {"listen": ["example.com", 1]}, ErrorCode.BAD_REQUEST),
            ("dht.no_such_method", {}, ErrorCode.UNKNOWN_METHOD),
        ]:
            with pytest.raises(RpcError) as caught:
                await pool.call(target, method, body)
            assert caught.value.code is code, method
        assert await pool.call(target, "dht.ping", {"future": 1}) == {}
        assert (await pool.call(target, "ping", {}))["agent"]


async def test_a_get_corrects_stale_copies() -> None:
    async with swarm(5) as nodes:
        identity = nodes[0].identity
        old = make_named_record(identity, b"n", "old", seq=1, expires=expires_in())
        new = make_named_record(identity, b"n", "new", seq=2, expires=expires_in())
        await nodes[0].put(old)
        # Only one node learns the new version.
        await nodes[0].pool.call(_address(nodes[3]), "dht.put", {"record": new.to_wire()})
        assert sorted(r.seq for r in _holders(nodes, old)) == [1, 1, 1, 1, 2]
        assert await nodes[1].get(old.key) == [new]
        # The reader corrected its own copy at once and the others' in the background.
        assert [r.seq for r in _holders(nodes[1:2], old)] == [2]
        await eventually(lambda: {r.seq for r in _holders(nodes, old)} == {2})


async def test_a_node_listed_among_its_own_initial_peers_starts_alone() -> None:
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(make_identity()).run)
        service = DhtService.for_node(node, initial_peers=[node.address])
        with trio.fail_after(2):
            await nursery.start(service.run)
        assert service.bootstrapped and len(service.node.table) == 0
        nursery.cancel_scope.cancel()


async def test_a_lone_client_cannot_put_and_says_so() -> None:
    async with client([]) as us:
        record = make_named_record(us.identity, b"n", 1, seq=1, expires=expires_in())
        with pytest.raises(DhtPutError, match="no node answered"):
            await us.put(record)
        assert await us.get(record.key) == []
        assert await us.find_node(0) == []
        with pytest.raises(ValueError, match="256-bit"):
            await us.find_node(-1)


async def test_operations_need_a_running_service() -> None:
    async with trio.open_nursery() as nursery:
        identity = make_identity()
        service = DhtService(ConnectionPool(nursery, identity), identity, router=None, listen=None)
        with pytest.raises(trio.ClosedResourceError):
            await service.get(bytes(32))
        with pytest.raises(ValueError, match="both"):
            DhtService(service.pool, identity, router=None, listen=_fake_address())


def _fake_address() -> Address:
    return Address(make_identity().peer_id, "127.0.0.1", 1)


async def test_a_waiting_operation_ends_when_the_service_stops() -> None:
    silent = trio.socket.socket()
    await silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts TCP connections and never answers the handshake
    async with trio.open_nursery() as nursery:
        identity = make_identity()
        service = DhtService(ConnectionPool(nursery, identity), identity, router=None, listen=None)
        run_scope = trio.CancelScope()

        async def run_service(task_status: trio.TaskStatus[None]) -> None:
            with run_scope:
                await service.run(task_status=task_status)

        async def stop_soon() -> None:
            await trio.sleep(0.05)
            run_scope.cancel()

        await nursery.start(run_service)
        port = silent.getsockname()[1]
        contact = Contact(peer_id=make_identity().peer_id, host="127.0.0.1", port=port)
        service.node.table.observe(contact, trio.current_time())
        nursery.start_soon(stop_soon)
        with pytest.raises(trio.ClosedResourceError):
            await service.get(bytes(32))
        with pytest.raises(trio.ClosedResourceError):
            await service.get(bytes(32))
        nursery.cancel_scope.cancel()
    silent.close()


async def test_initial_peers_may_be_host_names() -> None:
    async with swarm(2) as nodes:
        first = _address(nodes[0])
        by_name = Address(first.peer_id, "localhost", first.port)
        async with client([by_name]) as us:
            assert len(us.node.table) == 2


async def test_republished_records_are_put_again() -> None:
    config = DhtConfig(republish_interval=0.05)
    async with swarm(3, config=config) as nodes:
        record = make_named_record(nodes[0].identity, b"n", 1, seq=1, expires=expires_in())
        await nodes[0].put(record, republish=True)
        for service in nodes[1:]:
            service.node.store.sweep(record.expires)  # forget it
        await eventually(lambda: len(_holders(nodes, record)) == 3)


async def test_joining_retries_until_an_initial_peer_answers() -> None:
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a free port: nothing listens there yet
    later = make_identity()
    identity = make_identity()
    joined = trio.Event()
    async with trio.open_nursery() as nursery:
        service = DhtService(
            ConnectionPool(nursery, identity),
            identity,
            router=None,
            listen=None,
            initial_peers=[Address(later.peer_id, "127.0.0.1", port)],
        )
        service.join_retry = (0.01, 0.02)

        async def join() -> None:
            await nursery.start(service.run)
            joined.set()

        nursery.start_soon(join)
        await trio.sleep(0.05)
        assert not joined.is_set() and not service.bootstrapped
        node: Node = await nursery.start(Node(later, port=port).run)
        await nursery.start(DhtService.for_node(node).run)
        with trio.fail_after(5):
            await joined.wait()
        assert later.peer_id in service.node.table
        nursery.cancel_scope.cancel()


async def test_a_forged_record_is_dropped_and_its_sender_forgotten() -> None:
    record = make_named_record(make_identity(), b"n", "v", seq=1, expires=expires_in())
    forgery = forged(record, value="forged")

    async def nodes(ctx: CallContext, body: Any) -> Any:
        return {"nodes": []}

    async def records(ctx: CallContext, body: Any) -> Any:
        return {"records": [forgery], "nodes": []}

    async with trio.open_nursery() as nursery:
        liar: Node = await nursery.start(Node(make_identity()).run)
        liar.router.unary("dht.find_node", nodes)
        liar.router.unary("dht.get", records)
        async with client([liar.address]) as us:
            assert liar.identity.peer_id in us.node.table
            assert await us.get(record.key) == []
            assert us.misbehaved == 1
            assert liar.identity.peer_id not in us.node.table
        nursery.cancel_scope.cancel()


async def test_a_listen_address_by_host_name_is_resolved() -> None:
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(make_identity(), announce_host="localhost").run)
        service = DhtService.for_node(node)
        assert service.node.listen is None
        await nursery.start(service.run)
        assert service.node.listen is not None
        assert service.node.listen[0] in ("127.0.0.1", "::1")
        nursery.cancel_scope.cancel()


async def test_publish_counts_acknowledgements_and_retries_until_a_quorum() -> None:
    async with swarm(4) as nodes:
        record = make_named_record(nodes[0].identity, b"p", 1, seq=1, expires=expires_in())
        done = await nodes[0].publish(record)
        assert done.ok and (done.targets, done.acked, done.quorum) == (3, 3, 3)
        assert done.unanswered == ()
    async with client([]) as us:
        record = make_named_record(us.identity, b"p", 1, seq=1, expires=expires_in())
        start = trio.current_time()
        done = await us.publish(record, attempts=3, backoff=0.05)
        assert not done.ok and (done.targets, done.acked, done.stored) == (0, 0, 0)
        assert trio.current_time() - start >= 0.15  # paused 0.05 s, then 0.1 s
        with pytest.raises(ValueError, match="attempts"):
            await us.publish(record, attempts=0)
