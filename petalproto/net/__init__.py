"""petalproto.net: the trio shell around the sans-IO core."""

from __future__ import annotations

from petalproto.core._events import AGENT

from ._dht import DhtPutError, DhtService
from ._node import Node
from ._peer import PeerConnection, StreamHandler
from ._pool import ConnectionPool
from ._rpc import CallContext, Router, RpcError, call
from ._stream import Stream, StreamReset
from ._transport import connect, open_connection, serve_peers

__all__ = [
    "AGENT",
    "CallContext",
    "ConnectionPool",
    "DhtPutError",
    "DhtService",
    "Node",
    "PeerConnection",
    "Router",
    "RpcError",
    "Stream",
    "StreamHandler",
    "StreamReset",
    "call",
    "connect",
    "open_connection",
    "serve_peers",
]
