"""Whole networks in the deterministic simulator (SPEC.md §12.8 goals, scaled down)."""

from __future__ import annotations

import pytest

from petalproto import _bench_dht
from petalproto.core.dht import (
    DhtConfig,
    GetFinished,
    LookupFinished,
    PutFinished,
    RoutingConfig,
    make_dictionary_record,
)
from petalproto.testing import DhtSim, SimNode


def _success_rate(sim: DhtSim, lookups: int, *, paths: int = 1) -> float:
    honest = [s for s in sim.nodes if s.alive and not s.adversary]
    found = 0
    for _ in range(lookups):
        source = sim.rng.choice(honest)
        target = sim.rng.randbytes(32)
        truth = sim.closest_live_honest(target)
        outcome = sim.lookup(source, target, disjoint_paths=paths)
        found += truth is source or outcome.result.find(truth.peer_id) is not None
    return found / lookups


@pytest.fixture(scope="module")
def joined() -> DhtSim:
    """300 nodes that joined one by one through DhtNode.bootstrap (about 6 s)."""
    config = DhtConfig(clock_offset=1.7e9, routing=RoutingConfig(refresh_interval=3600.0))
    sim = DhtSim(300, seed=7, config=config)
    sim.join_all()
    return sim


@pytest.mark.slow
def test_joined_network_lookups_succeed(joined: DhtSim) -> None:
    joined.set_dead(0.0)
    joined.set_adversaries(0.0)
    assert min(len(s.node.table) for s in joined.nodes) >= 20
    assert _success_rate(joined, 200) >= 0.99
    joined.set_dead(0.2)
    assert _success_rate(joined, 200) >= 0.95
    joined.set_dead(0.0)


@pytest.mark.slow
def test_joined_network_runs_whole_operations(joined: DhtSim) -> None:
    joined.set_dead(0.0)
    joined.set_adversaries(0.0)
    publisher, reader = joined.nodes[10], joined.nodes[200]
    unix = int(joined.now + joined.config.clock_offset)
    record = make_dictionary_record(
        publisher.identity, b"\x42" * 32, {"blocks": [0, 8]}, seq=1, expires=unix + 3600
    )
    done = joined.run_operation(publisher, lambda node, now: node.put(record, now))
    assert isinstance(done, PutFinished) and done.ok and done.stored >= 15
    got = joined.run_operation(reader, lambda node, now: node.get(record.key, now))
    assert isinstance(got, GetFinished) and got.records == (record,)
    target = joined.rng.randbytes(32)
    found = joined.run_operation(reader, lambda node, now: node.find_node(target, now))
    assert isinstance(found, LookupFinished)
    truth = joined.closest_live_honest(target)
    assert truth is reader or found.result.find(truth.peer_id) is not None


@pytest.mark.slow
def test_dead_nodes_time_out_in_whole_operations(joined: DhtSim) -> None:
    joined.set_dead(0.3, keep=[joined.nodes[3]])
    started = joined.now
    found = joined.run_operation(joined.nodes[3], lambda node, now: node.find_node(bytes(32), now))
    assert isinstance(found, LookupFinished)
    assert found.result.failures >= 1 and joined.now - started >= 2.0
    assert all(
        n.contact.peer_id != s.peer_id
        for n in found.result.closest
        for s in joined.nodes
        if not s.alive
    )
    joined.set_dead(0.0)


@pytest.mark.slow
def test_filled_network_and_adversaries() -> None:
    sim = DhtSim(600, seed=3)
    sim.fill_tables()
    assert _success_rate(sim, 200) == 1.0
    adversaries = sim.set_adversaries(0.2)
    assert all(isinstance(s, SimNode) and s.adversary for s in adversaries)
    assert _success_rate(sim, 200, paths=4) >= 0.99
    assert sim.node_of(adversaries[0].peer_id) is adversaries[0]


@pytest.mark.slow
def test_bench_reports_every_scenario_and_is_deterministic() -> None:
    first = _bench_dht.run(nodes=400, lookups=60, seed=5)
    assert [r["name"] for r in first] == ["healthy", "stale20", "stale50", "adversary20_disjoint4"]
    for row in first:
        assert {"name", "success_rate", "hops_median", "hops_p99", "rpcs_median"} <= set(row)
        assert row["success_rate"] >= 0.95
        assert row["lookups"] == 60
    second = _bench_dht.run(nodes=400, lookups=60, seed=5)
    timing = ("seconds", "build_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in first] == [
        {k: v for k, v in r.items() if k not in timing} for r in second
    ]
