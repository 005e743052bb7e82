"""Circuit breakers (petalproto.core._breaker): closed, open, half-open, doubling backoff with
jitter, forgetting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from petalproto.core._breaker import Breakers, State


def test_a_failure_opens_then_half_opens_and_a_success_closes() -> None:
    breakers: Breakers[str] = Breakers(base=10, cap=100, jitter=0, rng=lambda: 0.5)
    assert breakers.state("a", 0) is State.CLOSED
    assert breakers.failure("a", 0) == 10
    assert breakers.state("a", 5) is State.OPEN
    assert breakers.open(5) == {"a"}
    assert breakers.state("a", 10) is State.HALF_OPEN
    assert breakers.open(10) == set()
    breakers.success("a")
    assert breakers.state("a", 10) is State.CLOSED
    assert breakers.failures("a") == 0


def test_failures_in_a_row_double_the_backoff_up_to_the_cap() -> None:
    breakers: Breakers[str] = Breakers(base=10, cap=50, jitter=0)
    untils = [breakers.failure("a", 0) for _ in range(5)]
    assert untils == [10, 20, 40, 50, 50]
    assert breakers.failures("a") == 5


def test_jitter_spreads_the_backoff_within_its_bounds() -> None:
    draws = iter([0.0, 0.999999])
    breakers: Breakers[str] = Breakers(base=10, cap=100, jitter=0.25, rng=lambda: next(draws))
    assert breakers.failure("a", 0) == pytest.approx(7.5)
    assert breakers.failure("b", 0) == pytest.approx(12.5, rel=1e-4)


def test_long_half_open_breakers_are_forgotten() -> None:
    breakers: Breakers[str] = Breakers(base=10, cap=20, jitter=0)
    breakers.failure("a", 0)
    assert len(breakers) == 1
    breakers.open(31)
    assert len(breakers) == 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        Breakers(base=0)
    with pytest.raises(ValueError):
        Breakers(base=10, cap=5)
    with pytest.raises(ValueError):
        Breakers(jitter=1.0)


@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), st.floats(0, 1000)), max_size=50),
    st.floats(0, 0.9),
)
def test_an_open_breaker_never_outlasts_its_capped_jittered_backoff(
    events: list[tuple[str, bool, float]], jitter: float
) -> None:
    breakers: Breakers[str] = Breakers(base=1, cap=64, jitter=jitter)
    now = 0.0
    for key, failed, step in events:
        now += step
        if failed:
            until = breakers.failure(key, now)
            assert now < until <= now + 64 * (1 + jitter)
            assert breakers.state(key, now) is State.OPEN
        else:
            breakers.success(key)
            assert breakers.state(key, now) is State.CLOSED
