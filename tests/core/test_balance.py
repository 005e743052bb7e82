"""Rebalancing: block coverage and when a serving peer moves its span (petalproto.core._balance)."""

from __future__ import annotations

import functools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from petalproto.core import Address, Identity
from petalproto.core._balance import BALANCE_THRESHOLD, coverage, should_move
from petalproto.core._route import SpanInfo, choose_blocks


@functools.cache
def _address(n: int) -> Address:
    return Address(Identity.from_seed(bytes([n]) * 32).peer_id, "127.0.0.1", 4000 + n)


def span(
    start: int, end: int, throughput: float = 10.0, *, peer: int = 0, model: str = "m"
) -> SpanInfo:
    return SpanInfo(_address(peer), model, start, end, throughput)


ME = 255


def mine(start: int, end: int, throughput: float = 10.0) -> SpanInfo:
    return span(start, end, throughput, peer=ME)


# --------------------------------------------------------------------------- coverage


def test_coverage_sums_the_throughputs_of_the_spans_over_each_block() -> None:
    spans = [span(0, 2, 1.0, peer=1), span(1, 4, 2.5, peer=2), span(3, 4, 4.0, peer=3)]
    assert coverage(spans, 4) == [1.0, 3.5, 2.5, 6.5]


def test_coverage_ignores_what_lies_outside_the_model_and_negative_throughputs() -> None:
    spans = [span(-2, 1, 1.0, peer=1), span(2, 9, 2.0, peer=2), span(0, 3, -5.0, peer=3)]
    assert coverage(spans, 3) == [1.0, 0.0, 2.0]
    assert coverage([], 2) == [0.0, 0.0]


# --------------------------------------------------------------------------- should_move


def test_an_idle_server_on_a_doubly_covered_span_moves_to_the_uncovered_one() -> None:
    swarm = [span(0, 4, peer=1), mine(0, 4)]
    assert should_move(swarm, mine(0, 4), 8) == (4, 8)


def test_a_new_server_chooses_the_thin_span_and_an_idle_one_moves_to_it() -> None:
    swarm = [span(0, 4, peer=1), span(0, 4, peer=2), span(4, 8, 1.0, peer=3)]
    assert choose_blocks(swarm, 8, 4) == (4, 8)  # joining: where fewest servers are
    twin = swarm[1]
    assert should_move(swarm, twin, 8) == (4, 8)  # serving: 4..8 is ten times thinner


def test_a_server_moves_from_a_doubly_covered_span_to_a_thin_one() -> None:
    swarm = [span(0, 4, 10.0, peer=1), mine(0, 4, 10.0), span(4, 8, 1.0, peer=2)]
    assert should_move(swarm, mine(0, 4, 10.0), 8) == (4, 8)


def test_a_balanced_swarm_stays_where_it_is() -> None:
    swarm = [span(0, 4, peer=1), span(4, 8, peer=2), span(4, 8, peer=3), mine(0, 4)]
    assert should_move(swarm, mine(0, 4), 8) is None
    assert should_move([span(0, 4, peer=1), mine(4, 8)], mine(4, 8), 8) is None
    assert should_move([mine(0, 8)], mine(0, 8), 8) is None


def test_the_threshold_decides_a_modest_gain() -> None:
    # The minimum goes from 8 (blocks 4..8) to 10 (blocks 0..4): a gain of 1.25.
    swarm = [span(0, 4, 10.0, peer=1), mine(0, 4, 10.0), span(4, 8, 8.0, peer=2)]
    assert should_move(swarm, mine(0, 4, 10.0), 8) is None  # Petals' 1 / 0.75 is more
    assert should_move(swarm, mine(0, 4, 10.0), 8, threshold=1.2) == (4, 8)
    assert should_move(swarm, mine(0, 4, 10.0), 8, threshold=1.25) is None  # "more than"
    assert pytest.approx(1 / 0.75) == BALANCE_THRESHOLD


