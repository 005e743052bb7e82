"""Per-peer circuit breakers: how long a client avoids a peer that failed it.

Theory of operation
-------------------
Each peer's breaker is *closed* (use it) until it fails. A failure *opens* it for a backoff
that doubles with each consecutive failure, from ``base`` up to ``cap`` seconds, scaled by a
random factor in ``[1 - jitter, 1 + jitter]`` so that many clients that saw the same fault do
not all come back at the same instant. When the backoff has run out the breaker is
*half-open*: the peer may be tried again, and the next outcome decides: a success closes it
(and forgets the failures), a failure opens it again for twice as long.

Plain data and explicit clocks: the caller passes ``now`` (any monotonic seconds) and may
pass its own random source, so tests are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

__all__ = ["Breakers", "State"]

K = TypeVar("K", bound=Hashable)


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(slots=True)
class _Entry:
    failures: int
    until: float


class Breakers(Generic[K]):
    """The breakers of many peers.

    Args:
        base: seconds a peer is avoided after its first failure.
        cap: the longest backoff, in seconds.
        jitter: relative spread of each backoff, in ``[0, 1)``.
        rng: a source of floats in ``[0, 1)``, drawn once per failure for the jitter (the
            caller's: the core draws no randomness; without one, no jitter).
    """

    def __init__(
        self,
        *,
        base: float = 10.0,
        cap: float = 600.0,
        jitter: float = 0.25,
        rng: Callable[[], float] | None = None,
    ) -> None:
        if not 0 < base <= cap or not 0 <= jitter < 1:
            raise ValueError("need 0 < base <= cap and 0 <= jitter < 1")
        self.base, self.cap, self.jitter = base, cap, jitter
        self._rng = rng or (lambda: 0.5)
        self._entries: dict[K, _Entry] = {}

    def failure(self, key: K, now: float) -> float:
        """Open ``key``'s breaker; returns the time until which it stays open."""
        entry = self._entries.get(key)
        failures = 1 if entry is None else entry.failures + 1
        backoff = min(self.cap, self.base * float(2 ** (failures - 1)))
        backoff *= 1 + self.jitter * (2 * self._rng() - 1)
        self._entries[key] = _Entry(failures, now + backoff)
        return now + backoff

    def success(self, key: K) -> None:
        """Close ``key``'s breaker and forget its failures."""
        self._entries.pop(key, None)

    def state(self, key: K, now: float) -> State:
        entry = self._entries.get(key)
        if entry is None:
            return State.CLOSED
        return State.OPEN if now < entry.until else State.HALF_OPEN

    def failures(self, key: K) -> int:
        """Consecutive failures of ``key`` (0 when closed)."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry.failures

    def open(self, now: float) -> set[K]:
        """Keys whose breakers are open now (the peers to avoid). Breakers half-open for
        longer than ``cap`` are forgotten, so the table never outgrows the peers that failed
        within the last few backoffs."""
        for key in [k for k, e in self._entries.items() if now > e.until + self.cap]:
            del self._entries[key]
        return {key for key, entry in self._entries.items() if now < entry.until}

    def __len__(self) -> int:
        return len(self._entries)
