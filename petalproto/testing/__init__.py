"""Public, pytest-free helpers for testing petalproto and other implementations."""

from __future__ import annotations

from ._dhtsim import DhtSim, SimLookup, SimNode

__all__ = ["DhtSim", "SimLookup", "SimNode"]
