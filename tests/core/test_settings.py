"""Local settings and timeouts: ``Settings`` (SPEC.md §6.4) and ``Config``."""

from __future__ import annotations

from typing import Any

import pytest

from petalproto.core import Config, Settings


@pytest.mark.parametrize(
    "kwargs",
    [
        {"handshake_timeout": 0.0},
        {"keepalive_interval": 0.0},
        {"keepalive_interval": 45.0},
        {"keepalive_interval": 50.0, "idle_timeout": 45.0},
    ],
)
def test_config_rejects_bad_timeouts(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="keepalive_interval"):
        Config(**kwargs)


def test_config_defaults() -> None:
    config = Config()
    assert config.settings == Settings()
    assert (config.handshake_timeout, config.keepalive_interval, config.idle_timeout) == (
        10.0,
        15.0,
        45.0,
    )


@pytest.mark.parametrize(
    "field", ["max_frame", "stream_window", "connection_window", "max_streams"]
)
def test_settings_reject_out_of_range_values(field: str) -> None:
    limits = {
        "max_frame": (1 << 16, 1 << 26),
        "stream_window": (1 << 16, (1 << 31) - 1),
        "connection_window": (1 << 16, (1 << 31) - 1),
        "max_streams": (1, 1 << 16),
    }
    low, high = limits[field]
    extra: dict[str, Any] = {
        "stream_window": {"connection_window": (1 << 31) - 1},
        "connection_window": {"stream_window": 1 << 16},
    }.get(field, {})
    bad_values: list[Any] = [low - 1, high + 1, True, float(low)]
    for value in (low, high):
        good: dict[str, Any] = {field: value, **extra}
        assert getattr(Settings(**good), field) == value
    for bad in bad_values:
        with pytest.raises(ValueError, match=field):
            Settings(**{field: bad, **extra})


def test_settings_reject_bad_agents_and_windows() -> None:
    assert Settings(agent="a" * 64).agent == "a" * 64
    with pytest.raises(ValueError, match="agent"):
        Settings(agent="a" * 65)
    with pytest.raises(ValueError, match="agent"):
        Settings(agent=b"a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least stream_window"):
        Settings(stream_window=1 << 20, connection_window=(1 << 20) - 1)
