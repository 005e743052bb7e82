"""Errors and the wire error-code registry (SPEC.md §11).

Errors have a direction, as in h11: ``LocalProtocolError`` is our caller's fault,
``RemoteProtocolError`` is the peer's.  Any other exception escaping the core is a bug.
Each exception class carries the wire code it maps to as a class attribute, the way
h2's exceptions carry their error codes.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "ErrorCode",
    "FlowControlError",
    "FrameTooLarge",
    "HandshakeFailed",
    "LocalProtocolError",
    "MalformedMessage",
    "PeerIdMismatch",
    "ProtocolError",
    "RemoteProtocolError",
]


class ErrorCode(enum.IntEnum):
    """Wire error codes (SPEC.md §11). Codes are never reused; new codes are appended."""

    # Connection and stream level (§8, §9)
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 4
    FRAME_TOO_LARGE = 5
    MALFORMED = 6
    HANDSHAKE_FAILED = 7
    REFUSED_STREAM = 8
    CANCEL = 9
    IDLE_TIMEOUT = 10
    UNKNOWN_METHOD = 11
    BAD_REQUEST = 12
    OVERLOADED = 13
    MESSAGE_TOO_LARGE = 14
    # DHT (§12)
    RECORD_INVALID = 20
    RECORD_BAD_SIGNATURE = 21
    RECORD_SEQ_TOO_LOW = 22
    RECORD_EXPIRED = 23
    RECORD_TOO_LARGE = 24
    RECORD_FOREIGN_SUBKEY = 25
    QUOTA_EXCEEDED = 26
    # Inference (§13)
    UNKNOWN_MODEL = 30
    WRONG_SPAN = 31
    BAD_TENSOR = 32
    TOO_LONG = 33
    OUT_OF_CACHE = 34
    TOO_MANY_SESSIONS = 35
    UNKNOWN_SESSION = 36


class ProtocolError(Exception):
    """Base class. Never raised directly."""

    code: ClassVar[ErrorCode] = ErrorCode.PROTOCOL_ERROR

    def __init__(self, msg: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        if code is not None:
            self.code = code  # type: ignore[misc]


class LocalProtocolError(ProtocolError):
    """Our caller asked for something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol. Raised only while processing received bytes."""


class HandshakeFailed(RemoteProtocolError):
    """The Noise handshake or the identity binding failed (SPEC.md §6)."""

    code = ErrorCode.HANDSHAKE_FAILED


class PeerIdMismatch(HandshakeFailed):
    """The authenticated peer is not the one we dialled (SPEC.md §6.5)."""


class FrameTooLarge(RemoteProtocolError):
    """A frame's declared length exceeds our limit (SPEC.md §7.2)."""

    code = ErrorCode.FRAME_TOO_LARGE


class MalformedMessage(RemoteProtocolError):
    """A frame's msgpack body violates the strict profile or the schema (SPEC.md §5)."""

    code = ErrorCode.MALFORMED


class FlowControlError(RemoteProtocolError):
    """The peer sent more than the credit we granted (SPEC.md §8.5)."""

    code = ErrorCode.FLOW_CONTROL_ERROR
