"""petalproto.core: the sans-IO protocol core (SPEC.md).

Bytes in, events out; events in, bytes out.  Nothing here touches a socket, a clock or a
random source: time and randomness are arguments.
"""

from __future__ import annotations

from ._address import Address, join_host_port, split_host_port
from ._admission import (
    Activity,
    Admission,
    Admitted,
    Limits,
    Promoted,
    RefusalReason,
    Refused,
    source_of,
)
from ._connection import Config, Connection, ConnState, Role
from ._errors import (
    ErrorCode,
    FlowControlError,
    FrameTooLarge,
    HandshakeFailed,
    LocalProtocolError,
    MalformedMessage,
    PeerIdMismatch,
    ProtocolError,
    RemoteProtocolError,
)
from ._events import (
    ConnectionClosed,
    EndStream,
    Event,
    GoAway,
    HandshakeCompleted,
    Message,
    Open,
    Ping,
    Pong,
    Reset,
    Settings,
)
from ._handshake import MAX_PAYLOAD, PROLOGUE, PROTOCOL_NAME, SIG_PREFIX
from ._identity import Identity, PeerId
from ._msgpack import MAX_DEPTH, decode_strict, encode, encode_canonical

__all__ = [
    "MAX_DEPTH",
    "MAX_PAYLOAD",
    "PROLOGUE",
    "PROTOCOL_NAME",
    "SIG_PREFIX",
    "Activity",
    "Address",
    "Admission",
    "Admitted",
    "Config",
    "ConnState",
    "Connection",
    "ConnectionClosed",
    "EndStream",
    "ErrorCode",
    "Event",
    "FlowControlError",
    "FrameTooLarge",
    "GoAway",
    "HandshakeCompleted",
    "HandshakeFailed",
    "Identity",
    "Limits",
    "LocalProtocolError",
    "MalformedMessage",
    "Message",
    "Open",
    "PeerId",
    "PeerIdMismatch",
    "Ping",
    "Pong",
    "Promoted",
    "ProtocolError",
    "RefusalReason",
    "Refused",
    "RemoteProtocolError",
    "Reset",
    "Role",
    "Settings",
    "decode_strict",
    "encode",
    "encode_canonical",
    "join_host_port",
    "source_of",
    "split_host_port",
]
