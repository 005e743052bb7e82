"""The iterative lookup state machine (SPEC.md §12.8).

Theory of operation
-------------------
A ``Lookup`` finds the k nodes closest to a 32-byte target and, for a value lookup
(``dht.get``), collects the records they hold.  It sends no bytes and reads no clock: each
input (``start``, ``on_response``, ``on_failure``, ``handle_timer``) returns the commands it
caused, ``SendRequest`` and ``PeerMisbehaved``.

Every candidate node is in one state:

    NEW --send--> WAITING --answer--> ANSWERED
                     |  \\--error--> FAILED
                     \\--request_timeout--> TIMED_OUT --late answer--> ANSWERED
                                                    \\--error--> FAILED

Each disjoint path keeps its candidates that have not failed (NEW, WAITING, ANSWERED) in a
list sorted by XOR distance to the target.  A path keeps up to ``alpha`` requests WAITING,
always to the closest NEW candidates among its ``k`` closest (Kademlia §2.3, alpha = 3).  A
timed-out request frees its slot at once but may still answer late (libp2p's asynchronous
lookup); a failed or timed-out node leaves the sorted list, so the next candidate moves up.
A path is finished when its ``k`` closest candidates have all answered, or when none is
left (libp2p kad-dht §"Lookup termination").  A value lookup also finishes once ``quorum``
peers returned valid records.  The lookup is ``done`` when every path is.

Disjoint paths (S/Kademlia §4.4): the seeds are dealt round-robin, by distance, onto ``d``
paths, and a node named by a node on path p joins path p unless some path already knows it.
So a node is used by at most one path, and colluding nodes that answer only with each other
can capture the paths that ask them but not the others.  The result merges the paths: the
k closest nodes that answered, from any path.

Invariants: a node is contacted at most once; ``in_flight[p]`` equals the number of WAITING
candidates on path p; answers from nodes we did not ask, or after ``done``, are ignored.
The lookup never raises because of what a peer sent: a malformed answer fails that peer and
a forged record is dropped, each with a ``PeerMisbehaved`` command.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from .._errors import ErrorCode, LocalProtocolError, MalformedMessage
from .._identity import PeerId
from ._errors import RecordRejected
from ._events import FoundNode, LookupResult, PeerMisbehaved, SendRequest
from ._ids import Contact
from ._messages import FindNode, Get, K, parse_get_response, parse_nodes_response
from ._records import Record, parse_record, record_rank, select_best, validate_record

__all__ = ["Lookup", "LookupCommand"]

LookupCommand = SendRequest | PeerMisbehaved

_NEW, _WAITING, _ANSWERED, _TIMED_OUT, _FAILED = range(5)


class _Candidate:
    __slots__ = ("contact", "deadline", "dist", "hops", "path", "state")

    def __init__(self, contact: Contact, dist: int, hops: int, path: int) -> None:
        self.contact = contact
        self.dist = dist
        self.hops = hops
        self.path = path
        self.state = _NEW
        self.deadline = 0.0


def _dist(candidate: _Candidate) -> int:
    return candidate.dist


class Lookup:
    """An iterative Kademlia lookup for a target id or a key.

    Args:
        target: the 32-byte id (``find_node``) or key (``get``) to look up.
        seeds: contacts to start from, usually ``RoutingTable.closest(target, k)``.
        our_id: our own peer id, never contacted; None for a client without one in tables.
        value: True for a value lookup (``dht.get``), False for ``dht.find_node``.
        k: replication parameter: how many closest nodes must answer.
        alpha: requests in flight per path.
        disjoint_paths: d of S/Kademlia; 1 for an ordinary lookup.
        request_timeout: seconds after which a request stops holding its slot.
        rpc_timeout: the ``timeout`` put on each ``SendRequest`` for the shell.
        quorum: value lookups: finish once this many peers returned valid records.
        clock_offset: add to ``now`` to get unix time, for record expiry checks.
        contact_cache: parsed contacts by raw peer id, shared between lookups so that a
            contact seen before is not parsed (and its key not checked) again; the lookup
            adds what it parses.  None: a cache private to this lookup.

    Raises:
        ValueError: ``target`` is not 32 bytes or a parameter is out of range.
    """

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[Contact],
        *,
        our_id: PeerId | None = None,
        value: bool = False,
        k: int = K,
        alpha: int = 3,
        disjoint_paths: int = 1,
        request_timeout: float = 2.0,
        rpc_timeout: float = 10.0,
        quorum: int | None = None,
        clock_offset: float = 0.0,
        contact_cache: dict[bytes, Contact] | None = None,
    ) -> None:
        if type(target) is not bytes or len(target) != 32:
            raise ValueError("a lookup target is 32 bytes")
        if k < 1 or alpha < 1 or disjoint_paths < 1 or request_timeout <= 0:
            raise ValueError("k, alpha, disjoint_paths and request_timeout must be positive")
        if quorum is not None and (not value or quorum < 1):
            raise ValueError("quorum is a positive count, for value lookups only")
        self.target = target
        self._target_id = int.from_bytes(target, "big")
        self._value = value
        self._k, self._alpha, self._paths = k, alpha, disjoint_paths
        self._request_timeout = request_timeout
        self._quorum = quorum
        self._clock_offset = clock_offset
        self._message = Get(key=target) if value else FindNode(target=target)
        self._rpc_timeout = rpc_timeout
        self._our_raw = None if our_id is None else our_id.raw
        self._cands: dict[bytes, _Candidate] = {}
        self._known: dict[bytes, Contact] = {} if contact_cache is None else contact_cache
        self._order: list[list[_Candidate]] = [[] for _ in range(disjoint_paths)]
        self._in_flight = [0] * disjoint_paths
        self._waiting: dict[bytes, _Candidate] = {}
        self._returned: dict[bytes, list[Record]] = {}
        self._rpcs = self._failures = 0
        self._started = False
        self.done = False
        ordered = sorted(self._new_contacts(seeds), key=lambda c: c.node_id ^ self._target_id)
        for i, contact in enumerate(ordered):
            self._add(contact, 0, i % disjoint_paths)

    def _new_contacts(self, contacts: Iterable[Contact]) -> Iterable[Contact]:
        seen: set[bytes] = set()
        for contact in contacts:
            raw = contact.peer_id.raw
            if raw != self._our_raw and raw not in self._cands and raw not in seen:
                seen.add(raw)
                yield contact

    def _add(self, contact: Contact, hops: int, path: int) -> None:
        raw = contact.peer_id.raw
        cand = _Candidate(contact, contact.node_id ^ self._target_id, hops, path)
        self._cands[raw] = cand
        self._known[raw] = contact
        bisect.insort(self._order[path], cand, key=_dist)

    def _drop(self, cand: _Candidate) -> None:
        order = self._order[cand.path]
        del order[bisect.bisect_left(order, cand.dist, key=_dist)]

    # Inputs -------------------------------------------------------------------------------

    def start(self, now: float) -> list[LookupCommand]:
        """Send the first requests.

        Returns:
            Up to ``alpha`` ``SendRequest`` commands per path.

        Raises:
            LocalProtocolError: the lookup was already started.
        """
        if self._started:
            raise LocalProtocolError("the lookup was already started")
        self._started = True
        commands: list[LookupCommand] = []
        self._advance(range(self._paths), now, commands)
        return commands

    def on_response(self, peer: PeerId, body: object, now: float) -> list[LookupCommand]:
        """Feed the answer of ``peer``.

        Args:
            peer: who answered.
            body: the decoded response body.
            now: the current time.

        Returns:
            Further requests, and ``PeerMisbehaved`` for a malformed answer or forged record.
        """
        cand = self._cands.get(peer.raw)
        if self.done or cand is None or cand.state not in (_WAITING, _TIMED_OUT):
            return []
        commands: list[LookupCommand] = []
        try:
            contacts, records = self._parse(body)
        except MalformedMessage as exc:
            commands.append(PeerMisbehaved(peer=peer, reason=f"bad answer: {exc.msg}"))
            self._fail(cand)
        else:
            self._answered(cand, contacts, records, now, commands)
        self._advance((cand.path,), now, commands)
        return commands

    def on_failure(self, peer: PeerId, now: float) -> list[LookupCommand]:
        """Report that the request to ``peer`` failed (error, broken connection, timeout).

        Returns:
            Further requests.
        """
        cand = self._cands.get(peer.raw)
        if self.done or cand is None or cand.state not in (_WAITING, _TIMED_OUT):
            return []
        self._fail(cand)
        commands: list[LookupCommand] = []
        self._advance((cand.path,), now, commands)
        return commands

    def add_seeds(self, contacts: Iterable[Contact], now: float) -> list[LookupCommand]:
        """Add more starting contacts to a started lookup, and reopen it if it was done.

        A lookup whose candidates all failed ends with few or no answers although the
        routing table may hold live contacts beyond the k closest it started from; a put
        continues from those (SPEC.md §12.8.3).  Contacts the lookup already knows, and our
        own id, are skipped; the rest are dealt round-robin onto the paths at depth 0.

        Returns:
            The requests to the new candidates (nothing when none was new).
        """
        fresh = sorted(self._new_contacts(contacts), key=lambda c: c.node_id ^ self._target_id)
        commands: list[LookupCommand] = []
        if not fresh:
            return commands
        for i, contact in enumerate(fresh):
            self._add(contact, 0, i % self._paths)
        self.done = False
        self._advance(range(self._paths), now, commands)
        return commands

    def handle_timer(self, now: float) -> list[LookupCommand]:
        """Time out requests older than ``request_timeout``; harmless early or late.

        Returns:
            Requests that replace the timed-out ones.
        """
        if self.done:
            return []
        expired = [c for c in self._waiting.values() if c.deadline <= now]
        commands: list[LookupCommand] = []
        for cand in expired:
            self._release(cand)
            cand.state = _TIMED_OUT
            self._failures += 1
            self._drop(cand)
        self._advance(sorted({cand.path for cand in expired}), now, commands)
        return commands

    # Outputs ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` next has work, or None."""
        if self.done or not self._waiting:
            return None
        return min(cand.deadline for cand in self._waiting.values())

    def result(self) -> LookupResult:
        """What the lookup found so far (complete once ``done``)."""
        answered = sorted((c for c in self._cands.values() if c.state == _ANSWERED), key=_dist)
        closest = tuple(
            FoundNode(contact=c.contact, hops=c.hops, path=c.path) for c in answered[: self._k]
        )
        if not self._value:
            return LookupResult(
                target=self.target, closest=closest, rpcs=self._rpcs, failures=self._failures
            )
        best = select_best(r for rs in self._returned.values() for r in rs)
        return LookupResult(
            target=self.target,
            closest=closest,
            rpcs=self._rpcs,
            failures=self._failures,
            records=tuple(best.values()),
            outdated=self._outdated(closest, best),
        )

    # Internals ----------------------------------------------------------------------------

    def _parse(self, body: object) -> tuple[list[Contact], Sequence[object]]:
        if self._value:
            return parse_get_response(body, self._known)
        return parse_nodes_response(body, self._known), ()

    def _release(self, cand: _Candidate) -> None:
        del self._waiting[cand.contact.peer_id.raw]
        self._in_flight[cand.path] -= 1

    def _fail(self, cand: _Candidate) -> None:
        if cand.state == _WAITING:
            self._release(cand)
            self._failures += 1
            self._drop(cand)
        cand.state = _FAILED

    def _answered(
        self,
        cand: _Candidate,
        contacts: list[Contact],
        records: Sequence[object],
        now: float,
        commands: list[LookupCommand],
    ) -> None:
        if cand.state == _WAITING:
            self._release(cand)
        else:  # a late answer: the candidate comes back into its path
            bisect.insort(self._order[cand.path], cand, key=_dist)
        cand.state = _ANSWERED
        for contact in self._new_contacts(contacts):
            self._add(contact, cand.hops + 1, cand.path)
        if records:
            self._collect(cand.contact.peer_id, records, now, commands)

    def _collect(
        self, peer: PeerId, records: Sequence[object], now: float, commands: list[LookupCommand]
    ) -> None:
        valid: list[Record] = []
        for obj in records:
            try:
                record = parse_record(obj)
                if record.key != self.target:
                    raise RecordRejected(ErrorCode.RECORD_INVALID, "record under another key")
                validate_record(record, now + self._clock_offset)
            except RecordRejected as exc:
                commands.append(PeerMisbehaved(peer=peer, reason=f"bad record: {exc.reason}"))
            else:
                valid.append(record)
        if valid:
            self._returned[peer.raw] = valid

    def _advance(self, paths: Iterable[int], now: float, commands: list[LookupCommand]) -> None:
        # Decide termination first: a lookup that is done sends nothing more.
        self._check_done()
        if not self.done:
            for path in paths:
                self._step(path, now, commands)

    def _step(self, path: int, now: float, commands: list[LookupCommand]) -> None:
        if self._in_flight[path] >= self._alpha:
            return
        for cand in self._order[path][: self._k]:
            if cand.state == _NEW:
                cand.state = _WAITING
                cand.deadline = now + self._request_timeout
                self._waiting[cand.contact.peer_id.raw] = cand
                self._rpcs += 1
                commands.append(
                    SendRequest(peer=cand.contact, message=self._message, timeout=self._rpc_timeout)
                )
                self._in_flight[path] += 1
                if self._in_flight[path] >= self._alpha:
                    return

    def _path_done(self, path: int) -> bool:
        return all(cand.state == _ANSWERED for cand in self._order[path][: self._k])

    def _check_done(self) -> None:
        quorum = self._quorum
        if quorum is not None and len(self._returned) >= quorum:
            self.done = True
        else:
            self.done = all(self._path_done(path) for path in range(self._paths))

    def _outdated(
        self, closest: tuple[FoundNode, ...], best: dict[tuple[bytes, bytes], Record]
    ) -> tuple[tuple[Contact, Record], ...]:
        out = []
        for node in closest:
            held = {r.subkey: r for r in self._returned.get(node.contact.peer_id.raw, ())}
            for (_, subkey), record in best.items():
                copy = held.get(subkey)
                if copy is None or record_rank(copy) < record_rank(record):
                    out.append((node.contact, record))
        return tuple(out)

    def __repr__(self) -> str:
        return (
            f"Lookup(target={self.target.hex()[:16]}…, done={self.done}, "
            f"rpcs={self._rpcs}, known={len(self._cands)})"
        )
