"""Planning a chain of peers through a model's blocks (SPEC.md §13.6).

Theory of operation
-------------------
Servers announce spans ``[start, end)`` of a model's blocks.  A chain is a sequence of spans
whose boundaries meet: the first starts at block ``lo``, each next one starts where the
previous ended, the last ends at ``hi``.  The graph's vertices are block boundaries and its
edges are spans; Dijkstra's algorithm finds the cheapest chain from ``lo`` to ``hi``.  Peers
in backoff are left out; when no chain exists the error names the range from the farthest
boundary any usable chain reaches up to ``hi``.

The cost model.  An edge costs the seconds one token spends on that span, as seen by this
client::

    cost = round_trip + step * (1 + sessions) + (FULL_PENALTY if full) + jitter

- ``round_trip`` is the caller's measurement for the peer (``DEFAULT_LATENCY`` while
  unmeasured), so of two copies of a span the near one wins.  A relayed step goes from the
  client to every span and back (§13.3), hence a whole round trip per edge.
- ``step`` is the inverse of the announced throughput (``DEFAULT_STEP_TIME`` when none is
  announced).  A server computes one request at a time (the reference server holds a
  capacity limiter of one), so its ``sessions`` open sessions share that throughput with
  ours: the step is scaled by ``1 + sessions``.  This is pessimistic (a session between
  steps leaves the server idle), which errs towards spreading load.
- A *full* server, ``sessions >= max_sessions``, would refuse us with TOO_MANY_SESSIONS
  (§13.4).  It costs ``FULL_PENALTY`` more, so any chain that avoids it wins, but it is not
  left out: the announcement is up to a minute old, the server may have room again, and
  when nothing else serves those blocks trying it beats failing for sure (the client
  handles the refusal and plans again).  Petals adds the same 10 s when a server lacks room
  for the cache.
- ``jitter`` is drawn by the caller per plan, so that clients that see the same swarm do
  not all pick the same one of several equal copies.

The part of the cost that depends only on the announcement (``step * (1 + sessions)``
plus the penalty) is computed once, when the ``SpanInfo`` is made, and kept in it; a plan
then spends, per span, one range check, three dictionary look-ups (avoided, round trip,
jitter) and an addition, plus Dijkstra's heap work: a push only when a span improves the
best cost of its end boundary, so at most one per span, usually a few per boundary.  Nothing
loops over blocks, so a plan costs O(spans log spans) at worst.

Spans below a minimum precision (SPEC.md §13.8) are left out too: a span's precision is its
quantization when it has one, else its dtype, ranked ``float32`` > ``bfloat16`` = ``float16``
> ``int8`` > ``nf4``.

Pure functions over plain data: the caller measures latencies, tracks backoff and draws the
jitter.  Nothing here reads a clock or a random source.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ._address import Address
from ._identity import PeerId

__all__ = [
    "FULL_PENALTY",
    "PRECISIONS",
    "NoChain",
    "SpanInfo",
    "choose_blocks",
    "parse_precision",
    "plan_chain",
    "precision_rank",
    "span_cost",
]

#: Latency assumed for a peer we have not measured yet, in seconds.
DEFAULT_LATENCY = 0.005
#: Compute time assumed per token when a peer announces no throughput, in seconds.
DEFAULT_STEP_TIME = 0.05
#: Extra cost of a server that announces itself full, in seconds: Petals' penalty for a
#: server without room for the cache (notes/swarm.md), far above any real step.
FULL_PENALTY = 10.0


#: SPEC.md §13.8: every precision and its rank (higher is more precise).
PRECISIONS: dict[str, int] = {"float32": 3, "bfloat16": 2, "float16": 2, "int8": 1, "nf4": 0}
#: Short names a user may give for a precision.
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_precision(text: str) -> str:
    """The precision a user's text names (``"bf16"`` is ``"bfloat16"``).

    Raises:
        ValueError: the text names no precision of SPEC.md §13.8.
    """
    name = _ALIASES.get(text, text)
    if name not in PRECISIONS:
        known = ", ".join([*PRECISIONS, *_ALIASES])
        raise ValueError(f"unknown precision {text!r} (give one of {known})")
    return name


def precision_rank(name: str) -> int:
    """The rank of a precision, -1 for a text §13.8 does not know (below every other)."""
    return PRECISIONS.get(name, -1)


class NoChain(LookupError):
    """No chain of reachable spans covers the blocks.

    Attributes:
        missing: the block ranges ``(start, end)`` that no usable span reaches.
        minimum: the precision the spans had to meet, if any.
    """

    def __init__(
        self, model: str, missing: list[tuple[int, int]], *, minimum: str | None = None
    ) -> None:
        ranges = ", ".join(f"{a}:{b}" for a, b in missing)
        at = f" at {minimum} or better" if minimum else ""
        super().__init__(f"no peer serves blocks {ranges} of {model!r}{at}")
        self.model = model
        self.missing = missing
        self.minimum = minimum


@dataclass(frozen=True, slots=True)
class SpanInfo:
    """One server's announcement: who serves which blocks of which model, how fast, and
    how busy it is (``sessions`` open of at most ``max_sessions``, None for no limit)."""

    address: Address
    model: str
    start: int
    end: int
    throughput: float = 0.0
    cache_tokens_free: int | None = None
    dtype: str = ""
    quantization: str | None = None
    sessions: int = 0
    max_sessions: int | None = None
    #: The announcement's share of the edge cost (module docstring), computed once.
    load_cost: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        step = 1.0 / self.throughput if self.throughput > 0 else DEFAULT_STEP_TIME
        cost = step * (1 + max(self.sessions, 0))
        if self.full:
            cost += FULL_PENALTY
        object.__setattr__(self, "load_cost", cost)

    @property
    def peer_id(self) -> PeerId:
        return self.address.peer_id

    @property
    def precision(self) -> str:
        """SPEC.md §13.8: the quantization when there is one, else the dtype."""
        return self.quantization or self.dtype

    @property
    def full(self) -> bool:
        """Whether the server announced as many sessions as it takes (§13.4)."""
        return self.max_sessions is not None and self.sessions >= self.max_sessions


def span_cost(
    span: SpanInfo,
    latency: Mapping[PeerId, float] | None = None,
    jitter: Mapping[PeerId, float] | None = None,
) -> float:
    """The cost of ``span`` as an edge of the plan, in seconds (module docstring)."""
    peer = span.address.peer_id
    round_trip = latency.get(peer, DEFAULT_LATENCY) if latency else DEFAULT_LATENCY
    return round_trip + span.load_cost + (jitter.get(peer, 0.0) if jitter else 0.0)


def _edges(
    spans: Iterable[SpanInfo],
    *,
    lo: int,
    hi: int,
    banned: set[PeerId],
    floor: int,
    latency: Mapping[PeerId, float],
    jitter: Mapping[PeerId, float],
) -> dict[int, list[tuple[float, SpanInfo]]]:
    # Usable spans by start, each with its edge cost: the one pass over all spans.
    by_start: dict[int, list[tuple[float, SpanInfo]]] = {}
    for span in spans:
        start = span.start
        if not lo <= start < span.end <= hi:
            continue
        peer = span.address.peer_id
        if peer in banned or (floor >= 0 and precision_rank(span.precision) < floor):
            continue
        cost = latency.get(peer, DEFAULT_LATENCY) + span.load_cost + jitter.get(peer, 0.0)
        edges = by_start.get(start)
        if edges is None:
            by_start[start] = [(cost, span)]
        else:
            edges.append((cost, span))
    return by_start


def plan_chain(
    spans: Iterable[SpanInfo],
    lo: int,
    hi: int,
    *,
    model: str = "",
    latency: Mapping[PeerId, float] | None = None,
    avoid: Iterable[PeerId] = (),
    jitter: Mapping[PeerId, float] | None = None,
    minimum: str | None = None,
) -> list[SpanInfo]:
    """The cheapest chain of spans from block ``lo`` to block ``hi`` (module docstring).

    Args:
        spans: announcements to choose from.
        lo, hi: the blocks to cover, ``[lo, hi)``.
        model: only for the error message.
        latency: measured round-trip seconds per peer.
        avoid: peers not to use (backoff, known failures).
        jitter: extra cost per peer, drawn by the caller to spread load.
        minimum: a precision (``PRECISIONS``, or a short name such as ``"bf16"``) every
            span must meet, or None for any.

    Returns:
        Spans in block order; the first starts at ``lo``, the last ends at ``hi``.

    Raises:
        NoChain: the usable spans leave a gap.
        ValueError: ``lo >= hi``, or ``minimum`` names no precision.
    """
    if lo >= hi:
        raise ValueError("need lo < hi")
    if minimum is not None:
        minimum = parse_precision(minimum)
    floor = precision_rank(minimum) if minimum is not None else -1
    by_start = _edges(
        spans,
        lo=lo,
        hi=hi,
        banned=set(avoid),
        floor=floor,
        latency=latency or {},
        jitter=jitter or {},
    )
    best: dict[int, float] = {lo: 0.0}
    came: dict[int, SpanInfo] = {}
    queue = [(0.0, lo)]
    inf = float("inf")
    while queue:
        cost, block = heapq.heappop(queue)
        if block == hi:
            break
        if cost > best[block]:
            continue
        for edge, span in by_start.get(block, ()):
            total, end = cost + edge, span.end
            if total < best.get(end, inf):
                best[end] = total
                came[end] = span
                heapq.heappush(queue, (total, end))
    if hi not in came:
        raise NoChain(model, [(max(best), hi)], minimum=minimum)
    chain = []
    block = hi
    while block != lo:
        span = came[block]
        chain.append(span)
        block = span.start
    return chain[::-1]


def choose_blocks(spans: Iterable[SpanInfo], total: int, count: int) -> tuple[int, int]:
    """Where a new server of ``count`` blocks helps most: the window of blocks that the
    fewest announced servers cover (DESIGN: serve where the swarm is thinnest).

    Ties go to windows that start where a span ends (or at 0), so that chains of whole
    spans can form, then to the lowest start.

    Raises:
        ValueError: ``count`` is not in ``1..total``.
    """
    if not 0 < count <= total:
        raise ValueError(f"cannot serve {count} of {total} blocks")
    coverage = [0] * total
    boundaries = {0}
    for span in spans:
        boundaries.update((span.start, span.end))
        for block in range(max(span.start, 0), min(span.end, total)):
            coverage[block] += 1

    def score(start: int) -> tuple[int, int, bool, int]:
        window = coverage[start : start + count]
        return (max(window), sum(window), start not in boundaries, start)

    start = min(range(total - count + 1), key=score)
    return start, start + count
