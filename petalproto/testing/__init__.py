"""Public, pytest-free helpers for testing petalproto and other implementations."""

from __future__ import annotations

from ._checks import (
    check_byte_at_a_time,
    check_flow_control,
    check_garbage_is_fatal,
    check_handshake,
    check_peer_connections,
    check_request_response,
)
from ._delay import DelayProxy, ProxyThread
from ._dhtsim import DhtSim, SimLookup, SimNode
from ._pairs import (
    ConnectionPair,
    ScriptedPeer,
    deterministic_random,
    frame_bytes,
    make_connection,
    make_identity,
)
from ._vectors import fixed_key, handshake_vector, sample_frames

__all__ = [
    "ConnectionPair",
    "DelayProxy",
    "DhtSim",
    "ProxyThread",
    "ScriptedPeer",
    "SimLookup",
    "SimNode",
    "check_byte_at_a_time",
    "check_flow_control",
    "check_garbage_is_fatal",
    "check_handshake",
    "check_peer_connections",
    "check_request_response",
    "deterministic_random",
    "fixed_key",
    "frame_bytes",
    "handshake_vector",
    "make_connection",
    "make_identity",
    "sample_frames",
]
