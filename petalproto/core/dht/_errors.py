"""Errors of the DHT (SPEC.md §12.9).

A DHT server answers a bad request with an error code and a reason instead of a response
body.  ``DhtRequestError`` carries both; ``DhtNode.handle_request`` raises it and the shell
turns it into the RPC layer's error response.  It is a ``RemoteProtocolError`` because the
peer that sent the request is at fault, but it never closes the connection: one bad request
costs the sender one error response and nothing else.
"""

from __future__ import annotations

from .._errors import ErrorCode, RemoteProtocolError

__all__ = ["DhtRequestError", "RecordRejected"]


class DhtRequestError(RemoteProtocolError):
    """A DHT request that the server refuses, with the wire code to answer it with.

    Args:
        code: the ``ErrorCode`` for the error response (SPEC.md §12.9).
        reason: a short human-readable text for the error response.
    """

    code = ErrorCode.BAD_REQUEST

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason, code=code)
        self.reason = reason


class RecordRejected(DhtRequestError):
    """A signed record failed validation or the store refused it (SPEC.md §12.5, §12.6).

    ``code`` is one of the ``RECORD_*`` codes or ``QUOTA_EXCEEDED``.
    """
