"""The DHT over the network: one sans-IO ``DhtNode`` driven by trio (SPEC.md §12).

Theory of operation
-------------------
``DhtService`` owns a ``DhtNode`` and moves its messages; it makes no protocol decision of
its own (STYLE.md §4).  Three inputs reach the core, and after each one the service runs
``_after_input``, which hands out the events, starts one task per queued ``SendRequest``
and re-arms the timer:

* **requests from peers** (full nodes only): the ``dht.*`` unary handlers registered on the
  node's ``Router`` call ``DhtNode.handle_request`` with the caller's authenticated peer id
  and the IP address its connection came from; a refused request (``DhtRequestError``)
  becomes ``RpcError(code, reason)``, which the router sends as RESET (SPEC.md §12.9);
* **answers to our requests**: each ``SendRequest`` goes out through
  ``ConnectionPool.call`` in its own task; the body is fed back with ``on_response``, an
  error response with ``on_failure(code=...)``, and a timeout or an unreachable peer with
  ``on_failure(code=None)``, which counts against the peer in the routing table;
* **time**: one timer task sleeps until ``next_deadline`` and calls ``handle_timer``
  (lookup timeouts, bucket refresh, record expiry, republish).

Operations (``get``, ``put``, ``find_node``) start in the core, which returns an operation
id; the caller waits on a ``trio.Event`` that ``_after_input`` sets when the matching
``*Finished`` event arrives.  The core never reports an operation from the call that
started it, so the waiter is always registered first.

Server or client: with a router and a listen address the service is a full node.  It
answers ``dht.*`` calls and names its address in every request (``listen``), so others add
it to their routing tables.  Without them it is a client (libp2p's client mode): it sends
no ``listen``, never enters another node's table, and answers nothing.

Time: the core runs on ``trio.current_time()``; records carry unix times, so the service
measures ``time.time() - trio.current_time()`` once and gives it to the core as
``clock_offset``.

Invariants: all core calls happen in trio's one thread with no ``await`` between an input
and its ``_after_input``, so the core needs no lock; a request task always feeds back
exactly one outcome unless the service itself is being cancelled; nothing a peer sends
makes the service raise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import trio

from petalproto.core import Address, ErrorCode, Identity, ProtocolError
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
    GetFinished,
    LookupFinished,
    LookupResult,
    PeerMisbehaved,
    PutFinished,
    Record,
    RecordRejected,
    SendRequest,
    select_best,
)

from ._pool import ConnectionPool
from ._rpc import CallContext, Router, RpcError

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["DhtPutError", "DhtService"]

log = logging.getLogger("petalproto.dht")

#: Error codes by which a peer answers a request itself (SPEC.md §12.9, §10): it is alive.
#: Any other code on a RESET means the connection broke under the call (CANCEL, NO_ERROR,
#: PROTOCOL_ERROR ...), which counts against the peer like a timeout.
_ANSWER_CODES = frozenset(
    {
        ErrorCode.MALFORMED,
        ErrorCode.UNKNOWN_METHOD,
        ErrorCode.BAD_REQUEST,
        ErrorCode.OVERLOADED,
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.RECORD_INVALID,
        ErrorCode.RECORD_BAD_SIGNATURE,
        ErrorCode.RECORD_SEQ_TOO_LOW,
        ErrorCode.RECORD_EXPIRED,
        ErrorCode.RECORD_TOO_LARGE,
        ErrorCode.RECORD_FOREIGN_SUBKEY,
        ErrorCode.QUOTA_EXCEEDED,
    }
)
#: Addresses kept for contacts we dial; a few lookups' worth, like the core's contact cache.
_ADDRESS_CACHE = 4096
#: Seconds between join attempts while no initial peer answers (doubling, capped).
_JOIN_RETRY_FIRST, _JOIN_RETRY_MAX = 1.0, 30.0
#: Seconds between checks that the routing table is not empty (libp2p re-bootstraps too).
_REJOIN_INTERVAL = 60.0


class DhtPutError(Exception):
    """No node stored a record we put.

    Attributes:
        record: the record.
        rejected: the peers that refused it, each with its error code.
    """

    def __init__(self, record: Record, rejected: Sequence[tuple[object, ErrorCode]]) -> None:
        codes = sorted({code.name for _, code in rejected})
        why = f"refused with {', '.join(codes)}" if codes else "no node answered"
        super().__init__(f"no node stored the record under {record.key.hex()[:16]}…: {why}")
        self.record = record
        self.rejected = tuple(rejected)


@dataclass(slots=True)
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    result: DhtEvent | None = None


class DhtService:
    """Runs one DHT node over the network: a full node or a client.

    Build it inside ``trio.run`` once the pool exists (after ``Node.run`` started), then run
    ``run`` in a nursery.

    Args:
        pool: where our requests go out.
        identity: our identity; its peer id is our DHT identity.
        router: register the ``dht.*`` handlers here (full node); None for a client.
        listen: our dialable address, named in our requests (full node); None for a client.
        initial_peers: nodes to join through; hostnames are resolved to IP literals.
        config: DHT parameters; ``clock_offset`` is measured here and overrides the given one.

    Attributes:
        node: the sans-IO ``DhtNode`` (read it; feed it only through this service).
        bootstrapped: ``run`` has joined (or had nobody to join through).
        misbehaved: how many ``PeerMisbehaved`` events the core reported.
        join_retry: the first and the longest pause, in seconds, between join attempts
            while no initial peer answers (the pause doubles).

    Raises:
        ValueError: only one of ``router`` and ``listen`` was given.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        identity: Identity,
        *,
        router: Router | None,
        listen: Address | None,
        initial_peers: Sequence[Address] = (),
        config: DhtConfig | None = None,
    ) -> None:
        if (router is None) != (listen is None):
            raise ValueError("a full node needs both a router and a listen address")
        self.pool = pool
        self.identity = identity
        self.listen = listen
        self.initial_peers = list(initial_peers)
        offset = time.time() - trio.current_time()
        self.config = replace(config or DhtConfig(), clock_offset=offset)
        self.node = DhtNode(
            identity.peer_id,
            listen=_literal_listen(listen),
            random_bytes=os.urandom,
            now=trio.current_time(),
            config=self.config,
        )
        self.misbehaved = 0
        self.bootstrapped = False
        self.join_retry = (_JOIN_RETRY_FIRST, _JOIN_RETRY_MAX)
        self._waiters: dict[int, _Waiter] = {}
        self._addresses: OrderedDict[Contact, Address] = OrderedDict()
        self._timer = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._stopped = False
        if router is not None:
            for method in (PING, FIND_NODE, GET, PUT):
                router.unary(method, self._handle_request)

    @classmethod
    def for_node(
        cls,
        node: Node,
        *,
        initial_peers: Sequence[Address] = (),
        config: DhtConfig | None = None,
    ) -> DhtService:
        """A full node on a running ``Node``: its pool, router and address."""
        return cls(
            node.pool,
            node.identity,
            router=node.router,
            listen=node.address,
            initial_peers=initial_peers,
            config=config,
        )

    @property
    def is_server(self) -> bool:
        """True for a full node, False for a client."""
        return self.listen is not None

    # Running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the DHT, report started, then serve until cancelled.

        Joining looks up our own id through ``initial_peers`` (Kademlia §2.3) and repeats,
        with a doubling pause, until one of them answered; with no initial peers but
        ourselves the service reports started at once.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                nursery.start_soon(self._timer_loop)
                await self._resolve_listen()
                ours = self.identity.peer_id
                others = [a for a in self.initial_peers if a.peer_id != ours]
                seeds = await _resolve_contacts(others)
                if others and not seeds:
                    log.warning("no initial peer could be resolved; running alone")
                if seeds:
                    await self._join(seeds)
                    nursery.start_soon(self._stay_joined, seeds)
                self.bootstrapped = True
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._stop()

    def _stop(self) -> None:
        self._stopped = True
        for waiter in self._waiters.values():
            waiter.done.set()  # result None: the caller raises ClosedResourceError

    async def _join(self, seeds: list[Contact]) -> LookupResult:
        pause, longest = self.join_retry
        while True:
            event = await self._run_op(lambda now: self.node.bootstrap(seeds, now))
            assert isinstance(event, LookupFinished)
            if event.result.closest:
                log.info("joined: %d nodes answered", len(event.result.closest))
                return event.result
            log.warning("no initial peer answered; retrying in %g s", pause)
            await trio.sleep(pause)
            pause = min(pause * 2, longest)

    async def _stay_joined(self, seeds: list[Contact]) -> None:
        # A table emptied by failures cannot heal through lookups: join again.
        while True:
            await trio.sleep(_REJOIN_INTERVAL)
            if not len(self.node.table):
                log.info("routing table empty; joining again")
                await self._join(seeds)

    async def _resolve_listen(self) -> None:
        if self.listen is None or self.node.listen is not None:
            return
        resolved = await _resolve_contacts([self.listen])
        if not resolved:
            log.warning("cannot resolve our own address %s: requests carry no listen", self.listen)
            return
        self.node.listen = (resolved[0].host, resolved[0].port)

    async def _timer_loop(self) -> None:
        while True:
            self._timer = trio.CancelScope(deadline=self._deadline())
            with self._timer:
                await trio.sleep_forever()
            self._after_input(self.node.handle_timer(trio.current_time()))

    def _deadline(self) -> float:
        deadline = self.node.next_deadline()
        return math.inf if deadline is None else deadline

    # The pump ----------------------------------------------------------------------------

    def _after_input(self, events: list[DhtEvent]) -> None:
        for event in events:
            if isinstance(event, PeerMisbehaved):
                self.misbehaved += 1
                log.info("peer %s misbehaved: %s", event.peer.short(), event.reason)
            elif (waiter := self._waiters.get(event.op_id)) is not None:
                waiter.result = event
                waiter.done.set()
        if self._nursery is not None and not self._stopped:
            for request in self.node.requests_to_send():
                self._nursery.start_soon(self._send, request)
        self._timer.deadline = self._deadline()

    async def _send(self, request: SendRequest) -> None:
        message = request.message
        address = self._address_of(request.peer)
        try:
            body = await self.pool.call(
                address, message.method, message.to_body(), timeout=request.timeout
            )
        except RpcError as exc:
            code = exc.code if exc.code in _ANSWER_CODES else None
            events = self.node.on_failure(request.request_id, trio.current_time(), code=code)
        except (
            OSError,
            ProtocolError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as exc:
            log.debug("%s to %s failed: %r", message.method, address, exc)
            events = self.node.on_failure(request.request_id, trio.current_time())
        else:
            events = self.node.on_response(request.request_id, body, trio.current_time())
        self._after_input(events)

    def _address_of(self, contact: Contact) -> Address:
        cache = self._addresses
        address = cache.get(contact)
        if address is None:
            address = cache[contact] = Address(contact.peer_id, contact.host, contact.port)
            if len(cache) > _ADDRESS_CACHE:
                cache.popitem(last=False)
        return address

    async def _run_op(self, start: Callable[[float], int]) -> DhtEvent:
        if self._nursery is None or self._stopped:
            raise trio.ClosedResourceError("the DHT service is not running")
        op_id = start(trio.current_time())
        waiter = self._waiters[op_id] = _Waiter()
        self._after_input([])
        try:
            await waiter.done.wait()
        finally:
            del self._waiters[op_id]
        if waiter.result is None:
            raise trio.ClosedResourceError("the DHT service stopped")
        return waiter.result

    # Serving -----------------------------------------------------------------------------

    async def _handle_request(self, ctx: CallContext, body: Any) -> Any:
        remote = ctx.peer.remote
        try:
            response = self.node.handle_request(
                ctx.peer_id,
                ctx.method,
                body,
                trio.current_time(),
                remote_host=None if remote is None else remote[0],
            )
        except DhtRequestError as exc:
            raise RpcError(exc.code, exc.reason) from None
        finally:
            self._after_input([])  # a new contact may make the table ping an old one
        return response

    # Operations --------------------------------------------------------------------------

    async def get(self, key: bytes) -> list[Record]:
        """Fetch the records under ``key`` (SPEC.md §12.8.3).

        Every record was validated; there is one per slot, the best of all copies found
        (our own store included on a full node).  Entry correction of the peers that
        answered runs in the background; an older copy in our own store is replaced at once.

        Raises:
            ValueError: ``key`` is not 32 bytes.
            trio.ClosedResourceError: the service is not running.
        """
        event = await self._run_op(lambda now: self.node.get(key, now))
        assert isinstance(event, GetFinished)
        unix_now = time.time()
        ours = self.node.store.get(key, unix_now)
        best = select_best([*event.records, *ours])
        for record in ours:  # entry correction of our own store
            better = best[(record.key, record.subkey)]
            if better is not record:
                with contextlib.suppress(RecordRejected):
                    self.node.store.put(better, unix_now)
        return list(best.values())

    async def put(self, record: Record, *, republish: bool = False) -> int:
        """Store ``record`` on the k nodes closest to its key (SPEC.md §12.8.3).

        Args:
            record: a signed record.
            republish: put it again every ``republish_interval`` until it expires.

        Returns:
            How many nodes stored it (ourselves included when we are among the closest).

        Raises:
            DhtPutError: no node stored it; ``rejected`` says why.
            trio.ClosedResourceError: the service is not running.
        """
        event = await self._run_op(lambda now: self.node.put(record, now, republish=republish))
        assert isinstance(event, PutFinished)
        if event.stored == 0:
            raise DhtPutError(record, event.rejected)
        return event.stored

    async def publish(
        self, record: Record, *, attempts: int = 3, backoff: float = 1.0
    ) -> PutFinished:
        """Put ``record`` until a quorum of its targets acknowledged it (SPEC.md §12.8.3).

        Each try is a whole put: a fresh lookup (dead contacts found by the last one count
        against them in the table) and ``dht.put`` to the k closest that answered.  Between
        tries it sleeps ``backoff`` seconds, doubling.  Whether the last try succeeded is
        ``ok`` of the result; warning the operator is the caller's job.

        Args:
            record: a signed record.
            attempts: the most tries (at least one).
            backoff: the first pause, in seconds.

        Returns:
            The ``PutFinished`` of the first try that succeeded, or of the last one.

        Raises:
            ValueError: ``attempts`` is below 1.
            trio.ClosedResourceError: the service is not running.
        """
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        pause = backoff
        for attempt in range(attempts):
            event = await self._run_op(lambda now: self.node.put(record, now))
            assert isinstance(event, PutFinished)
            result = event
            if result.ok or attempt == attempts - 1:
                break
            log.debug(
                "put under %s…: %d of %d targets acknowledged (quorum %d); again in %g s",
                record.key.hex()[:16],
                event.acked,
                event.targets,
                event.quorum,
                pause,
            )
            await trio.sleep(pause)
            pause *= 2
        return result

    async def find_node(self, target: int) -> list[Contact]:
        """The k nodes closest to ``target`` that answered, closest first (SPEC.md §12.8.1).

        Raises:
            ValueError: ``target`` is not a 256-bit id.
            trio.ClosedResourceError: the service is not running.
        """
        if not 0 <= target < 1 << 256:
            raise ValueError("a target is a 256-bit id")
        key = target.to_bytes(32, "big")
        event = await self._run_op(lambda now: self.node.find_node(key, now))
        assert isinstance(event, LookupFinished)
        return [found.contact for found in event.result.closest]

    async def ping(self, contact: Contact) -> float:
        """Call ``dht.ping`` on ``contact`` and return the round trip in seconds.

        Only a probe: the routing table does not learn from it.  Wrap it in
        ``trio.fail_after`` for a shorter limit than ``config.rpc_timeout``.

        Raises:
            RpcError: the peer answered with an error.
            trio.TooSlowError: no answer within ``config.rpc_timeout``.
            OSError, trio.BrokenResourceError, HandshakeFailed: the peer is unreachable.
        """
        start = trio.current_time()
        await self.pool.call(self._address_of(contact), PING, {}, timeout=self.config.rpc_timeout)
        return trio.current_time() - start

    # Introspection -----------------------------------------------------------------------

    def routing_table_snapshot(self) -> dict[int, list[Contact]]:
        """The routing table: contacts by bucket index (CPL with our id), least recently
        seen first within a bucket."""
        table = self.node.table
        out: dict[int, list[Contact]] = {}
        for contact in table.contacts():
            out.setdefault(table.bucket_of(contact.node_id), []).append(contact)
        return out

    def store_snapshot(self) -> list[Record]:
        """The live records this node stores for others (empty for a client)."""
        unix_now = time.time()
        return [r for r in self.node.store.records() if r.expires > unix_now]


def _literal_listen(listen: Address | None) -> tuple[str, int] | None:
    if listen is None or not _is_ip(listen.host):
        return None  # a host name: resolved by run()
    return (listen.host, listen.port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return "%" not in host


async def _resolve_contacts(addresses: Sequence[Address]) -> list[Contact]:
    """DHT contacts for dialable addresses: host names become IP literals (SPEC.md §12.2)."""
    contacts = []
    for address in addresses:
        host = address.host
        if not _is_ip(host):
            try:
                infos = await trio.socket.getaddrinfo(
                    host, address.port, type=trio.socket.SOCK_STREAM
                )
            except OSError as exc:
                log.warning("cannot resolve %s: %s", address, exc)
                continue
            hosts = [str(info[4][0]) for info in infos if _is_ip(str(info[4][0]))]
            if not hosts:
                continue
            host = hosts[0]
        contacts.append(Contact(peer_id=address.peer_id, host=host, port=address.port))
    return contacts
