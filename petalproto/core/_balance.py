"""Where a serving peer's span does the swarm most good, and when it should move there.

Theory of operation
-------------------
A swarm is as fast as its thinnest block: every chain passes every block, so the block whose
servers together have the least throughput bounds how many tokens per second the swarm can
carry.  ``coverage`` gives, per block, the sum of the announced throughputs of the spans that
cover it; the minimum over all blocks is the swarm's *minimum throughput*.  A block with no
server at all is a *gap*: no chain exists while one is left.

A new server takes the thinnest window (``choose_blocks``).  A server already serving keeps
checking whether it stands in the right place (DESIGN: "moves when the imbalance is large";
Petals' rule, notes/swarm.md).  ``should_move`` takes the swarm's announcements, ours among
them, and:

1. removes our own span from the swarm (any announcement under our peer id is replaced by
   ``me``, the truth about ourselves);
2. keeps as candidates only the windows of our length that would not open a gap: every block
   we cover now that no other server covers must stay inside the new window.  Our current
   window is always a candidate;
3. scores each candidate by the swarm it would leave: first its minimum throughput (higher is
   better), then the number of gaps (fewer is better), then, as Petals' ``choose_best_start``
   does, the window's own throughputs without us, sorted (lexicographically lower is better:
   we go where the swarm is thinnest), then our current window (no move without a gain),
   then a window starting at a span boundary or at 0 (chains of whole spans can form, as in
   ``choose_blocks``), then the lowest start;
4. moves to the best candidate only when it differs from where we are and either raises the
   minimum throughput by more than ``threshold`` times (Petals moves when old / new is below
   its ``balance_quality`` of 0.75) or closes gaps that the move cannot close by throughput
   alone (while one gap is left the minimum stays 0, yet closing some of them is progress).

Invariants: a move never opens a gap (step 2); a move never lowers the minimum throughput
(the current window is a candidate and the best candidate scores at least as well); with
``threshold`` of at least 1 a move raises the minimum or closes a gap, so servers that all
follow the rule on the same view cannot swap back and forth forever.  Servers that decide at
the same moment on the same stale view can still move together; the shell narrows that
window by checking again just before it leaves (and by jittering its period).

Pure functions over plain data.  Nothing here reads a clock or a random source, and the
answer does not depend on the order of ``spans`` (sums are taken in a canonical order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._route import SpanInfo

__all__ = ["BALANCE_THRESHOLD", "coverage", "should_move"]

#: How much a move must raise the minimum throughput: Petals moves a server when the old
#: minimum over the new is below its ``balance_quality`` of 0.75 (notes/swarm.md).
BALANCE_THRESHOLD = 1 / 0.75


def coverage(spans: Iterable[SpanInfo], total: int) -> list[float]:
    """Per block of ``[0, total)``: the sum of the throughputs of the spans covering it.

    Parts of spans outside ``[0, total)`` are ignored, and so is a negative throughput.
    """
    blocks = [0.0] * total
    for span in sorted(spans, key=_canonical):
        for block in range(max(span.start, 0), min(span.end, total)):
            blocks[block] += max(span.throughput, 0.0)
    return blocks


def should_move(
    spans: Iterable[SpanInfo],
    me: SpanInfo,
    total: int,
    *,
    threshold: float = BALANCE_THRESHOLD,
) -> tuple[int, int] | None:
    """Where our span should move (module docstring), or None to stay.

    Args:
        spans: the announcements of the swarm's servers; ours may be among them (any span
            under ``me``'s peer id is replaced by ``me``), spans of other models are ignored.
        me: our span as it is now.
        total: the model's block count.
        threshold: the factor by which a move must raise the minimum throughput (at least
            1; ``BALANCE_THRESHOLD`` is Petals' rule).

    Returns:
        The new ``(start, end)``, of our span's length, or None.

    Raises:
        ValueError: ``me`` is not inside ``[0, total)``, or ``threshold`` is below 1.
    """
    if not 0 <= me.start < me.end <= total:
        raise ValueError(f"span {me.start}:{me.end} is not within the model's {total} blocks")
    if not threshold >= 1.0:  # also false for nan
        raise ValueError(f"threshold must be at least 1, got {threshold!r}")
    others = sorted(
        (s for s in spans if s.peer_id != me.peer_id and s.model == me.model), key=_canonical
    )
    base = coverage(others, total)
    servers = _servers(others, total)
    boundaries = {0} | {s.start for s in others} | {s.end for s in others}
    length = me.end - me.start

    def score(start: int) -> tuple[float, int, tuple[float, ...], bool, bool, int]:
        after = _with(base, start, start + length, max(me.throughput, 0.0))
        gaps = sum(1 for b in range(total) if not servers[b] and not start <= b < start + length)
        window = tuple(-t for t in sorted(base[start : start + length]))
        return (min(after), -gaps, window, start == me.start, start in boundaries, -start)

    candidates = [
        start
        for start in range(total - length + 1)
        if all(servers[b] or start <= b < start + length for b in range(me.start, me.end))
    ]
    best = max(candidates, key=score)
    if best == me.start:
        return None
    now, then = score(me.start), score(best)
    raises = then[0] > now[0] * threshold
    closes = then[1] > now[1]
    return (best, best + length) if raises or closes else None


def _canonical(span: SpanInfo) -> tuple[int, int, float]:
    # Equal keys mean equal contributions, so sums in this order do not depend on the input's.
    return (span.start, span.end, span.throughput)


def _servers(spans: Sequence[SpanInfo], total: int) -> list[int]:
    # Servers per block, counted apart from throughput: one announcing 0 still covers.
    counts = [0] * total
    for span in spans:
        for block in range(max(span.start, 0), min(span.end, total)):
            counts[block] += 1
    return counts


def _with(base: list[float], start: int, end: int, throughput: float) -> list[float]:
    return [t + throughput if start <= b < end else t for b, t in enumerate(base)]