def test_an_uncovered_block_is_filled_at_any_threshold_but_a_gain_needs_one() -> None:
    swarm = [span(0, 4, peer=1), mine(0, 4)]
    assert should_move(swarm, mine(0, 4), 8, threshold=1e9) == (4, 8)
    thin = [span(0, 4, 10.0, peer=1), mine(0, 4, 10.0), span(4, 8, 1.0, peer=2)]
    assert should_move(thin, mine(0, 4, 10.0), 8, threshold=1e9) is None


def test_the_only_server_of_a_block_never_leaves_it() -> None:
    # Blocks 4..8 are crowded, but only we serve 0..4.
    crowded = [span(4, 8, peer=p) for p in (1, 2, 3)]
    assert should_move([*crowded, mine(0, 4)], mine(0, 4), 8) is None
    # Only we serve block 0: every window of ours must keep it, and only 0..4 does.
    swarm = [span(1, 4, peer=1), span(1, 4, peer=2)]
    assert should_move([*swarm, mine(0, 4)], mine(0, 4), 8) is None


def test_a_sole_block_may_stay_inside_a_shifted_window() -> None:
    # We alone serve block 3, and nobody serves block 4: of the windows that keep block 3
    # (1..4 and 2..5), 2..5 also fills block 4.
    swarm = [span(0, 3, peer=1), span(0, 3, peer=2)]
    assert should_move(swarm, mine(1, 4), 5) == (2, 5)


def test_closing_some_gaps_is_progress_while_others_remain() -> None:
    # Blocks 2..12 are uncovered: no window of 2 lifts the minimum above 0, but filling
    # two of them helps; the window at a span boundary (2) wins the tie.
    swarm = [span(0, 2, peer=1), mine(0, 2)]
    assert should_move(swarm, mine(0, 2), 12) == (2, 4)


def test_the_thinnest_window_wins_a_tie_of_minimums_then_a_boundary_then_the_lower_start() -> None:
    # Block 4 is thin (1), block 7 (2) stays the bottleneck wherever we go: 3..5 and 4..6
    # both lift the minimum to 2, and 3..5 (sorted [1, 5]) is thinner than 4..6 ([1, 10])
    # even though only 4 is a span boundary.
    others = [
        span(0, 2, 10.0, peer=1),
        span(2, 4, 5.0, peer=2),
        span(4, 5, 1.0, peer=3),
        span(5, 7, 10.0, peer=4),
        span(7, 8, 2.0, peer=5),
    ]
    assert should_move([*others, mine(0, 2)], mine(0, 2), 8) == (3, 5)
    # Block 3 alone is thin; 2..4 and 3..5 tie on everything but the boundary (3 is one).
    others = [
        span(0, 1, 10.0, peer=1),
        span(1, 3, 10.0, peer=2),
        span(3, 4, 1.0, peer=3),
        span(4, 6, 10.0, peer=4),
    ]
    assert should_move([*others, mine(0, 2)], mine(0, 2), 6) == (3, 5)
    # The same coverage with 2 a boundary too: the lower start wins.
    others[1:2] = [span(1, 2, 10.0, peer=2), span(2, 3, 10.0, peer=5)]
    assert should_move([*others, mine(0, 2)], mine(0, 2), 6) == (2, 4)


def test_our_stale_announcement_is_replaced_by_the_truth() -> None:
    # The DHT still holds our old announcement of 4..8; we now serve 0..4 next to a twin.
    swarm = [span(0, 4, peer=1), span(4, 8, peer=ME)]
    assert should_move(swarm, mine(0, 4), 8) == (4, 8)


def test_spans_of_other_models_are_ignored() -> None:
    # Blocks 4..8 of "m" have nobody; had the other model's span counted, nobody would move.
    swarm = [span(0, 4, peer=1), span(4, 8, peer=2, model="other")]
    assert should_move(swarm, mine(0, 4), 8) == (4, 8)
    assert should_move([span(0, 4, peer=1), span(4, 8, peer=2)], mine(0, 4), 8) is None


@pytest.mark.parametrize(("start", "end"), [(-1, 3), (2, 2), (4, 3), (0, 9)])
def test_a_span_outside_the_model_is_refused(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="not within the model's 8 blocks"):
        should_move([], mine(start, end), 8)


