"""Admission: which incoming connections a listener takes, keeps and sheds (SPEC.md §9.3).

Theory of operation
-------------------
A listener holds two tables of incoming connections, each keyed by a *ticket* (an integer
this module hands out):

    pending       accepted TCP connections still in the Noise handshake (§6); they cost a
                  task, buffers and a file descriptor, and prove nothing about their sender
    established   connections whose handshake completed (authenticated peers)

Each table has its own budget (``Limits.max_pending``, ``Limits.max_established``), so a
flood of handshakes can never take a slot of an authenticated peer: pending connections
only ever compete with pending ones.  A pending connection also has a short deadline
(``Limits.handshake_timeout``, §6.7), so a silent socket holds its slot for seconds, not
until the keepalive gives up on it.

Every connection belongs to a *source*: its remote address (an IPv4-mapped IPv6 address
counts as the IPv4 one) and that address's network prefix, /24 for IPv4 and /64 for IPv6,
since one host or one customer usually owns a whole such prefix.  Per-source shares
(``*_per_address``, ``*_per_prefix``) bite only when a table is full.  Then the biggest
source over its share pays: its oldest pending connection, or its least recently active
established one, is shed so that the newcomer fits; and when the newcomer itself belongs
to that source, the newcomer is refused instead.  So one address, or one /24, flooding a
listener only ever displaces its own connections, while a local swarm that runs many
peers on 127.0.0.1 is never limited by address as long as the tables have room.

When the established table is full and no source is over its share, the connection that
has had no open stream for the longest time, at least ``Limits.shed_idle_after`` seconds,
makes room; a connection with streams in flight is never shed for a newcomer that is
within its share.  With no such connection the newcomer is refused, and the shell tells it
so with GOAWAY of code OVERLOADED (§9.2, §11).

Inputs are ``admit`` (a TCP connection was accepted), ``promote`` (its handshake
completed), and ``release`` (it closed, for any reason).  Outputs are the returned
verdicts, ``Admitted``/``Promoted`` naming the tickets to shed, or ``Refused``.  The shell
closes what it is told to close and must call ``release`` for every ticket it holds,
shed or not; releasing twice is harmless.

Invariants: ``len(pending) <= max_pending`` and ``len(established) <= max_established``
after every input; a ticket is in at most one table.  This module never does I/O, reads a
clock or learns anything about connections but what its inputs say.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ._errors import LocalProtocolError

__all__ = [
    "Activity",
    "Admission",
    "Admitted",
    "Limits",
    "Promoted",
    "RefusalReason",
    "Refused",
    "source_of",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """A listener's budgets (SPEC.md §9.3 gives these reference values).

    Args:
        handshake_timeout: seconds from accepting a TCP connection to the end of its
            handshake (§6.7): three messages, 1.5 round trips, take well under a second
            even across continents; 5 s leaves room for a loaded peer.
        max_pending: handshakes in progress at once.  A handshake costs ~1 ms of CPU
            (three X25519 and two Ed25519 operations), so 64 is far above the rate at
            which honest peers arrive, yet bounds the file descriptors a flood can hold.
        pending_per_address, pending_per_prefix: the share of ``max_pending`` one address,
            or one /24 (IPv4) or /64 (IPv6), keeps when the table is full (1/8 and 1/4).
        max_established: authenticated connections at once; the limit this listener had
            before it had admission control.
        established_per_address, established_per_prefix: the share of ``max_established``
            one address or prefix keeps when the table is full (1/8 and 1/4).
        shed_idle_after: how long an established connection must have had no open stream
            before a newcomer may take its slot: time for a fresh connection to open its
            first stream, far above any round trip.

    Raises:
        ValueError: a limit is not positive, or a per-address share exceeds the per-prefix
            share or the per-prefix share exceeds its table.
    """

    handshake_timeout: float = 5.0
    max_pending: int = 64
    pending_per_address: int = 8
    pending_per_prefix: int = 16
    max_established: int = 512
    established_per_address: int = 64
    established_per_prefix: int = 128
    shed_idle_after: float = 10.0

    def __post_init__(self) -> None:
        if self.handshake_timeout <= 0 or self.shed_idle_after < 0:
            raise ValueError("need handshake_timeout > 0 and shed_idle_after >= 0")
        for address, prefix, table in (
            (self.pending_per_address, self.pending_per_prefix, self.max_pending),
            (self.established_per_address, self.established_per_prefix, self.max_established),
        ):
            if not 0 < address <= prefix <= table:
                raise ValueError("need 0 < per_address <= per_prefix <= the table's size")


@dataclass(frozen=True, slots=True)
class Activity:
    """What the shell knows of an established connection when a newcomer needs room.

    Attributes:
        streams: streams open on it now.
        last_active_at: when a stream last opened, carried a message or ended on it (or
            when the handshake completed, if nothing happened since).
    """

    streams: int
    last_active_at: float


class RefusalReason(enum.Enum):
    """Why a connection was refused."""

    #: the pending table is full and no source is over its share
    PENDING_FULL = "too many handshakes in progress"
    #: the newcomer's own address or prefix holds more than its share of a full table
    OVER_SHARE = "too many connections from this address or network"
    #: the established table is full and every connection is busy or freshly opened
    ESTABLISHED_FULL = "too many connections"


@dataclass(frozen=True, slots=True, kw_only=True)
class Admitted:
    """The TCP connection may run its handshake until ``handshake_deadline_at``.

    Attributes:
        ticket: names the connection in later inputs.
        handshake_deadline_at: when the shell aborts the handshake (§6.7).
        shed: a pending connection to abort now, to make room; ``None`` if there was room.
    """

    ticket: int
    handshake_deadline_at: float
    shed: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Promoted:
    """The authenticated connection stays.

    Attributes:
        shed: an established connection to close now (GOAWAY OVERLOADED), to make room.
    """

    shed: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """Close the connection now; with keys, say GOAWAY OVERLOADED first (§9.3).

    The refused connection's ticket, if it had one, is already released.
    """

    reason: RefusalReason


@dataclass(frozen=True, slots=True)
class _Source:
    address: str
    prefix: str


def source_of(address: str | None) -> tuple[str, str]:
    """The (address, prefix) a remote address is counted under (SPEC.md §9.3).

    IPv4 addresses count under their /24, IPv6 under their /64; an IPv4-mapped IPv6
    address is the IPv4 address.  Anything else (no address, a name, a Unix socket path)
    is its own source.

    >>> source_of("::ffff:10.1.2.3")
    ('10.1.2.3', '10.1.2.0/24')
    """
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        text = address or ""
        return text, text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = 24 if isinstance(ip, ipaddress.IPv4Address) else 64
    network = ipaddress.ip_network((ip, bits), strict=False)
    return str(ip), str(network)


@dataclass(slots=True)
class _Entry:
    source: _Source
    since: float  # accepted (pending) or authenticated (established)


class _Table:
    """One budget: its entries and how many each address and prefix holds."""

    def __init__(self, size: int, per_address: int, per_prefix: int) -> None:
        self.size, self.per_address, self.per_prefix = size, per_address, per_prefix
        self.entries: dict[int, _Entry] = {}
        self._addresses: Counter[str] = Counter()
        self._prefixes: Counter[str] = Counter()

    @property
    def full(self) -> bool:
        return len(self.entries) >= self.size

    def add(self, ticket: int, entry: _Entry) -> None:
        self.entries[ticket] = entry
        self._addresses[entry.source.address] += 1
        self._prefixes[entry.source.prefix] += 1

    def pop(self, ticket: int) -> _Entry | None:
        entry = self.entries.pop(ticket, None)
        if entry is not None:
            for counter, key in (
                (self._addresses, entry.source.address),
                (self._prefixes, entry.source.prefix),
            ):
                counter[key] -= 1
                if not counter[key]:
                    del counter[key]
        return entry

    def heaviest_over_share(self, newcomer: _Source) -> Callable[[_Source], bool] | None:
        """The source holding most over its share, counting ``newcomer`` in, as a test of
        membership; ``None`` when every source is within its share."""
        best: tuple[int, int, str] | None = None
        for rank, counter, share, theirs in (
            (1, self._prefixes, self.per_prefix, newcomer.prefix),
            (0, self._addresses, self.per_address, newcomer.address),
        ):
            for key, count in counter.items():
                held = count + (key == theirs)
                if held > share and (best is None or (held, rank) > best[:2]):
                    best = (held, rank, key)
        if best is None:
            return None
        _, rank, key = best
        if rank:
            return lambda source: source.prefix == key
        return lambda source: source.address == key

    def members(self, group: Callable[[_Source], bool]) -> Iterable[int]:
        return (t for t, e in self.entries.items() if group(e.source))


class Admission:
    """A listener's admission policy (SPEC.md §9.3); see the module docstring.

    Args:
        limits: the budgets; the reference values by default.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits = limits or Limits()
        self._pending = _Table(
            limits.max_pending, limits.pending_per_address, limits.pending_per_prefix
        )
        self._established = _Table(
            limits.max_established, limits.established_per_address, limits.established_per_prefix
        )
        self._next_ticket = 1
        #: Refusals so far, by reason, and connections shed so far (for status and tests).
        self.refused: Counter[RefusalReason] = Counter()
        self.shed = 0

    @property
    def pending(self) -> int:
        """Handshakes in progress."""
        return len(self._pending.entries)

    @property
    def established(self) -> int:
        """Authenticated connections."""
        return len(self._established.entries)

    def admit(self, address: str | None, now: float) -> Admitted | Refused:
        """A TCP connection from ``address`` was accepted: may it run a handshake?

        Args:
            address: the remote IP address as text (``None`` when unknown).
            now: the current time.

        Returns:
            ``Admitted`` (run the handshake; abort ``shed`` if set) or ``Refused`` (close
            the TCP connection at once; there are no keys to say why).
        """
        source = _Source(*source_of(address))
        table, shed = self._pending, None
        if table.full:
            group = table.heaviest_over_share(source)
            if group is None:
                return self._refuse(RefusalReason.PENDING_FULL)
            if group(source):
                return self._refuse(RefusalReason.OVER_SHARE)
            shed = min(table.members(group), key=lambda t: (table.entries[t].since, t))
            table.pop(shed)
            self.shed += 1
        ticket = self._next_ticket
        self._next_ticket += 1
        table.add(ticket, _Entry(source, now))
        deadline = now + self.limits.handshake_timeout
        return Admitted(ticket=ticket, handshake_deadline_at=deadline, shed=shed)

    def promote(
        self, ticket: int, now: float, activity_of: Callable[[int], Activity]
    ) -> Promoted | Refused:
        """The handshake of ``ticket`` completed: may the authenticated peer stay?

        Args:
            ticket: from ``admit``; it must still be pending (not shed, not released).
            now: the current time.
            activity_of: the activity of an established ticket, asked only when the
                established table is full.

        Returns:
            ``Promoted`` (close ``shed`` with GOAWAY OVERLOADED if set) or ``Refused``
            (close this connection with GOAWAY OVERLOADED).

        Raises:
            LocalProtocolError: ``ticket`` is not pending.
        """
        entry = self._pending.pop(ticket)
        if entry is None:
            raise LocalProtocolError(f"ticket {ticket} is not in a handshake")
        table, shed = self._established, None
        if table.full:
            group = table.heaviest_over_share(entry.source)
            if group is not None and group(entry.source):
                return self._refuse(RefusalReason.OVER_SHARE)
            shed = self._victim(table, group, now, activity_of)
            if shed is None:
                return self._refuse(RefusalReason.ESTABLISHED_FULL)
            table.pop(shed)
            self.shed += 1
        entry.since = now
        table.add(ticket, entry)
        return Promoted(shed=shed)

    def release(self, ticket: int) -> None:
        """``ticket``'s connection closed (or was shed or refused); harmless if repeated."""
        self._pending.pop(ticket)
        self._established.pop(ticket)

    def _victim(
        self,
        table: _Table,
        group: Callable[[_Source], bool] | None,
        now: float,
        activity_of: Callable[[int], Activity],
    ) -> int | None:
        """Whom to shed from a full established table for a newcomer within its share."""
        if group is not None:
            # An over-share source loses its least useful connection, busy or not.
            def rank(t: int) -> tuple[bool, float, int]:
                seen = activity_of(t)
                return (seen.streams > 0, seen.last_active_at, t)

            return min(table.members(group), key=rank)
        idle = [
            (seen.last_active_at, t)
            for t in table.entries
            if (seen := activity_of(t)).streams == 0
            and now - seen.last_active_at >= self.limits.shed_idle_after
        ]
        return min(idle)[1] if idle else None

    def _refuse(self, reason: RefusalReason) -> Refused:
        self.refused[reason] += 1
        return Refused(reason=reason)
