"""The record store of a DHT server (SPEC.md §12.6).

Theory of operation
-------------------
The store maps a slot ``(key, subkey)`` to the one record it holds.  ``put`` validates a
record (``validate_record``: size, slot ownership, lifetime, signature) before it looks at
what is stored, then applies the selection rule of SPEC.md §12.5.4 (BEP 44's sequence
rule, completed by its tie-breaks): a record replaces the stored one exactly when it is
better: a higher ``seq``, or the same ``seq`` and a later expiry, or the same ``seq`` and
expiry and a bytewise greater canonical value.  A copy of the stored record (same ``seq``
and value) that is not better is answered and changes nothing.  Anything else, a lower
``seq`` or the same ``seq`` with a value that is not better, is refused with
``RECORD_SEQ_TOO_LOW``, so a storer never downgrades a slot while its record lives and a
reader's entry correction always converges on the record every reader selects.

Quotas bound memory against any one publisher and any one key: at most
``max_subkeys_per_key`` slots per key (a full key refuses new publishers, it never evicts
one, so a flood of fresh identities cannot push out honest announcements), at most
``max_records_per_publisher`` records per publisher, and ``max_records`` in all.  Each
refusal is ``QUOTA_EXCEEDED``.

Expiry: a heap of ``(expires, key, subkey)`` drives ``sweep``; entries whose slot has since
been replaced are skipped (lazy deletion) and the heap is rebuilt when stale entries
outnumber live ones, so its size stays proportional to the store.  ``put`` and ``get`` sweep
first, so an expired record is never served and never blocks its slot.

Invariants: every stored record passed ``validate_record``; ``len(self)`` equals the sum of
the per-publisher counts; the store never raises anything but ``RecordRejected`` on input.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from .._errors import ErrorCode
from ._errors import RecordRejected
from ._records import Record, record_rank, validate_record

__all__ = ["RecordStore", "StoreConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """Limits of a record store (SPEC.md §12.7).

    Attributes:
        max_subkeys_per_key: slots per key; also the most records a ``dht.get`` answer
            carries.  128 announcements of at most ~4.3 KiB fit well inside one frame.
        max_records_per_publisher: records one publisher may hold on this server.
        max_records: records in all.
    """

    max_subkeys_per_key: int = 128
    max_records_per_publisher: int = 1024
    max_records: int = 65_536


class RecordStore:
    """Validated records by slot, with sequence rules, quotas and expiry."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self._slots: dict[bytes, dict[bytes, Record]] = {}
        self._per_publisher: dict[bytes, int] = {}
        self._expiry: list[tuple[int, bytes, bytes]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def records(self) -> Iterator[Record]:
        """Every stored record (some may have expired since the last sweep)."""
        for slots in self._slots.values():
            yield from slots.values()

    def put(self, record: Record, unix_now: float) -> bool:
        """Validate and store a record.

        Args:
            record: the record to store.
            unix_now: the current wall-clock time in unix seconds.

        Returns:
            True when the slot changed, False when an equal or better copy was already
            stored (the same value and ``seq`` with an expiry no later than the stored one).

        Raises:
            RecordRejected: the record is invalid (``RECORD_*`` codes), ``seq`` is too low or
                equal with another value that is not better under SPEC.md §12.5.4
                (``RECORD_SEQ_TOO_LOW``), or a quota is full (``QUOTA_EXCEEDED``).
        """
        validate_record(record, unix_now)
        self.sweep(unix_now)
        slots = self._slots.get(record.key)
        current = None if slots is None else slots.get(record.subkey)
        if current is not None:
            if not _replaces(record, current):
                return False
        else:
            self._check_quotas(record, slots)
            self._count += 1
            publisher = record.publisher.raw
            self._per_publisher[publisher] = self._per_publisher.get(publisher, 0) + 1
        self._slots.setdefault(record.key, {})[record.subkey] = record
        heapq.heappush(self._expiry, (record.expires, record.key, record.subkey))
        if len(self._expiry) > 2 * self._count + 16:
            self._rebuild_heap()
        return True

    def _check_quotas(self, record: Record, slots: dict[bytes, Record] | None) -> None:
        config = self.config
        if slots is not None and len(slots) >= config.max_subkeys_per_key:
            raise RecordRejected(ErrorCode.QUOTA_EXCEEDED, "too many subkeys under this key")
        if self._per_publisher.get(record.publisher.raw, 0) >= config.max_records_per_publisher:
            raise RecordRejected(ErrorCode.QUOTA_EXCEEDED, "too many records of this publisher")
        if self._count >= config.max_records:
            raise RecordRejected(ErrorCode.QUOTA_EXCEEDED, "the store is full")

    def get(self, key: bytes, unix_now: float) -> list[Record]:
        """The live records under ``key``, at most ``max_subkeys_per_key`` of them.

        Args:
            key: the 32-byte key.
            unix_now: the current wall-clock time in unix seconds.

        Returns:
            The records, in no particular order.
        """
        self.sweep(unix_now)
        return list(self._slots.get(key, {}).values())

    def sweep(self, unix_now: float) -> int:
        """Drop every record whose ``expires`` is at or before ``unix_now``.

        Returns:
            How many records were dropped.
        """
        dropped = 0
        heap = self._expiry
        while heap and heap[0][0] <= unix_now:
            expires, key, subkey = heapq.heappop(heap)
            slots = self._slots.get(key)
            record = None if slots is None else slots.get(subkey)
            if record is None or record.expires != expires:
                continue  # replaced or already dropped: a stale heap entry
            self._remove(record)
            dropped += 1
        return dropped

    def next_expiry(self) -> int | None:
        """The earliest ``expires`` that ``sweep`` will act on, or None when empty."""
        return self._expiry[0][0] if self._expiry else None

    def _remove(self, record: Record) -> None:
        slots = self._slots[record.key]
        del slots[record.subkey]
        if not slots:
            del self._slots[record.key]
        self._count -= 1
        publisher = record.publisher.raw
        left = self._per_publisher[publisher] - 1
        if left:
            self._per_publisher[publisher] = left
        else:
            del self._per_publisher[publisher]

    def _rebuild_heap(self) -> None:
        self._expiry = [(r.expires, r.key, r.subkey) for r in self.records()]
        heapq.heapify(self._expiry)


def _replaces(new: Record, old: Record) -> bool:
    """SPEC.md §12.6 items 2-3: a better record under the selection rule (§12.5.4)
    replaces; a copy of the stored one (same seq and value) that is not better changes
    nothing; anything else would be a downgrade and raises.

    Storage and selection agree, so entry correction (§12.8.3), which puts the best copy a
    reader saw, always converges: even when a publisher signed two values under one seq.
    """
    if record_rank(new) > record_rank(old):
        return True
    if new.seq == old.seq and new.value_bytes == old.value_bytes:
        return False
    if new.seq < old.seq:
        raise RecordRejected(ErrorCode.RECORD_SEQ_TOO_LOW, f"seq {new.seq} < stored {old.seq}")
    raise RecordRejected(ErrorCode.RECORD_SEQ_TOO_LOW, "same seq, another value, not better")
