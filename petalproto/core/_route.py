"""Planning a chain of peers through a model's blocks (SPEC.md §13.6).

Theory of operation
-------------------
Servers announce spans ``[start, end)`` of a model's blocks.  A chain is a sequence of spans
whose boundaries meet: the first starts at block ``lo``, each next one starts where the
previous ended, the last ends at ``hi``.  The graph's vertices are block boundaries and its
edges are spans; the cost of an edge is the time one token spends there: the round trip to
the peer plus the span's compute time (the inverse of its announced throughput), plus a
caller-supplied jitter so that equal chains share the load.  Dijkstra's algorithm finds
the cheapest chain.  Peers in backoff are left out; when no chain exists the error names the
first block that nothing reachable covers.

Spans below a minimum precision (SPEC.md §13.8) are left out too: a span's precision is its
quantization when it has one, else its dtype, ranked ``float32`` > ``bfloat16`` = ``float16``
> ``int8`` > ``nf4``.

Pure functions over plain data: the caller measures latencies, tracks backoff and draws the
jitter.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._address import Address
from ._identity import PeerId

__all__ = [
    "PRECISIONS",
    "NoChain",
    "SpanInfo",
    "choose_blocks",
    "parse_precision",
    "plan_chain",
    "precision_rank",
]

#: Latency assumed for a peer we have not measured yet, in seconds.
DEFAULT_LATENCY = 0.005
#: Compute time assumed per token when a peer announces no throughput, in seconds.
DEFAULT_STEP_TIME = 0.05


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
    """One server's announcement: who serves which blocks of which model, how fast."""

    address: Address
    model: str
    start: int
    end: int
    throughput: float = 0.0
    cache_tokens_free: int | None = None
    dtype: str = ""
    quantization: str | None = None

    @property
    def peer_id(self) -> PeerId:
        return self.address.peer_id

    @property
    def precision(self) -> str:
        """SPEC.md §13.8: the quantization when there is one, else the dtype."""
        return self.quantization or self.dtype


def _cost(span: SpanInfo, latency: Mapping[PeerId, float], jitter: Mapping[PeerId, float]) -> float:
    step = 1.0 / span.throughput if span.throughput > 0 else DEFAULT_STEP_TIME
    return latency.get(span.peer_id, DEFAULT_LATENCY) + step + jitter.get(span.peer_id, 0.0)


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
    """The cheapest chain of spans from block ``lo`` to block ``hi``.

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
    banned = set(avoid)
    if minimum is not None:
        minimum = parse_precision(minimum)
    floor = precision_rank(minimum) if minimum is not None else -1
    by_start: dict[int, list[SpanInfo]] = {}
    for span in spans:
        if (
            span.peer_id not in banned
            and lo <= span.start < span.end <= hi
            and precision_rank(span.precision) >= floor
        ):
            by_start.setdefault(span.start, []).append(span)
    latency, jitter = latency or {}, jitter or {}
    best: dict[int, float] = {lo: 0.0}
    came: dict[int, SpanInfo] = {}
    queue = [(0.0, lo)]
    while queue:
        cost, block = heapq.heappop(queue)
        if block == hi:
            break
        if cost > best[block]:
            continue
        for span in by_start.get(block, ()):
            total = cost + _cost(span, latency, jitter)
            if total < best.get(span.end, float("inf")):
                best[span.end] = total
                came[span.end] = span
                heapq.heappush(queue, (total, span.end))
    if hi not in came:
        reached = max(best)
        raise NoChain(model, [(reached, hi)], minimum=minimum)
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
