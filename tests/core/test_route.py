"""Chain planning over announced spans (SPEC.md §13.6)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from petalproto import _bench_route
from petalproto.core import Address, Identity, PeerId
from petalproto.core._route import (
    DEFAULT_LATENCY,
    FULL_PENALTY,
    PRECISIONS,
    NoChain,
    SpanInfo,
    parse_precision,
    plan_chain,
    precision_rank,
    span_cost,
)


def span(
    start: int,
    end: int,
    throughput: float = 10.0,
    *,
    dtype: str = "float32",
    quantization: str | None = None,
) -> SpanInfo:
    peer = Identity.from_seed(os.urandom(32)).peer_id
    address = Address(peer, "127.0.0.1", 4000)
    return SpanInfo(address, "m", start, end, throughput, dtype=dtype, quantization=quantization)


def test_single_span_covers_everything() -> None:
    whole = span(0, 8)
    assert plan_chain([whole], 0, 8) == [whole]


def test_prefers_the_faster_chain() -> None:
    slow, a, b = span(0, 8, throughput=1.0), span(0, 4, 100.0), span(4, 8, 100.0)
    assert plan_chain([slow, a, b], 0, 8) == [a, b]


def test_latency_and_avoid_steer_the_choice() -> None:
    a, b = span(0, 8), span(0, 8)
    assert plan_chain([a, b], 0, 8, latency={a.peer_id: 1.0}) == [b]
    assert plan_chain([a, b], 0, 8, avoid=[b.peer_id]) == [a]
    assert plan_chain([a, b], 0, 8, jitter={a.peer_id: 0.5}) == [b]


def test_unknown_throughput_uses_a_default() -> None:
    a, b = span(0, 8, throughput=0.0), span(0, 8, throughput=1000.0)
    assert plan_chain([a, b], 0, 8) == [b]


def test_sub_range_and_out_of_range_spans() -> None:
    inner, outer = span(2, 4), span(0, 6)
    assert plan_chain([inner, outer], 2, 4) == [inner]


def test_gap_names_the_missing_blocks() -> None:
    with pytest.raises(NoChain) as info:
        plan_chain([span(0, 3), span(5, 8)], 0, 8, model="tiny")
    assert info.value.missing == [(3, 8)]
    assert "3:8" in str(info.value) and "tiny" in str(info.value)


def test_misaligned_spans_do_not_chain() -> None:
    with pytest.raises(NoChain):
        plan_chain([span(0, 5), span(4, 8)], 0, 8)


def test_empty_range_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_chain([], 3, 3)


def test_worse_paths_to_a_boundary_are_skipped() -> None:
    # Two ways to reach block 4; the dearer one is popped later and skipped.
    a, b, c = span(0, 4, 1.0), span(0, 2, 100.0), span(2, 4, 100.0)
    e = span(0, 2, 50.0)  # reaches block 2, but dearer than b
    d = span(4, 6, 0.5)  # so slow that the stale entry for block 4 pops first
    assert plan_chain([a, b, e, c, d], 0, 6) == [b, c, d]


@given(st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_a_tiling_always_yields_a_contiguous_chain(widths: list[int]) -> None:
    bounds = [0]
    for width in widths:
        bounds.append(bounds[-1] + width)
    spans = [span(a, b) for a, b in itertools.pairwise(bounds)]
    chain = plan_chain(spans, 0, bounds[-1])
    assert chain[0].start == 0 and chain[-1].end == bounds[-1]
    assert all(x.end == y.start for x, y in itertools.pairwise(chain))


def test_choose_blocks_fills_the_thinnest_part() -> None:
    from petalproto.core._route import choose_blocks

    assert choose_blocks([], 30, 10) == (0, 10)
    assert choose_blocks([span(0, 10)], 30, 10) == (10, 20)
    assert choose_blocks([span(0, 10), span(10, 20)], 30, 10) == (20, 30)
    # Everything covered once: the window starting at a boundary wins the tie.
    assert choose_blocks([span(0, 15), span(15, 30)], 30, 15) in {(0, 15), (15, 30)}
    assert choose_blocks([span(0, 30), span(0, 10)], 30, 10) in {(10, 20), (20, 30)}
    with pytest.raises(ValueError):
        choose_blocks([], 30, 31)


def test_precision_is_the_quantization_else_the_dtype() -> None:
    assert span(0, 1, dtype="bfloat16").precision == "bfloat16"
    assert span(0, 1, dtype="bfloat16", quantization="nf4").precision == "nf4"
    ranks = [precision_rank(p) for p in ("float32", "bfloat16", "float16", "int8", "nf4")]
    assert ranks == [3, 2, 2, 1, 0] == sorted(PRECISIONS.values(), reverse=True)
    assert precision_rank("float64") == precision_rank("") == -1  # unknown: below all


def test_parse_precision_takes_names_and_short_names() -> None:
    assert [parse_precision(t) for t in ("bf16", "fp16", "fp32", "int8", "nf4")] == [
        "bfloat16",
        "float16",
        "float32",
        "int8",
        "nf4",
    ]
    with pytest.raises(ValueError, match=r"unknown precision 'int4'.*bf16"):
        parse_precision("int4")


def test_a_minimum_precision_plans_through_spans_at_or_above_it() -> None:
    fast_nf4 = span(0, 8, 1000.0, dtype="bfloat16", quantization="nf4")
    int8 = span(0, 4, 100.0, quantization="int8")
    bf16, fp16 = span(0, 4, 10.0, dtype="bfloat16"), span(4, 8, 10.0, dtype="float16")
    fp32 = span(4, 8, 1.0)
    every = [fast_nf4, int8, bf16, fp16, fp32]
    assert plan_chain(every, 0, 8) == [fast_nf4]
    assert plan_chain(every, 0, 8, minimum="int8") == [int8, fp16]
    assert plan_chain(every, 0, 8, minimum="bfloat16") == [bf16, fp16]  # mixed dtypes
    assert plan_chain(every, 0, 8, minimum="float16") == [bf16, fp16]
    assert plan_chain(every, 0, 8, minimum="fp16") == [bf16, fp16]
    with pytest.raises(ValueError, match="unknown precision"):
        plan_chain(every, 0, 8, minimum="fp8")
    with pytest.raises(NoChain, match="blocks 0:8 of 'm' at float32 or better") as caught:
        plan_chain(every, 0, 8, model="m", minimum="float32")
    assert caught.value.minimum == "float32"
    unknown = span(0, 8, 1000.0, dtype="float64")
    assert plan_chain([unknown], 0, 8) == [unknown]
    with pytest.raises(NoChain):
        plan_chain([unknown], 0, 8, minimum="nf4")


# Routing on measurements (issue 10): round trips, load, full servers, spreading. -----------


def busy(
    start: int,
    end: int,
    throughput: float = 10.0,
    *,
    sessions: int = 0,
    max_sessions: int | None = None,
    peer: PeerId | None = None,
) -> SpanInfo:
    peer = peer or Identity.from_seed(os.urandom(32)).peer_id
    address = Address(peer, "127.0.0.1", 4000)
    return SpanInfo(
        address, "m", start, end, throughput, sessions=sessions, max_sessions=max_sessions
    )


def test_load_fields_default_to_idle_and_unlimited() -> None:
    old = span(0, 8)  # built positionally, as before the load fields existed
    assert (old.sessions, old.max_sessions, old.full) == (0, None, False)
    assert old.load_cost == pytest.approx(0.1)  # 1 / 10 tokens per second
    assert span_cost(old) == pytest.approx(0.1 + DEFAULT_LATENCY)
    again = dataclasses.replace(old, sessions=3)
    assert again.load_cost == pytest.approx(0.4) and again != old
    assert dataclasses.replace(again, sessions=0) == old  # the cached cost is not compared


def test_the_near_copy_wins_over_a_far_one_of_equal_throughput() -> None:
    near, far = busy(0, 8), busy(0, 8)
    latency = {near.peer_id: 0.010, far.peer_id: 0.150}
    assert plan_chain([far, near], 0, 8, latency=latency) == [near]
    assert plan_chain([near, far], 0, 8, latency=latency) == [near]
    # An unmeasured peer counts as DEFAULT_LATENCY away: nearer than a far measured one.
    assert plan_chain([far, near], 0, 8, latency={far.peer_id: 0.150}) == [near]


def test_a_loaded_copy_loses_to_an_idle_equal_one() -> None:
    idle, loaded = busy(0, 8, sessions=0), busy(0, 8, sessions=3)
    assert plan_chain([loaded, idle], 0, 8) == [idle]
    assert plan_chain([idle, loaded], 0, 8) == [idle]
    # Load shares throughput: a fast server with 3 sessions (4 x 10 ms) still beats an idle
    # one ten times slower (100 ms).
    fast = busy(0, 8, 100.0, sessions=3)
    assert plan_chain([idle, fast], 0, 8) == [fast]
    # Load also decides between chains: one busy whole span against two idle halves.
    halves = [busy(0, 4, 20.0), busy(4, 8, 20.0)]
    assert plan_chain([busy(0, 8, 10.0, sessions=1), *halves], 0, 8) == halves


def test_a_full_server_is_avoided_but_used_when_alone() -> None:
    full = busy(0, 8, 1000.0, sessions=4, max_sessions=4)
    room = busy(0, 8, 10.0, sessions=3, max_sessions=4)
    assert full.full and not room.full
    assert plan_chain([full, room], 0, 8) == [room]
    assert plan_chain([full], 0, 8) == [full]  # it may have room again; it refuses if not
    # Around a full one through two spans, even slow and busy ones.
    detour = [busy(0, 3, 1.0, sessions=2), busy(3, 8, 1.0, sessions=2)]
    assert plan_chain([full, *detour], 0, 8) == detour
    # Only the full one serves blocks 4:8: the chain goes through it.
    through = busy(4, 8, sessions=1, max_sessions=1)
    assert plan_chain([busy(0, 4), through], 0, 8)[-1] is through
    assert busy(0, 8, max_sessions=0).full  # takes no sessions at all
    assert busy(0, 8, sessions=9, max_sessions=4).load_cost > FULL_PENALTY


def test_concurrent_clients_spread_across_equal_copies() -> None:
    rng = random.Random(10)
    copies = [busy(0, 8), busy(0, 8)]
    latency = {c.peer_id: 0.02 for c in copies}
    picked = {c.peer_id: 0 for c in copies}
    for _ in range(200):
        # Drawn as reference_peer's client draws it: up to 0.1 ms per peer, per plan.
        jitter = {c.peer_id: rng.random() * 1e-4 for c in copies}
        (chosen,) = plan_chain(copies, 0, 8, latency=latency, jitter=jitter)
        picked[chosen.peer_id] += 1
    assert all(60 <= n <= 140 for n in picked.values()), picked


def test_clients_spread_across_equal_chains() -> None:
    rng = random.Random(11)
    left = [busy(0, 4), busy(4, 8)]
    right = [busy(0, 4), busy(4, 8)]
    spans = [*left, *right]
    firsts = {s.peer_id: 0 for s in spans if s.start == 0}
    for _ in range(200):
        jitter = {s.peer_id: rng.random() * 1e-4 for s in spans}
        chain = plan_chain(spans, 0, 8, jitter=jitter)
        assert [(s.start, s.end) for s in chain] == [(0, 4), (4, 8)]
        firsts[chain[0].peer_id] += 1
    assert all(60 <= n <= 140 for n in firsts.values()), firsts


# Properties: any swarm. ------------------------------------------------------------------

#: A few peers, so that one peer may announce several spans and "avoid" bites.
PEERS = [Identity.from_seed(bytes([i]) * 32).peer_id for i in range(6)]

announcements = st.lists(
    st.tuples(
        st.integers(0, 9),  # start
        st.integers(1, 6),  # length
        st.sampled_from([0.0, 0.5, 10.0, 100.0]),  # throughput
        st.integers(0, 5),  # sessions
        st.sampled_from([None, 0, 2, 4]),  # max_sessions
        st.integers(0, len(PEERS) - 1),  # peer
    ),
    max_size=14,
)


def _swarm(drawn: list[tuple[int, int, float, int, int | None, int]]) -> list[SpanInfo]:
    return [
        busy(a, a + n, t, sessions=k, max_sessions=m, peer=PEERS[p]) for a, n, t, k, m, p in drawn
    ]


def _cheapest(spans: list[SpanInfo], lo: int, hi: int, cost: dict[int, float]) -> list[float]:
    # Reference: every span goes forwards, so the cheapest cost to each boundary follows in
    # block order (a DAG), with no heap.
    best = [math.inf] * (hi + 1)
    best[lo] = 0.0
    for block in range(lo, hi):
        for s in spans:
            if s.start == block and s.end <= hi:
                best[s.end] = min(best[s.end], best[block] + cost[id(s)])
    return best


@given(
    announcements,
    st.tuples(st.integers(0, 6), st.integers(1, 8)),
    st.sets(st.integers(0, len(PEERS) - 1), max_size=3),
    st.lists(
        st.tuples(st.floats(0.0, 0.2), st.floats(0.0, 1e-4)),  # round trip, jitter
        min_size=len(PEERS),
        max_size=len(PEERS),
    ),
)
def test_any_swarm_plans_a_cheapest_chain_or_names_a_gap(
    drawn: list[tuple[int, int, float, int, int | None, int]],
    blocks: tuple[int, int],
    avoided: set[int],
    measures: list[tuple[float, float]],
) -> None:
    lo, width = blocks
    rtts, jitters = zip(*measures, strict=True)
    hi = lo + width
    spans = _swarm(drawn)
    avoid = {PEERS[i] for i in avoided}
    latency = dict(zip(PEERS[::2], rtts[::2], strict=False))  # half the peers measured
    jitter = dict(zip(PEERS, jitters, strict=True))
    usable = [s for s in spans if s.peer_id not in avoid and lo <= s.start]
    cost = {id(s): span_cost(s, latency, jitter) for s in usable}
    best = _cheapest(usable, lo, hi, cost)
    try:
        chain = plan_chain(spans, lo, hi, latency=latency, avoid=avoid, jitter=jitter)
    except NoChain as exc:
        assert best[hi] == math.inf
        reached = max(b for b in range(lo, hi + 1) if best[b] < math.inf)
        assert exc.missing == [(reached, hi)]
        assert lo <= reached < hi
        return
    assert chain[0].start == lo and chain[-1].end == hi
    assert all(x.end == y.start for x, y in itertools.pairwise(chain))
    assert not any(s.peer_id in avoid for s in chain)
    assert sum(cost[id(s)] for s in chain) == pytest.approx(best[hi])


@given(announcements, st.sets(st.integers(0, len(PEERS) - 1), min_size=1))
def test_avoided_peers_are_never_used(
    drawn: list[tuple[int, int, float, int, int | None, int]], avoided: set[int]
) -> None:
    spans = _swarm(drawn)
    avoid = [PEERS[i] for i in avoided]
    try:
        chain = plan_chain(spans, 0, 8, avoid=avoid)
    except NoChain as exc:
        assert exc.missing[0][1] == 8
        return
    assert not {s.peer_id for s in chain} & set(avoid)


def test_the_route_bench_reports_its_figures() -> None:
    figures = _bench_route.run(servers=40, blocks=12, plans=3, seed=1)
    assert (figures["servers"], figures["blocks"], figures["plans"]) == (40, 12, 3)
    assert figures["limit_ms"] == 10.0 and isinstance(figures["within_limit"], bool)
    keys = {"plan_ms_median", "plan_ms_p99", "plan_ms_max", "baseline_ms_median"}
    assert keys <= figures.keys() and figures["ratio_to_baseline"] > 0
    assert (
        _bench_route.run(servers=40, blocks=12, plans=3, seed=1)["distinct_chains"]
        == (figures["distinct_chains"])
    )  # one seed, one swarm
    with pytest.raises(ValueError):
        _bench_route.run(servers=0)
