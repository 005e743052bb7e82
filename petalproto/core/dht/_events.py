"""Commands and events of the DHT state machines (STYLE.md §2).

Commands ask the shell to act: ``SendRequest`` sends one RPC and reports the outcome back
with the same ``request_id``.  Events report local happenings in the past tense:
``PeerMisbehaved`` names a peer that answered with garbage or forged records (one bad peer
never makes the core raise), and the ``*Finished`` events close operations started on a
``DhtNode``.  ``RefreshDue`` is the routing table asking its owner to look up a random id in
a stale bucket.  All are frozen, slotted, keyword-only dataclasses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._errors import ErrorCode
from .._identity import PeerId
from ._ids import Contact
from ._messages import Request
from ._records import Record

__all__ = [
    "DhtEvent",
    "FoundNode",
    "GetFinished",
    "LookupFinished",
    "LookupResult",
    "PeerMisbehaved",
    "PutFinished",
    "RefreshDue",
    "SendRequest",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRequest:
    """Send ``message`` to ``peer`` and report the outcome (SPEC.md §12.3).

    State machines below ``DhtNode`` leave ``request_id`` at 0; ``DhtNode`` numbers every
    request it emits, and the shell feeds the response back with ``on_response`` and a
    failure with ``on_failure``, using that number.  ``timeout`` is how long the shell
    waits before it reports a failure.

    Raises:
        ValueError: ``timeout`` is not positive or ``request_id`` is negative.
    """

    peer: Contact
    message: Request
    request_id: int = 0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError("timeout must be a positive number of seconds")
        if self.request_id < 0:
            raise ValueError("request_id must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerMisbehaved:
    """A peer broke the protocol in an answer: the shell may penalise or drop it."""

    peer: PeerId
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshDue:
    """A routing-table bucket has not been looked into for ``refresh_interval``.

    The owner looks up ``target``, a random id whose bucket is ``bucket``.
    """

    bucket: int
    target: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FoundNode:
    """A node that answered a lookup, with the depth at which the lookup first heard of it.

    ``hops`` is 0 for a seed from the local routing table and ``n + 1`` for a node first
    named by a node at depth ``n``; ``path`` is the disjoint path that used it.
    """

    contact: Contact
    hops: int
    path: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupResult:
    """What an iterative lookup found (SPEC.md §12.8).

    Attributes:
        target: the 32-byte id or key looked up.
        closest: up to k nodes that answered, closest to ``target`` first, over all paths.
        rpcs: requests sent.
        failures: requests that failed or passed the lookup's request timeout.
        records: value lookups only: the best valid record of every slot found.
        outdated: value lookups only: ``(peer, record)`` pairs where one of the k closest
            answered without ``record`` or with an older copy (for entry correction).
    """

    target: bytes
    closest: tuple[FoundNode, ...]
    rpcs: int
    failures: int
    records: tuple[Record, ...] = ()
    outdated: tuple[tuple[Contact, Record], ...] = ()

    def find(self, peer_id: PeerId) -> FoundNode | None:
        """The entry of ``peer_id`` in ``closest``, or None."""
        for node in self.closest:
            if node.contact.peer_id == peer_id:
                return node
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupFinished:
    """A ``find_node`` or ``bootstrap`` operation ended."""

    op_id: int
    result: LookupResult


@dataclass(frozen=True, slots=True, kw_only=True)
class GetFinished:
    """A ``get`` operation ended.  ``records`` holds the best valid record of each slot."""

    op_id: int
    key: bytes
    records: tuple[Record, ...]
    result: LookupResult


@dataclass(frozen=True, slots=True, kw_only=True)
class PutFinished:
    """A ``put`` operation ended (SPEC.md §12.8.3).

    Attributes:
        op_id: the operation.
        record: the record put.
        stored: how many nodes hold it now: ``acked``, plus ourselves when we are among the
            closest and our own store took it.
        rejected: the peers that answered with an error, each with its code (ourselves
            included when our own store refused it).
        ok: at least ``quorum`` of the targets acknowledged the put.
        targets: the nodes the put went to: the k closest that answered the lookup.
        acked: how many of ``targets`` acknowledged it (answered ``{}``).
        quorum: the acknowledgements needed for ``ok``: ``put_quorum``, or every target
            when there are fewer, and never less than one.
        unanswered: the targets that did not answer the put at all (timeout, broken
            connection): worth another try.
    """

    op_id: int
    record: Record
    stored: int
    rejected: tuple[tuple[PeerId, ErrorCode], ...]
    ok: bool
    targets: int = 0
    acked: int = 0
    quorum: int = 1
    unanswered: tuple[PeerId, ...] = ()


DhtEvent = PeerMisbehaved | LookupFinished | GetFinished | PutFinished
