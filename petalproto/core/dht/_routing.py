"""The Kademlia routing table (SPEC.md §12.4).

Theory of operation
-------------------
The table keeps up to ``k`` contacts per bucket, one bucket per common prefix length
(CPL) 0..255 with our own node id (libp2p kad-dht: "k peers for every CPL").  Inputs:

* ``observe(contact, now)``: the contact proved itself alive, by answering us or by sending
  us a request that named its listening address.  Known contacts move to the tail of their
  bucket (most recently seen).  A newcomer joins a bucket with room.  A newcomer for a full
  bucket goes into the bucket's replacement cache, and the least recently seen contact is
  pinged (the command is returned): **old-node preference** (Kademlia §2.2).  Only when
  that ping fails is the old contact evicted and the newest replacement promoted, so a
  flood of fresh identities cannot flush long-lived nodes out of the table.
* ``record_failure(peer_id, now)``: a request to the contact failed.  The pinged contact of
  a full bucket is evicted at once; any other contact after ``max_failures`` failures in a
  row.  An answer resets the count.
* ``handle_timer(now)``: every bucket up to the deepest non-empty one that no lookup has
  touched for ``refresh_interval`` asks for a refresh lookup of a random id in its range.

**Diversity** (go-libp2p-kbucket's peer diversity filter): at most
``bucket_prefix_limit`` contacts per IPv4 /24 (IPv6 /64) in a bucket and at most
``table_prefix_limit`` per IPv4 /16 (IPv6 /32) in the whole table, so that one operator's
address block cannot fill a neighbourhood.  IPv4-mapped IPv6 addresses count as IPv4.
Loopback addresses are exempt by default so that a local swarm on 127.0.0.1 works.

Invariants: no bucket holds more than ``k`` contacts, our own id is never stored, each
contact sits in the bucket of its CPL, the group counters match the stored contacts, and a
bucket pings at most one contact at a time.  The table never raises on peer input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from .._identity import PeerId
from ._events import RefreshDue, SendRequest
from ._ids import ID_BITS, Contact, common_prefix_length, node_id_of
from ._messages import K, Ping

__all__ = ["RoutingConfig", "RoutingTable"]

_Group = tuple[int, int]


def _is_private(version: int, value: int) -> bool:
    return (IPv4Address(value) if version == 4 else IPv6Address(value)).is_private


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig:
    """Parameters of a routing table (SPEC.md §12.4).

    Attributes:
        k: bucket size (Kademlia, libp2p: 20).
        bucket_prefix_limit: contacts per IPv4 /24 or IPv6 /64 in one bucket.
        table_prefix_limit: contacts per IPv4 /16 or IPv6 /32 in the table.
        exempt_loopback: loopback addresses skip the diversity limits.
        exempt_private: private (RFC 1918, ULA, link-local) addresses skip them too.
        max_failures: failed requests in a row after which a contact is dropped.
        replacement_cache: newcomers kept per full bucket.
        refresh_interval: seconds after which an untouched bucket is refreshed (libp2p: 10 min).
    """

    k: int = K
    bucket_prefix_limit: int = 2
    table_prefix_limit: int = 10
    exempt_loopback: bool = True
    exempt_private: bool = False
    max_failures: int = 3
    replacement_cache: int = K
    refresh_interval: float = 600.0


class _Entry:
    __slots__ = ("contact", "failures", "groups", "last_seen")

    def __init__(self, contact: Contact, groups: tuple[_Group, _Group] | None, now: float) -> None:
        self.contact = contact
        self.groups = groups
        self.last_seen = now
        self.failures = 0


class _Bucket:
    __slots__ = ("entries", "groups", "pinging", "refreshed_at", "replacements")

    def __init__(self, now: float) -> None:
        self.entries: dict[bytes, _Entry] = {}  # least recently seen first
        self.replacements: dict[bytes, Contact] = {}  # most recent last
        self.groups: dict[_Group, int] = {}
        self.pinging: bytes | None = None
        self.refreshed_at = now


class RoutingTable:
    """k-buckets by common prefix length, with old-node preference and diversity limits.

    Args:
        our_id: our own peer id.
        random_bytes: source of randomness for refresh targets.
        now: the current time; bucket refresh deadlines start from it.
        config: the parameters; defaults to ``RoutingConfig()``.
    """

    def __init__(
        self,
        our_id: PeerId,
        *,
        random_bytes: Callable[[int], bytes],
        now: float = 0.0,
        config: RoutingConfig | None = None,
    ) -> None:
        self.our_id = our_id
        self.config = config or RoutingConfig()
        self._our = node_id_of(our_id)
        self._random_bytes = random_bytes
        self._buckets: list[_Bucket | None] = [None] * ID_BITS  # created when first used
        self._created_at = now
        self._groups: dict[_Group, int] = {}
        self._size = 0
        self._deepest = -1  # index of the deepest bucket that ever held a contact

    # Queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __contains__(self, peer_id: object) -> bool:
        return isinstance(peer_id, PeerId) and self.get(peer_id) is not None

    def get(self, peer_id: PeerId) -> Contact | None:
        """The stored contact of ``peer_id``, or None."""
        entry = self._entry(peer_id)
        return None if entry is None else entry.contact

    def contacts(self) -> Iterator[Contact]:
        """Every stored contact, bucket by bucket."""
        for bucket in self._buckets:
            if bucket is not None:
                for entry in bucket.entries.values():
                    yield entry.contact

    def bucket_of(self, node_id: int) -> int:
        """The bucket index (CPL with our id) of a node id; 256 for our own id."""
        return common_prefix_length(self._our, node_id)

    def closest(self, target: int, n: int, *, exclude: PeerId | None = None) -> list[Contact]:
        """The ``n`` stored contacts closest to ``target`` by XOR, closest first.

        Buckets are visited in distance order, so only a few are sorted: the bucket of the
        target's CPL holds the closest contacts, then every deeper bucket (all at the same
        top distance bit), then the shallower buckets one by one.

        Args:
            target: a 256-bit id.
            n: how many contacts to return at most.
            exclude: a peer to leave out (the requester).
        """
        skip = None if exclude is None else exclude.raw
        cpl = common_prefix_length(self._our, target)
        groups: list[range] = []
        if cpl < ID_BITS:
            groups += [range(cpl, cpl + 1), range(cpl + 1, self._deepest + 1)]
        groups += [range(i, i + 1) for i in range(min(cpl, ID_BITS) - 1, -1, -1)]
        found: list[Contact] = []
        for indices in groups:
            for i in indices:
                bucket = self._buckets[i]
                if bucket is not None:
                    found += [e.contact for raw, e in bucket.entries.items() if raw != skip]
            if len(found) >= n:
                break
        found.sort(key=lambda c: c.node_id ^ target)
        return found[:n]

    # Inputs -------------------------------------------------------------------------------

    def observe(self, contact: Contact, now: float) -> list[SendRequest]:
        """Record that ``contact`` is alive: it answered us or sent us a request.

        Args:
            contact: the peer and its listening address.
            now: the current time.

        Returns:
            A ``SendRequest`` of ``dht.ping`` to the least recently seen contact when a
            newcomer finds its bucket full; otherwise nothing.
        """
        index = common_prefix_length(self._our, contact.node_id)
        if index == ID_BITS:
            return []  # ourselves
        bucket = self._bucket(index)
        raw = contact.peer_id.raw
        entry = bucket.entries.get(raw)
        if entry is not None:
            self._refresh_entry(bucket, entry, contact, now)
            return []
        groups = self._groups_of(contact)
        if not self._diverse(bucket, groups):
            return []
        if len(bucket.entries) < self.config.k:
            self._insert(bucket, index, _Entry(contact, groups, now))
            bucket.replacements.pop(raw, None)
            return []
        bucket.replacements.pop(raw, None)
        bucket.replacements[raw] = contact
        if len(bucket.replacements) > self.config.replacement_cache:
            del bucket.replacements[next(iter(bucket.replacements))]
        if bucket.pinging is not None:
            return []
        oldest = next(iter(bucket.entries.values()))
        bucket.pinging = oldest.contact.peer_id.raw
        return [SendRequest(peer=oldest.contact, message=Ping())]

    def record_failure(self, peer_id: PeerId, now: float) -> bool:
        """Record that a request to ``peer_id`` failed or timed out.

        Args:
            peer_id: the peer that did not answer.
            now: the current time.

        Returns:
            True when the contact was evicted (and a replacement promoted if one fits).
        """
        index = common_prefix_length(self._our, node_id_of(peer_id))
        bucket = None if index == ID_BITS else self._buckets[index]
        if bucket is None:
            return False
        bucket.replacements.pop(peer_id.raw, None)
        entry = bucket.entries.get(peer_id.raw)
        if entry is None:
            return False
        entry.failures += 1
        if bucket.pinging != peer_id.raw and entry.failures < self.config.max_failures:
            return False
        self._evict(bucket, entry, now)
        return True

    def remove(self, peer_id: PeerId) -> bool:
        """Forget ``peer_id`` (for example after it misbehaved).

        Returns:
            True when it was stored.
        """
        entry = self._entry(peer_id)
        if entry is None:
            return False
        bucket = self._bucket(common_prefix_length(self._our, entry.contact.node_id))
        self._evict(bucket, entry, entry.last_seen)
        return True

    def mark_refreshed(self, target: int, now: float) -> None:
        """A lookup for ``target`` just finished: its bucket needs no refresh for a while."""
        index = common_prefix_length(self._our, target)
        if index < ID_BITS:
            self._bucket(index).refreshed_at = now

    def handle_timer(self, now: float) -> list[RefreshDue]:
        """Ask for refresh lookups of the buckets that are due; harmless early or late.

        Returns:
            One ``RefreshDue`` per due bucket, with a random target in its range.
        """
        due = []
        interval = self.config.refresh_interval
        for index in range(self._deepest + 1):
            bucket = self._bucket(index)
            if bucket.refreshed_at + interval <= now:
                bucket.refreshed_at = now
                due.append(RefreshDue(bucket=index, target=self.random_id_in(index)))
        return due

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` next has work, or None while the table is empty."""
        if self._deepest < 0:
            return None
        interval = self.config.refresh_interval
        oldest = min(
            self._created_at if b is None else b.refreshed_at
            for b in self._buckets[: self._deepest + 1]
        )
        return oldest + interval

    # Internals ----------------------------------------------------------------------------

    def _entry(self, peer_id: PeerId) -> _Entry | None:
        index = common_prefix_length(self._our, node_id_of(peer_id))
        bucket = None if index == ID_BITS else self._buckets[index]
        return None if bucket is None else bucket.entries.get(peer_id.raw)

    def _bucket(self, index: int) -> _Bucket:
        bucket = self._buckets[index]
        if bucket is None:
            bucket = self._buckets[index] = _Bucket(self._created_at)
        return bucket

    def _refresh_entry(self, bucket: _Bucket, entry: _Entry, contact: Contact, now: float) -> None:
        raw = contact.peer_id.raw
        entry.last_seen = now
        entry.failures = 0
        del bucket.entries[raw]
        bucket.entries[raw] = entry  # now the most recently seen
        if bucket.pinging == raw:
            bucket.pinging = None  # the old node answered: it stays, the newcomer waits
        if contact != entry.contact:  # the peer moved: follow it if the new block has room
            self._count(bucket, entry.groups, -1)
            groups = self._groups_of(contact)
            if self._diverse(bucket, groups):
                entry.contact, entry.groups = contact, groups
            self._count(bucket, entry.groups, +1)

    def _insert(self, bucket: _Bucket, index: int, entry: _Entry) -> None:
        bucket.entries[entry.contact.peer_id.raw] = entry
        self._count(bucket, entry.groups, +1)
        self._size += 1
        self._deepest = max(self._deepest, index)

    def _evict(self, bucket: _Bucket, entry: _Entry, now: float) -> None:
        raw = entry.contact.peer_id.raw
        del bucket.entries[raw]
        self._count(bucket, entry.groups, -1)
        self._size -= 1
        if bucket.pinging == raw:
            bucket.pinging = None
        for cand_raw in reversed(list(bucket.replacements)):  # newest first
            contact = bucket.replacements[cand_raw]
            groups = self._groups_of(contact)
            if self._diverse(bucket, groups):
                del bucket.replacements[cand_raw]
                index = common_prefix_length(self._our, contact.node_id)
                self._insert(bucket, index, _Entry(contact, groups, now))
                return

    def _count(self, bucket: _Bucket, groups: tuple[_Group, _Group] | None, delta: int) -> None:
        if groups is None:
            return
        small, large = groups
        bucket.groups[small] = bucket.groups.get(small, 0) + delta
        self._groups[large] = self._groups.get(large, 0) + delta

    def _diverse(self, bucket: _Bucket, groups: tuple[_Group, _Group] | None) -> bool:
        if groups is None:
            return True
        small, large = groups
        config = self.config
        return (
            bucket.groups.get(small, 0) < config.bucket_prefix_limit
            and self._groups.get(large, 0) < config.table_prefix_limit
        )

    def _groups_of(self, contact: Contact) -> tuple[_Group, _Group] | None:
        version, value = contact.addr
        config = self.config
        loopback = value >> 24 == 127 if version == 4 else value == 1
        if (config.exempt_loopback and loopback) or (
            config.exempt_private and _is_private(version, value)
        ):
            return None
        if version == 4:
            return (4, value >> 8), (4, value >> 16)  # /24 per bucket, /16 per table
        return (6, value >> 64), (6, value >> 96)  # /64 per bucket, /32 per table

    def random_id_in(self, index: int) -> int:
        """A random 256-bit id whose CPL with our id is ``index`` (a refresh target).

        Raises:
            ValueError: ``index`` is not in 0..255.
        """
        if not 0 <= index < ID_BITS:
            raise ValueError("a bucket index is in 0..255")
        shift = ID_BITS - 1 - index
        prefix = ((self._our >> shift) ^ 1) << shift
        noise = int.from_bytes(self._random_bytes(ID_BITS // 8), "big") & ((1 << shift) - 1)
        return prefix | noise
