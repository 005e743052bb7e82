"""``petal bench swarm``'s figures of an emulated WAN."""

from __future__ import annotations

from reference_peer._bench_swarm import limits, summarize


def test_the_limits_of_a_delayed_chain() -> None:
    # 3 hops at 20 ms one way: one trip around the chain is 4 delays, relaying is 6.
    assert limits(10.0, 3, 20.0) == {"limit_ms_per_token": 90.0, "relay_ms_per_token": 130.0}
    assert limits(10.0, 1, 0.0) == {"limit_ms_per_token": 10.0, "relay_ms_per_token": 10.0}


def test_summarize_takes_the_median_of_paired_rounds() -> None:
    local = [(0.1, 0.010), (0.1, 0.020), (0.1, 0.010)]
    swarm = [(0.2, 0.012), (0.2, 0.030), (0.2, 0.013)]
    figures = summarize(local, swarm)
    assert figures["ratio"] == 1.3
    assert figures["ratios"] == [1.2, 1.5, 1.3]
    assert figures["local_ms_per_token"] == 10.0
    assert figures["swarm_ms_per_token"] == 13.0
