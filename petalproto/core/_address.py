"""Dialable addresses: ``PEERID@HOST:PORT`` (SPEC.md §4).

IPv6 hosts are written in brackets (``PEERID@[::1]:4001``), as in URLs.  The peer id part
lets a dialer check that it reached the peer it meant (SPEC.md §6.6).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._identity import PeerId

__all__ = ["Address", "join_host_port", "split_host_port"]

_MAX_HOST = 253


@dataclass(frozen=True, slots=True)
class Address:
    """Where a peer listens, and who it is.

    Raises:
        ValueError: an empty or over-long host, one with whitespace, ``@``, ``/`` or
            brackets, or a port outside 1..65535.
    """

    peer_id: PeerId
    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not 0 < len(self.host) <= _MAX_HOST:
            raise ValueError("host must be a non-empty str of at most 253 characters")
        if any(c.isspace() or c in "@/[]" for c in self.host):
            raise ValueError(f"bad host {self.host!r}")
        if type(self.port) is not int or not 0 < self.port < 65536:
            raise ValueError("port must be in 1..65535")

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``PEERID@HOST:PORT``.

        Raises:
            ValueError: the text is not an address.
        """
        peer, sep, rest = text.strip().partition("@")
        if not sep:
            raise ValueError(f"address {text!r} lacks 'PEERID@'")
        host, port = split_host_port(rest)
        return cls(PeerId.from_text(peer), host, port)

    def host_port(self) -> str:
        """Returns: ``HOST:PORT``, with an IPv6 host in brackets."""
        return join_host_port(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.peer_id}@{self.host_port()}"


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT``.

    Args:
        text: the address; an IPv6 host must be in brackets.

    Returns:
        The host (without brackets) and the port, which may be 0 here (a listener's "any").

    Raises:
        ValueError: no port, an empty host, a port that is not ASCII decimal digits, or an
            IPv6 host without brackets.
    """
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"IPv6 host must be in brackets: {text!r}")
    # isdigit() alone would take non-ASCII digits such as "٤٠٠١", which int() accepts.
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """The inverse of ``split_host_port``: brackets around a host that holds a colon."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
