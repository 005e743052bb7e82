"""Errors raised by the reference peer's model code (SPEC.md §13).

Each class carries the wire error code it maps to (``petalproto.core._errors.ErrorCode``), so
the RPC layer can answer a failed request without a lookup table of its own. All of them are
the caller's fault (bad input, an exhausted budget); a bug in our own model code raises
something else.
"""

from __future__ import annotations

from typing import ClassVar

from petalproto.core._errors import ErrorCode

__all__ = [
    "BadTensor",
    "OutOfCache",
    "PeerError",
    "SessionClosed",
    "TooLong",
    "TooManySessions",
    "WrongSpan",
]


class PeerError(Exception):
    """Base class of the model-side errors. Never raised directly."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR


class BadTensor(PeerError, ValueError):
    """A tensor has a forbidden dtype, a malformed encoding, or the wrong shape."""

    code = ErrorCode.BAD_TENSOR


class WrongSpan(PeerError, ValueError):
    """The request names blocks this peer does not serve, or an unknown model."""

    code = ErrorCode.WRONG_SPAN


class TooLong(PeerError, ValueError):
    """A step would take a session past the length it was opened with."""

    code = ErrorCode.TOO_LONG


class OutOfCache(PeerError):
    """Opening the session would exceed the span's attention-cache budget."""

    code = ErrorCode.OUT_OF_CACHE


class TooManySessions(PeerError):
    """The span already holds as many open sessions as it allows."""

    code = ErrorCode.TOO_MANY_SESSIONS


class SessionClosed(PeerError):
    """The session was closed, or broken by an earlier failed step."""

    code = ErrorCode.UNKNOWN_SESSION
