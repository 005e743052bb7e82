"""Ed25519 identities and peer ids (SPEC.md §3).

A peer id is the raw 32-byte Ed25519 public key, so it is self-certifying: anyone can check a
signature against it without a lookup.  Its text form is lowercase RFC 4648 base32 without
padding (52 characters).  The DHT node id is SHA-256 of the peer id (SPEC.md §12.1).

This module does no I/O: key files are turned into bytes and back by the caller.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = ["Identity", "PeerId"]

_PEER_ID_LEN = 32
_TEXT_LEN = 52


@dataclass(frozen=True, slots=True, order=True, repr=False)
class PeerId:
    """A peer's identity: its raw Ed25519 public key (SPEC.md §3.2)."""

    raw: bytes
    _key: Ed25519PublicKey = field(compare=False, repr=False, hash=False)

    @classmethod
    def from_bytes(cls, raw: bytes) -> PeerId:
        """Raises: ValueError: not a valid 32-byte Ed25519 public key."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != _PEER_ID_LEN:
            raise ValueError("a peer id is 32 bytes")
        raw = bytes(raw)
        return cls(raw, Ed25519PublicKey.from_public_bytes(raw))

    @classmethod
    def from_text(cls, text: str) -> PeerId:
        """Parse the 52-character base32 form.

        Raises:
            ValueError: not a peer id in text form.
        """
        if len(text) != _TEXT_LEN or text != text.lower():
            raise ValueError(f"a peer id is {_TEXT_LEN} lowercase base32 characters")
        try:
            raw = base64.b32decode(text.upper() + "====")
        except ValueError as exc:
            raise ValueError(f"bad peer id {text!r}") from exc
        return cls.from_bytes(raw)

    def to_text(self) -> str:
        return base64.b32encode(self.raw).decode().rstrip("=").lower()

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"PeerId({self.to_text()!r})"

    def short(self) -> str:
        return self.to_text()[:10]

    @property
    def node_id(self) -> int:
        """The 256-bit DHT node id: SHA-256 of the peer id (SPEC.md §12.1)."""
        return int.from_bytes(hashlib.sha256(self.raw).digest(), "big")

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Check an Ed25519 signature made by this peer."""
        if len(signature) != 64:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Identity:
    """A peer's Ed25519 private key."""

    __slots__ = ("_key", "peer_id")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.peer_id = PeerId.from_bytes(raw)

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Build an identity from a 32-byte RFC 8032 seed (for example from ``random_bytes``).

        Raises:
            ValueError: the seed is not 32 bytes.
        """
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def to_pem(self) -> bytes:
        """The key file format: PKCS#8 PEM, unencrypted (SPEC.md §3.3)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, data: bytes) -> Identity:
        """Raises: ValueError: not an unencrypted PKCS#8 Ed25519 key."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a key file: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the key file does not hold an Ed25519 key")
        return cls(key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id.short()}…)"
