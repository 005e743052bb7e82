"""Node ids, the XOR metric and contacts (SPEC.md §12.1).

A node id is SHA-256 of the peer id, read as a 256-bit big-endian unsigned integer
(libp2p kad-dht §Distance).  The distance between two ids is their XOR, compared as an
integer; the common prefix length (CPL) of two ids is the number of leading bits they share
and picks the routing-table bucket (Kademlia §2.2).

A ``Contact`` is what the DHT knows about a server: its peer id and the address it listens
on.  Hosts are IP literals so that the routing table can group them by prefix (§12.4); DNS
names are a shell concern and never enter the DHT.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from .._errors import MalformedMessage
from .._identity import PeerId

__all__ = [
    "ID_BITS",
    "Contact",
    "common_prefix_length",
    "distance",
    "key_to_id",
    "node_id_of",
]

#: Width of the id space: SHA-256 (SPEC.md §12.1).
ID_BITS = 256
_ID_BYTES = ID_BITS // 8
_MAX_HOST_LEN = 45  # the longest IPv6 text form, "ffff:...:255.255.255.255"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def node_id_of(peer_id: PeerId) -> int:
    """The node id of a peer: SHA-256 of its 32-byte peer id, big-endian (SPEC.md §12.1)."""
    return int.from_bytes(hashlib.sha256(peer_id.raw).digest(), "big")


def key_to_id(key: bytes) -> int:
    """The position of a 32-byte DHT key in the id space (the key is already a hash).

    Raises:
        ValueError: ``key`` is not 32 bytes.
    """
    if not isinstance(key, bytes) or len(key) != _ID_BYTES:
        raise ValueError("a DHT key is 32 bytes")
    return int.from_bytes(key, "big")


def distance(a: int, b: int) -> int:
    """The XOR distance between two node ids (Kademlia §2.1)."""
    return a ^ b


def common_prefix_length(a: int, b: int) -> int:
    """How many leading bits of two 256-bit ids agree (256 when they are equal)."""
    return ID_BITS - (a ^ b).bit_length()


def _parse_host(host: str) -> IPAddress:
    if not isinstance(host, str) or not 0 < len(host) <= _MAX_HOST_LEN or "%" in host:
        raise ValueError(f"a contact host is an IP literal, not {host!r}")
    return ipaddress.ip_address(host)  # ValueError for anything else


@dataclass(frozen=True, slots=True, kw_only=True)
class Contact:
    """A DHT server: peer id plus listening address (SPEC.md §12.2).

    Raises:
        TypeError: ``peer_id`` is not a ``PeerId``.
        ValueError: ``host`` is not an IP literal or ``port`` is not in 1..65535.
    """

    peer_id: PeerId
    host: str
    port: int
    node_id: int = field(init=False, repr=False, compare=False)
    ip: IPAddress = field(init=False, repr=False, compare=False)
    #: ``(4, address)`` or ``(6, address)`` as integers; IPv4-mapped IPv6 counts as IPv4.
    addr: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.peer_id, PeerId):
            raise TypeError("peer_id must be a PeerId")
        if type(self.port) is not int or not 0 < self.port <= 0xFFFF:
            raise ValueError(f"port {self.port!r} is not in 1..65535")
        ip = _parse_host(self.host)
        object.__setattr__(self, "ip", ip)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        object.__setattr__(self, "addr", (ip.version, int(ip)))
        object.__setattr__(self, "node_id", node_id_of(self.peer_id))

    def to_wire(self) -> list[Any]:
        """The wire form ``[peer_id bin32, host str, port int]`` (SPEC.md §12.2)."""
        return [self.peer_id.raw, self.host, self.port]

    @classmethod
    def from_wire(cls, obj: object) -> Contact:
        """Parse the wire form of a contact.

        Raises:
            MalformedMessage: ``obj`` is not ``[bin32, ip-literal str, port int]``.
        """
        if not isinstance(obj, list) or len(obj) != 3:
            raise MalformedMessage("a contact is [peer_id, host, port]")
        raw, host, port = obj
        try:
            return cls(peer_id=PeerId.from_bytes(raw), host=host, port=port)
        except (TypeError, ValueError) as exc:
            raise MalformedMessage(f"bad contact: {exc}") from exc
