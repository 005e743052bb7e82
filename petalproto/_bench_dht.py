"""DHT lookup benchmark on a simulated 10,000-node network (SPEC.md §12.8, goals G1, G2, G4).

One network is built (``DhtSim.fill_tables``: every routing table filled through its public
``observe``), then four scenarios run on it, each from random live honest sources to random
targets:

* ``healthy``: every node alive and honest;
* ``stale20`` / ``stale50``: 20 % / 50 % of the nodes dead but still listed in tables;
* ``adversary20_disjoint4``: 20 % colluding adversaries that answer with each other's
  contacts; lookups use d = 4 disjoint paths (S/Kademlia).

A lookup *succeeds* when its result holds the true closest live honest node to the target
(or when that node is the source itself, which a lookup never returns).
``hops`` is the discovery depth of that node (0 = in the source's own table); ``rpcs`` the
requests the lookup sent, timeouts included; ``latency`` the simulated seconds it took,
with round-trip times uniform in 20..200 ms and a 2 s request timeout.

The lead's CLI calls ``run()`` and prints ``json.dumps`` of the list it returns.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from typing import Any

from petalproto.testing import DhtSim

__all__ = ["SCENARIOS", "run"]

#: name, dead fraction, adversary fraction, disjoint paths
SCENARIOS: tuple[tuple[str, float, float, int], ...] = (
    ("healthy", 0.0, 0.0, 1),
    ("stale20", 0.2, 0.0, 1),
    ("stale50", 0.5, 0.0, 1),
    ("adversary20_disjoint4", 0.0, 0.2, 4),
)


def _p99(values: list[int] | list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]  # nearest rank


def _scenario(
    sim: DhtSim, name: str, *, dead: float, adversaries: float, paths: int, lookups: int
) -> dict[str, Any]:
    started = time.perf_counter()
    sim.set_dead(dead)
    sim.set_adversaries(adversaries)
    honest = [s for s in sim.nodes if s.alive and not s.adversary]
    found = 0
    hops: list[int] = []
    rpcs: list[int] = []
    latency: list[float] = []
    for _ in range(lookups):
        source = sim.rng.choice(honest)
        target = sim.rng.randbytes(32)
        outcome = sim.lookup(source, target, disjoint_paths=paths)
        rpcs.append(outcome.result.rpcs)
        latency.append(outcome.elapsed)
        truth = sim.closest_live_honest(target)
        hit = outcome.result.find(truth.peer_id)
        if hit is not None:
            found += 1
            hops.append(hit.hops)
        elif truth is source:  # a lookup never returns its requester, who knows itself
            found += 1
            hops.append(0)
    return {
        "name": name,
        "success_rate": found / lookups,
        "hops_median": statistics.median(hops) if hops else None,
        "hops_p99": _p99(hops) if hops else None,
        "hops_max": max(hops, default=None),
        "rpcs_median": statistics.median(rpcs),
        "rpcs_p99": _p99(rpcs),
        "latency_median_s": round(statistics.median(latency), 3),
        "latency_p99_s": round(_p99(latency), 3),
        "lookups": lookups,
        "nodes": len(sim.nodes),
        "dead_fraction": dead,
        "adversary_fraction": adversaries,
        "disjoint_paths": paths,
        "seconds": round(time.perf_counter() - started, 2),
    }


def run(nodes: int = 10_000, lookups: int = 2_000, seed: int = 0) -> list[dict[str, Any]]:
    """Build the simulated network and measure the four lookup scenarios.

    Args:
        nodes: network size.
        lookups: lookups per scenario.
        seed: seed of the simulation's random generator; equal seeds give equal figures.

    Returns:
        One dict per scenario (``healthy``, ``stale20``, ``stale50``,
        ``adversary20_disjoint4``) with ``name``, ``success_rate``, ``hops_median``,
        ``hops_p99``, ``rpcs_median`` and further figures; ``build_seconds`` is the time
        taken to create the nodes and fill their tables.
    """
    started = time.perf_counter()
    sim = DhtSim(nodes, seed=seed)
    sim.fill_tables()
    build = round(time.perf_counter() - started, 2)
    results = []
    for name, dead, adversaries, paths in SCENARIOS:
        figures = _scenario(
            sim, name, dead=dead, adversaries=adversaries, paths=paths, lookups=lookups
        )
        figures["build_seconds"] = build
        results.append(figures)
    return results


if __name__ == "__main__":  # pragma: no cover - manual runs: python -m petalproto._bench_dht
    arguments = dict(zip(("nodes", "lookups", "seed"), map(int, sys.argv[1:]), strict=False))
    t0 = time.perf_counter()
    print(json.dumps(run(**arguments), indent=1))
    print(f"total {time.perf_counter() - t0:.1f} s", file=sys.stderr)
