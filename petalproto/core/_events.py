"""Events: what a connection tells its user, and what its user asks it to send.

The same class serves both directions where a wire message is involved (h11, wsproto):
``conn.send(Message(stream_id=1, body={...}))`` and ``Message`` events out of
``receive_data``.  Local happenings are named in the past tense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ._errors import ErrorCode, LocalProtocolError
from ._identity import PeerId

__all__ = [
    "AGENT",
    "ConnectionClosed",
    "EndStream",
    "Event",
    "GoAway",
    "HandshakeCompleted",
    "Message",
    "Open",
    "Ping",
    "Pong",
    "Reset",
    "Settings",
]

#: SPEC.md §6.4 and §10.3: the one name this implementation gives itself, in the handshake
#: settings and in the ``ping`` answer.
AGENT = f"petalproto/{__version__}"

_U32 = 0xFFFFFFFF
_MAX_METHOD = 64
_MAX_REASON = 256


def _check_stream_id(stream_id: int, *, allow_zero: bool = False) -> None:
    if type(stream_id) is not int or not (0 if allow_zero else 1) <= stream_id <= _U32:
        raise LocalProtocolError(f"bad stream id {stream_id!r}")


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or len(reason.encode()) > _MAX_REASON:
        raise LocalProtocolError("reason must be a str of at most 256 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What a peer announces in its handshake payload (SPEC.md §6.4).

    Attributes:
        max_frame: the largest frame body its receiver accepts, in bytes.
        stream_window: the credit it grants each new stream; also the largest message.
        connection_window: the credit it grants the whole connection.
        max_streams: how many concurrent streams the other side may open.
        agent: free-form implementation name, for logs only.
    """

    max_frame: int = 1 << 20
    stream_window: int = 8 << 20
    connection_window: int = 32 << 20
    max_streams: int = 128
    agent: str = AGENT

    def __post_init__(self) -> None:
        limits = {
            "max_frame": (1 << 16, 1 << 26),
            "stream_window": (1 << 16, (1 << 31) - 1),
            "connection_window": (1 << 16, (1 << 31) - 1),
            "max_streams": (1, 1 << 16),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"settings.{name} must be an int in [{low}, {high}]")
        if self.connection_window < self.stream_window:
            raise ValueError("settings.connection_window must be at least stream_window")
        if not isinstance(self.agent, str) or len(self.agent.encode()) > 64:
            raise ValueError("settings.agent must be a str of at most 64 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of everything ``receive_data`` returns or ``send`` takes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeCompleted(Event):
    """The peer proved its identity; streams may flow (SPEC.md §6.6)."""

    peer_id: PeerId
    settings: Settings
    handshake_hash: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Open(Event):
    """A new stream, opened to call ``method`` (SPEC.md §8.3)."""

    stream_id: int
    method: str

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        if not isinstance(self.method, str) or not 0 < len(self.method.encode()) <= _MAX_METHOD:
            raise LocalProtocolError("method must be a non-empty str of at most 64 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Message(Event):
    """One application message on a stream (SPEC.md §8.4).

    ``size`` is set on received messages: the flow-control bytes it used, which the
    receiver hands back with ``Connection.acknowledge`` once it has consumed the message.
    """

    stream_id: int
    body: Any
    end_stream: bool = False
    size: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class EndStream(Event):
    """The sender will send nothing more on this stream (half-close)."""

    stream_id: int

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reset(Event):
    """A stream was abandoned, with a reason (SPEC.md §8.6)."""

    stream_id: int
    code: ErrorCode
    reason: str = ""

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        _check_reason(self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Event):
    """A liveness probe; the core answers it by itself (SPEC.md §9.1)."""

    opaque: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.opaque, bytes) or len(self.opaque) != 8:
            raise LocalProtocolError("ping data is 8 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(Event):
    """The answer to a ``Ping``."""

    opaque: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.opaque, bytes) or len(self.opaque) != 8:
            raise LocalProtocolError("pong data is 8 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class GoAway(Event):
    """No new streams; with an error code, the connection is over (SPEC.md §9.2)."""

    last_stream_id: int = 0
    code: ErrorCode = ErrorCode.NO_ERROR
    reason: str = ""

    def __post_init__(self) -> None:
        _check_stream_id(self.last_stream_id, allow_zero=True)
        _check_reason(self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """The connection is over; ``by_peer`` says who ended it."""

    code: ErrorCode
    reason: str = ""
    by_peer: bool = False
