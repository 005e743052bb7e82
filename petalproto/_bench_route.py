"""``petal bench route``: planning a chain through a large swarm (SPEC.md §13.6, issue 10).

One random but realistic swarm is built from real ``SpanInfo``, ``Address`` and ``PeerId``
objects: ``servers`` servers over a model of ``blocks`` blocks.  Half of them tile the model
one after another (where ``choose_blocks`` would put them: each starts where the previous
ended, starting again at block 0 when one reaches the end), so a chain always exists; the
other half start anywhere.  Spans are 1/20 to 1/4 of the model long; throughputs are
log-normal around 20 tokens/s; a server takes 8, 16 or 32 sessions or has no limit and has
between none and all of them open (so some are full); the client has measured the round
trip (5 to 200 ms) of a third of the servers and has 2 % of them in backoff.

Each of ``plans`` plans covers the whole model with fresh jitter, drawn before the clock
starts as ``reference_peer``'s client draws it; only ``plan_chain`` is timed.  The limit is
10 ms per plan (issue 10).

The baseline, timed in the same run over the same spans and backoff set, is the least work
any planner must do: a breadth-first search for the chain of fewest spans (no costs, no
heap), in plain Python.  ``ratio_to_baseline`` is the median plan time over the median
baseline time, so it shows what the cost model and Dijkstra's heap add on top of touching
every span once.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
import time
from collections.abc import Iterable
from typing import Any

from petalproto.core import Address, Identity, PeerId
from petalproto.core._route import SpanInfo, plan_chain

__all__ = ["LIMIT_MS", "make_swarm", "run"]

#: Issue 10: 1,000 servers by 100 blocks must plan within this many milliseconds.
LIMIT_MS = 10.0
#: Session limits a server may announce (None: no limit).
_MAX_SESSIONS = (8, 16, 32, None)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]  # nearest rank


def _span(rng: random.Random, index: int, start: int, end: int) -> SpanInfo:
    peer = Identity.from_seed(rng.randbytes(32)).peer_id
    limit = rng.choice(_MAX_SESSIONS)
    return SpanInfo(
        Address(peer, f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}", 31337),
        "bench",
        start,
        end,
        throughput=rng.lognormvariate(math.log(20.0), 0.8),
        cache_tokens_free=rng.randrange(0, 100_000),
        dtype=rng.choice(("bfloat16", "float16", "float32")),
        sessions=rng.randint(0, limit if limit is not None else 32),
        max_sessions=limit,
    )


def make_swarm(servers: int, blocks: int, rng: random.Random) -> list[SpanInfo]:
    """``servers`` random spans over ``blocks`` blocks, half of them tiling the model."""
    shortest, longest = max(1, blocks // 20), max(1, blocks // 4)
    spans = []
    at = 0
    for index in range(servers):
        length = rng.randint(shortest, longest)
        if index % 2 == 0:
            start, at = at, min(at + length, blocks)
            spans.append(_span(rng, index, start, at))
            at %= blocks
        else:
            start = rng.randint(0, blocks - min(length, blocks))
            spans.append(_span(rng, index, start, min(start + length, blocks)))
    return spans


def _fewest_spans(spans: Iterable[SpanInfo], lo: int, hi: int, avoid: set[PeerId]) -> int:
    # The baseline: breadth-first search over the same boundaries, every span costing 1.
    by_start: dict[int, list[int]] = {}
    for span in spans:
        if lo <= span.start < span.end <= hi and span.address.peer_id not in avoid:
            by_start.setdefault(span.start, []).append(span.end)
    hops = {lo: 0}
    frontier = [lo]
    while frontier and hi not in hops:
        ahead = []
        for block in frontier:
            for end in by_start.get(block, ()):
                if end not in hops:
                    hops[end] = hops[block] + 1
                    ahead.append(end)
        frontier = ahead
    return hops[hi]


def _summary(times_ms: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(times_ms), 4),
        "p99": round(_p99(times_ms), 4),
        "max": round(max(times_ms), 4),
    }


def run(servers: int = 1000, blocks: int = 100, plans: int = 200, seed: int = 0) -> dict[str, Any]:
    """Build the swarm and time ``plans`` plans over the whole model.

    Args:
        servers: spans in the swarm.
        blocks: blocks of the model.
        plans: plans to time (and baseline searches).
        seed: seed of the random generator; equal seeds give equal swarms and chains.

    Returns:
        ``servers``, ``blocks``, ``plans``, ``plan_ms_median``, ``plan_ms_p99``,
        ``plan_ms_max``, ``limit_ms``, ``within_limit`` (p99 within the limit),
        ``baseline_ms_median`` and ``ratio_to_baseline`` (module docstring), and what the
        chains looked like: ``chain_spans_median``, ``full_spans_used`` (chains through a
        full server) and ``distinct_chains``.

    Raises:
        ValueError: a count below 1.
    """
    if min(servers, blocks, plans) < 1:
        raise ValueError("servers, blocks and plans must be at least 1")
    rng = random.Random(seed)
    started = time.perf_counter()
    spans = make_swarm(servers, blocks, rng)
    peers = [s.peer_id for s in spans]
    latency = {p: rng.uniform(0.005, 0.2) for p in rng.sample(peers, len(peers) // 3)}
    avoid = set(rng.sample(peers, len(peers) // 50))
    build = time.perf_counter() - started
    plan_ms, base_ms, lengths = [], [], []
    full_used = 0
    chains = set()
    for _ in range(plans):
        jitter = {p: rng.random() * 1e-4 for p in peers}
        t0 = time.perf_counter()
        chain = plan_chain(spans, 0, blocks, latency=latency, avoid=avoid, jitter=jitter)
        t1 = time.perf_counter()
        _fewest_spans(spans, 0, blocks, avoid)
        t2 = time.perf_counter()
        plan_ms.append((t1 - t0) * 1e3)
        base_ms.append((t2 - t1) * 1e3)
        lengths.append(len(chain))
        full_used += any(s.full for s in chain)
        chains.add(tuple(s.peer_id for s in chain))
    plan, base = _summary(plan_ms), _summary(base_ms)
    return {
        "servers": servers,
        "blocks": blocks,
        "plans": plans,
        "plan_ms_median": plan["median"],
        "plan_ms_p99": plan["p99"],
        "plan_ms_max": plan["max"],
        "limit_ms": LIMIT_MS,
        "within_limit": plan["p99"] < LIMIT_MS,
        "baseline": "breadth-first search for the fewest spans, same spans and backoff",
        "baseline_ms_median": base["median"],
        "ratio_to_baseline": round(plan["median"] / base["median"], 2),
        "chain_spans_median": statistics.median(lengths),
        "full_spans_used": full_used,
        "distinct_chains": len(chains),
        "build_seconds": round(build, 2),
    }


if __name__ == "__main__":  # pragma: no cover - manual runs: python -m petalproto._bench_route
    arguments = dict(
        zip(("servers", "blocks", "plans", "seed"), map(int, sys.argv[1:]), strict=False)
    )
    print(json.dumps(run(**arguments), indent=1))