@pytest.mark.parametrize("threshold", [0.99, 0.0, -1.0, math.nan])
def test_a_threshold_below_one_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold must be at least 1"):
        should_move([], mine(0, 4), 8, threshold=threshold)


# --------------------------------------------------------------------------- properties

_spans = st.lists(st.tuples(st.integers(0, 11), st.integers(1, 12), st.integers(0, 50)), max_size=7)


@st.composite
def swarms(draw: st.DrawFn) -> tuple[list[SpanInfo], SpanInfo, int]:
    total = draw(st.integers(1, 12))
    others = [
        span(min(s, total - 1), min(s + n, total), float(t), peer=i + 1)
        for i, (s, n, t) in enumerate(draw(_spans))
    ]
    length = draw(st.integers(1, total))
    start = draw(st.integers(0, total - length))
    me = mine(start, start + length, float(draw(st.integers(0, 50))))
    return others, me, total


def _moved(others: list[SpanInfo], me: SpanInfo, start: int) -> list[SpanInfo]:
    return [*others, mine(start, start + me.end - me.start, me.throughput)]


def _covered(spans: list[SpanInfo], total: int) -> set[int]:
    return {b for s in spans for b in range(s.start, s.end) if b < total}


@given(swarms(), st.sampled_from([1.0, 1.2, BALANCE_THRESHOLD, 4.0]))
def test_a_move_never_opens_a_gap_nor_lowers_the_minimum(
    swarm: tuple[list[SpanInfo], SpanInfo, int], threshold: float
) -> None:
    others, me, total = swarm
    before = [*others, me]
    target = should_move(before, me, total, threshold=threshold)
    if target is None:
        return
    start, end = target
    assert 0 <= start < end <= total and end - start == me.end - me.start
    assert start != me.start
    after = _moved(others, me, start)
    assert _covered(before, total) <= _covered(after, total)
    old, new = min(coverage(before, total)), min(coverage(after, total))
    fewer_gaps = len(_covered(after, total)) > len(_covered(before, total))
    assert new > old * threshold or fewer_gaps
    assert new >= old


@given(swarms(), st.sampled_from([1.0, BALANCE_THRESHOLD, 3.0]))
def test_the_server_moves_whenever_some_window_would_pass_the_rule(
    swarm: tuple[list[SpanInfo], SpanInfo, int], threshold: float
) -> None:
    """A brute-force oracle: every safe window, judged by the rule itself."""
    others, me, total = swarm
    before = [*others, me]
    old, covered = min(coverage(before, total)), _covered(before, total)
    passing = []
    for start in range(total - (me.end - me.start) + 1):
        after = _moved(others, me, start)
        now = _covered(after, total)
        if start == me.start or not covered <= now:
            continue
        if min(coverage(after, total)) > old * threshold or len(now) > len(covered):
            passing.append(start)
    target = should_move(before, me, total, threshold=threshold)
    assert (target is not None) == bool(passing)
    assert target is None or target[0] in passing


@given(swarms())
def test_after_a_move_the_server_stays(swarm: tuple[list[SpanInfo], SpanInfo, int]) -> None:
    others, me, total = swarm
    target = should_move([*others, me], me, total)
    if target is not None:
        moved = mine(*target, me.throughput)
        assert should_move([*others, moved], moved, total) is None


@given(swarms(), st.randoms(use_true_random=False), st.floats(0.0, 1000.0))
def test_the_answer_does_not_depend_on_the_order_of_the_spans(
    swarm: tuple[list[SpanInfo], SpanInfo, int], rng: random.Random, scale: float
) -> None:
    others, me, total = swarm
    # Throughputs that are not whole numbers, so float sums could differ by order.
    others = [
        span(s.start, s.end, s.throughput * scale / 7, peer=i + 1) for i, s in enumerate(others)
    ]
    shuffled = list(others)
    rng.shuffle(shuffled)
    assert should_move([*others, me], me, total) == should_move([me, *shuffled], me, total)
    assert coverage(others, total) == coverage(shuffled, total)
