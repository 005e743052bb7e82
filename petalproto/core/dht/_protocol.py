"""The sans-IO DHT node: routing table, record store, request handling and operations.

Theory of operation
-------------------
``DhtNode`` sits above connections and works on decoded messages (STYLE.md §2).  It has two
faces.

*Server.*  ``handle_request(sender, method, body, now)`` answers one RPC: it checks the body
(``parse_request``), adds the sender to the routing table when the request names a listening
address (clients send none and never enter tables, as in libp2p's client mode), and returns
the response body.  A refused request raises ``DhtRequestError`` carrying the error code;
the shell sends that code and reason as the RPC error response.  Nothing a peer sends makes
it raise anything else.

*Client.*  ``bootstrap``, ``find_node``, ``get`` and ``put`` start operations and return an
operation id.  Operations run iterative ``Lookup``s; every request they need is queued as a
numbered ``SendRequest`` and pulled with ``requests_to_send()`` (the way ``data_to_send()``
works on a connection).  The shell runs each request and feeds back exactly one of
``on_response(request_id, body, now)`` or ``on_failure(request_id, now, code=...)``.  These
inputs, and ``handle_timer``, return events: ``LookupFinished``, ``GetFinished``,
``PutFinished`` when an operation ends, and ``PeerMisbehaved`` for a peer that sent garbage.

Operations:

* ``find_node``: one lookup; ``bootstrap`` is a lookup of our own id from the given seeds,
  then a refresh of every bucket farther than our closest neighbour (Kademlia §2.3).
* ``get``: a value lookup that verifies every record it fetches, then *entry correction*:
  the best record of each slot is put to the k closest peers that answered without it or
  with an older copy (libp2p kad-dht §"Entry correction").
* ``put``: a lookup of the key, then ``dht.put`` to the k closest that answered; ``ok`` when
  at least ``put_quorum`` of them (all of them, when fewer answered) acknowledged it; our
  own store never counts.  The lookup starts from the table's k closest *and* the nodes we
  joined through, and when it ends with fewer than k answers it goes on from every table
  contact it has not tried: a table crowded with dead contacts near the key must not make
  the put miss the live nodes behind them.  With ``republish=True`` the node puts the same
  signed record again every ``republish_interval`` until it expires, so new nodes near the
  key learn it.

Every answer marks the peer alive in the table (``observe``); every failure without an
error code counts against it (``record_failure``); a peer that sent a malformed answer or a
forged record is dropped from the table.  Timers: lookup request timeouts, bucket refresh,
record expiry and republish, all through ``handle_timer``/``next_deadline``.

Time: ``now`` is the shell's monotonic clock.  Records carry unix times, so the node adds
``config.clock_offset`` (unix time minus monotonic time, measured once by the shell) before
it checks expiry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .._errors import ErrorCode
from .._identity import PeerId
from ._config import DhtConfig
from ._errors import RecordRejected
from ._events import (
    DhtEvent,
    GetFinished,
    LookupFinished,
    LookupResult,
    PutFinished,
    SendRequest,
)
from ._ids import Contact, node_id_of
from ._lookup import Lookup, LookupCommand
from ._messages import (
    FIND_NODE,
    GET,
    MAX_RECORDS_PER_RESPONSE,
    PING,
    PUT,
    FindNode,
    Get,
    Listen,
    Put,
    Request,
    nodes_body,
    parse_request,
)
from ._records import Record
from ._routing import RoutingTable
from ._store import RecordStore

__all__ = ["DhtNode"]


@dataclass(slots=True)
class _Op:
    """One client operation: a lookup, then for puts a round of ``dht.put`` requests."""

    kind: str  # "find", "bootstrap", "refresh", "get", "put"
    lookup: Lookup
    notify: bool = True
    record: Record | None = None
    put_waiting: set[int] = field(default_factory=set)
    stored: int = 0
    acked: int = 0
    targets: int = 0
    rejected: list[tuple[PeerId, ErrorCode]] = field(default_factory=list)
    unanswered: list[PeerId] = field(default_factory=list)
    putting: bool = False


@dataclass(frozen=True, slots=True)
class _Pending:
    op_id: int | None
    contact: Contact
    message: Request


class DhtNode:
    """A DHT node without I/O.

    Args:
        our_id: our peer id.
        listen: the address we accept connections on, sent in every request; None for a
            client, which never enters other nodes' routing tables.
        random_bytes: randomness for refresh targets.
        now: the current time.
        config: parameters; defaults to ``DhtConfig()``.
    """

    def __init__(
        self,
        our_id: PeerId,
        *,
        listen: Listen | None,
        random_bytes: Callable[[int], bytes],
        now: float,
        config: DhtConfig | None = None,
    ) -> None:
        self.our_id = our_id
        self.listen = listen
        self.config = config or DhtConfig()
        self.table = RoutingTable(
            our_id, random_bytes=random_bytes, now=now, config=self.config.routing
        )
        self.store = RecordStore(self.config.store)
        self._our_key = node_id_of(our_id).to_bytes(32, "big")
        self._ops: dict[int, _Op] = {}
        self._pending: dict[int, _Pending] = {}
        self._outbox: list[SendRequest] = []
        self._published: dict[tuple[bytes, bytes], tuple[Record, float]] = {}
        self._ready: dict[int, float] = {}  # ops whose lookup ended in start(), by time
        self._contacts: dict[bytes, Contact] = {}  # parse cache shared by our lookups
        self._distrusted: dict[PeerId, float] = {}  # misbehaved peer -> kept out until
        self._seeds: list[Contact] = []  # the contacts we joined through, for puts
        self._next_op = self._next_request = 1

    # Server side --------------------------------------------------------------------------

    def handle_request(
        self,
        sender: PeerId,
        method: str,
        body: object,
        now: float,
        *,
        remote_host: str | None = None,
    ) -> dict[str, Any]:
        """Answer one DHT request (SPEC.md §12.3).

        Args:
            sender: the authenticated peer that sent it.
            method: the RPC method, such as ``"dht.find_node"``.
            body: the request body, decoded under the strict msgpack profile.
            now: the current time.
            remote_host: the IP address the connection came from; when given, the sender
                enters the routing table under this address and its ``listen`` port.

        Returns:
            The response body.

        Raises:
            DhtRequestError: the request is refused; ``code`` and ``reason`` go into the
                error response (``UNKNOWN_METHOD``, ``BAD_REQUEST``, ``RECORD_*``,
                ``QUOTA_EXCEEDED``).
        """
        request = parse_request(method, body)
        if request.listen is not None and sender != self.our_id:
            host = request.listen[0] if remote_host is None else remote_host
            try:
                contact = Contact(peer_id=sender, host=host, port=request.listen[1])
            except ValueError:
                pass  # an unusable remote address: answer, but keep it out of the table
            else:
                self._observe(contact, now)
        return self._handlers[request.method](self, request, sender, now)

    def _answer_ping(self, request: Request, sender: PeerId, now: float) -> dict[str, Any]:
        return {}

    def _answer_find_node(self, request: Request, sender: PeerId, now: float) -> dict[str, Any]:
        assert isinstance(request, FindNode)
        target = int.from_bytes(request.target, "big")
        return {"nodes": nodes_body(self._closest(target, sender))}

    def _answer_get(self, request: Request, sender: PeerId, now: float) -> dict[str, Any]:
        assert isinstance(request, Get)
        records = self.store.get(request.key, now + self.config.clock_offset)
        target = int.from_bytes(request.key, "big")
        return {
            "records": [r.to_wire() for r in records[:MAX_RECORDS_PER_RESPONSE]],
            "nodes": nodes_body(self._closest(target, sender)),
        }

    def _answer_put(self, request: Request, sender: PeerId, now: float) -> dict[str, Any]:
        assert isinstance(request, Put)
        self.store.put(request.record, now + self.config.clock_offset)
        return {}

    _handlers: dict[str, Callable[[DhtNode, Request, PeerId, float], dict[str, Any]]] = {
        PING: _answer_ping,
        FIND_NODE: _answer_find_node,
        GET: _answer_get,
        PUT: _answer_put,
    }

    def _closest(self, target: int, sender: PeerId) -> list[Contact]:
        return self.table.closest(target, self.config.routing.k, exclude=sender)

    # Client operations --------------------------------------------------------------------

    def bootstrap(self, seeds: Iterable[Contact], now: float) -> int:
        """Join through ``seeds``: look up our own id, then refresh the farther buckets.

        Returns:
            The operation id of the ``LookupFinished`` event for the self-lookup.
        """
        self._seeds = list(seeds)
        return self._start("bootstrap", self._lookup(self._our_key, list(self._seeds)), now)

    def find_node(self, target: bytes, now: float) -> int:
        """Start a lookup of the k nodes closest to ``target``.

        Returns:
            The operation id of the ``LookupFinished`` event.

        Raises:
            ValueError: ``target`` is not 32 bytes.
        """
        return self._start("find", self._lookup(target), now)

    def get(self, key: bytes, now: float) -> int:
        """Start fetching the records under ``key``.

        Returns:
            The operation id of the ``GetFinished`` event.

        Raises:
            ValueError: ``key`` is not 32 bytes.
        """
        return self._start("get", self._lookup(key, value=True), now)

    def put(self, record: Record, now: float, *, republish: bool = False) -> int:
        """Start storing ``record`` on the k nodes closest to its key.

        Args:
            record: a signed record (see ``make_named_record``, ``make_dictionary_record``).
            now: the current time.
            republish: put it again every ``republish_interval`` until it expires.

        Returns:
            The operation id of the ``PutFinished`` event.
        """
        if republish:
            slot = (record.key, record.subkey)
            self._published[slot] = (record, now + self.config.republish_interval)
        return self._start("put", self._put_lookup(record.key), now, record=record)

    def _put_lookup(self, key: bytes) -> Lookup:
        # SPEC.md §12.8.3: the nodes we joined through are candidates of every put, behind
        # the k closest of the table, so a table crowded with dead contacts cannot hide them.
        closest = self.table.closest(int.from_bytes(key, "big"), self.config.routing.k)
        return self._lookup(key, [*closest, *self._seeds])

    def _lookup(
        self, target: bytes, seeds: list[Contact] | None = None, *, value: bool = False
    ) -> Lookup:
        config = self.config
        if seeds is None:
            seeds = self.table.closest(int.from_bytes(target, "big"), config.routing.k)
        return Lookup(
            target,
            seeds,
            our_id=self.our_id,
            value=value,
            k=config.routing.k,
            alpha=config.alpha,
            disjoint_paths=config.disjoint_paths,
            request_timeout=config.request_timeout,
            rpc_timeout=config.rpc_timeout,
            quorum=config.get_quorum if value else None,
            clock_offset=config.clock_offset,
            contact_cache=self._contacts,
        )

    def _start(
        self,
        kind: str,
        lookup: Lookup,
        now: float,
        *,
        notify: bool = True,
        record: Record | None = None,
    ) -> int:
        op_id = self._next_op
        self._next_op += 1
        self._ops[op_id] = _Op(kind, lookup, notify, record)
        for command in lookup.start(now):
            assert isinstance(command, SendRequest)  # start() only sends
            self._send(command, op_id)
        if lookup.done:  # no seeds: report on the next handle_timer, never from here
            self._ready[op_id] = now
        return op_id

    def unpublish(self, key: bytes, subkey: bytes) -> bool:
        """Stop republishing our record in slot ``(key, subkey)``.

        Returns:
            True when the slot was being republished.
        """
        return self._published.pop((key, subkey), None) is not None

    # Feedback from the shell -------------------------------------------------------------

    def on_response(self, request_id: int, body: object, now: float) -> list[DhtEvent]:
        """Feed the response to request ``request_id``.

        Args:
            request_id: the ``request_id`` of the ``SendRequest``.
            body: the decoded response body.
            now: the current time.

        Returns:
            The events it caused.
        """
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return []
        self._observe(pending.contact, now)
        op_id, op = self._op_of(pending)
        if op is None:
            return []
        if request_id in op.put_waiting:
            op.put_waiting.discard(request_id)
            op.stored += 1
            op.acked += 1
            return self._maybe_put_finished(op_id, op)
        peer = pending.contact.peer_id
        return self._after_lookup(op_id, op, op.lookup.on_response(peer, body, now), now)

    def on_failure(
        self, request_id: int, now: float, *, code: ErrorCode | None = None
    ) -> list[DhtEvent]:
        """Report that request ``request_id`` got no response.

        Args:
            request_id: the ``request_id`` of the ``SendRequest``.
            now: the current time.
            code: the error code when the peer answered with an error response; None when
                the request timed out or the connection failed.

        Returns:
            The events it caused.
        """
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return []
        peer = pending.contact.peer_id
        if code is None:
            self.table.record_failure(peer, now)
        else:
            self._observe(pending.contact, now)  # it is alive
        op_id, op = self._op_of(pending)
        if op is None:
            return []
        if request_id in op.put_waiting:
            op.put_waiting.discard(request_id)
            if code is None:
                op.unanswered.append(peer)
            else:
                op.rejected.append((peer, code))
            return self._maybe_put_finished(op_id, op)
        return self._after_lookup(op_id, op, op.lookup.on_failure(peer, now), now)

    def handle_timer(self, now: float) -> list[DhtEvent]:
        """Run what is due: lookup timeouts, refreshes, expiry, republish.

        Harmless when called early or late.

        Returns:
            The events it caused.
        """
        events: list[DhtEvent] = []
        for op_id in [i for i, at in self._ready.items() if at <= now]:
            del self._ready[op_id]
            events += self._lookup_finished(op_id, self._ops[op_id], now)
        for op_id, op in list(self._ops.items()):
            if not op.lookup.done:
                events += self._after_lookup(op_id, op, op.lookup.handle_timer(now), now)
        for due in self.table.handle_timer(now):
            target = due.target.to_bytes(32, "big")
            self._start("refresh", self._lookup(target), now, notify=False)
        self.store.sweep(now + self.config.clock_offset)
        self._republish(now)
        return events

    # Outputs -----------------------------------------------------------------------------

    def requests_to_send(self) -> list[SendRequest]:
        """Take the requests queued since the last call, each with its ``request_id``."""
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` next has work, or None."""
        times = list(self._ready.values())
        times += [at for _, at in self._published.values()]
        for op in self._ops.values():
            deadline = op.lookup.next_deadline()
            if deadline is not None:
                times.append(deadline)
        table = self.table.next_deadline()
        if table is not None:
            times.append(table)
        expiry = self.store.next_expiry()
        if expiry is not None:
            times.append(expiry - self.config.clock_offset)
        return min(times, default=None)

    # Internals ----------------------------------------------------------------------------

    def _op_of(self, pending: _Pending) -> tuple[int, _Op | None]:
        if pending.op_id is None:
            return 0, None
        return pending.op_id, self._ops.get(pending.op_id)

    def _send(self, command: SendRequest, op_id: int | None) -> int:
        request_id = self._next_request
        self._next_request += 1
        message = command.message
        if self.listen is not None:
            message = replace(message, listen=self.listen)
        self._pending[request_id] = _Pending(op_id, command.peer, message)
        self._outbox.append(
            SendRequest(
                peer=command.peer, message=message, request_id=request_id, timeout=command.timeout
            )
        )
        return request_id

    def _queue(self, commands: list[SendRequest], op_id: int | None) -> None:
        for command in commands:
            self._send(command, op_id)

    def _observe(self, contact: Contact, now: float) -> None:
        """A contact proved alive: into the routing table, unless it misbehaved lately."""
        until = self._distrusted.get(contact.peer_id)
        if until is not None:
            if until > now:
                return
            del self._distrusted[contact.peer_id]
        self._queue(self.table.observe(contact, now), None)

    def _distrust(self, peer: PeerId, now: float) -> None:
        """Forget ``peer`` and keep it out for ``distrust_time`` (answers to requests already
        in flight, or its own calls, would otherwise put it straight back)."""
        self.table.remove(peer)
        self._distrusted.pop(peer, None)
        self._distrusted[peer] = now + self.config.distrust_time
        while len(self._distrusted) > self.config.max_distrusted:
            del self._distrusted[next(iter(self._distrusted))]  # the oldest

    def _after_lookup(
        self, op_id: int, op: _Op, commands: list[LookupCommand], now: float
    ) -> list[DhtEvent]:
        events: list[DhtEvent] = []
        for command in commands:
            if isinstance(command, SendRequest):
                self._send(command, op_id)
            else:
                events.append(command)
                self._distrust(command.peer, now)
        if op.lookup.done and op_id not in self._ready and not op.putting:
            events += self._lookup_finished(op_id, op, now)
        return events

    def _lookup_finished(self, op_id: int, op: _Op, now: float) -> list[DhtEvent]:
        result = op.lookup.result()
        cache = self._contacts
        while len(cache) > self.config.contact_cache:
            del cache[next(iter(cache))]  # oldest first
        self.table.mark_refreshed(int.from_bytes(result.target, "big"), now)
        if op.kind == "put":
            if len(result.closest) < self.config.routing.k and self._refill(op_id, op, now):
                return []
            return self._start_puts(op_id, op, result, now)
        del self._ops[op_id]
        if op.kind == "get":
            return self._get_finished(op_id, op, result)
        if op.kind == "bootstrap":
            self._refresh_far_buckets(result, now)
        if not op.notify:
            return []
        return [LookupFinished(op_id=op_id, result=result)]

    def _refill(self, op_id: int, op: _Op, now: float) -> bool:
        """Continue a put's lookup from every table contact it has not tried (SPEC.md
        §12.8.3): its first candidates may all be dead while live nodes sit farther out.

        Returns:
            True when the lookup goes on (it had new candidates).
        """
        target = int.from_bytes(op.lookup.target, "big")
        for command in op.lookup.add_seeds(self.table.closest(target, len(self.table)), now):
            assert isinstance(command, SendRequest)  # new candidates only get requests
            self._send(command, op_id)
        return not op.lookup.done

    def _refresh_far_buckets(self, result: LookupResult, now: float) -> None:
        # Kademlia §2.3: after the self-lookup, refresh every bucket farther than the
        # closest neighbour, so the far buckets fill before the first refresh timer.
        if not result.closest:
            return
        nearest = self.table.bucket_of(result.closest[0].contact.node_id)
        for index in range(nearest):
            target = self.table.random_id_in(index).to_bytes(32, "big")
            self._start("refresh", self._lookup(target), now, notify=False)

    def _get_finished(self, op_id: int, op: _Op, result: LookupResult) -> list[DhtEvent]:
        for contact, record in result.outdated[: self.config.max_corrections]:
            self._send(
                SendRequest(
                    peer=contact, message=Put(record=record), timeout=self.config.rpc_timeout
                ),
                None,
            )
        return [GetFinished(op_id=op_id, key=result.target, records=result.records, result=result)]

    def _start_puts(self, op_id: int, op: _Op, result: LookupResult, now: float) -> list[DhtEvent]:
        record = op.record
        assert record is not None
        op.putting = True
        op.targets = len(result.closest)
        for node in result.closest:
            op.put_waiting.add(
                self._send(
                    SendRequest(
                        peer=node.contact,
                        message=Put(record=record),
                        timeout=self.config.rpc_timeout,
                    ),
                    op_id,
                )
            )
        if self.listen is not None and self._among_closest(record.key, result):
            try:
                self.store.put(record, now + self.config.clock_offset)
            except RecordRejected as exc:
                op.rejected.append((self.our_id, exc.code))
            else:
                op.stored += 1
        return self._maybe_put_finished(op_id, op)

    def _among_closest(self, key: bytes, result: LookupResult) -> bool:
        if len(result.closest) < self.config.routing.k:
            return True
        target = int.from_bytes(key, "big")
        farthest = result.closest[-1].contact.node_id ^ target
        return node_id_of(self.our_id) ^ target < farthest

    def _maybe_put_finished(self, op_id: int, op: _Op) -> list[DhtEvent]:
        if op.put_waiting:
            return []
        del self._ops[op_id]
        if not op.notify:
            return []
        assert op.record is not None
        # SPEC.md §12.8.3: a quorum of the nodes that answered the lookup must acknowledge;
        # our own store does not count, or a publisher cut off from the swarm would think
        # its record was out there.
        quorum = max(1, min(self.config.put_quorum, op.targets))
        return [
            PutFinished(
                op_id=op_id,
                record=op.record,
                stored=op.stored,
                rejected=tuple(op.rejected),
                ok=op.acked >= quorum,
                targets=op.targets,
                acked=op.acked,
                quorum=quorum,
                unanswered=tuple(op.unanswered),
            )
        ]

    def _republish(self, now: float) -> None:
        unix_now = now + self.config.clock_offset
        for slot, (record, at) in list(self._published.items()):
            if record.expires <= unix_now:
                del self._published[slot]
            elif at <= now:
                self._published[slot] = (record, now + self.config.republish_interval)
                self._start("put", self._put_lookup(record.key), now, notify=False, record=record)
