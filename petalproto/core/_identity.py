"""Ed25519 identities and peer ids (SPEC.md §3).

A peer id is the raw 32-byte Ed25519 public key, so it is self-certifying: anyone can check a
signature against it without a lookup.  Its text form is lowercase RFC 4648 base32 without
padding (52 characters).  The DHT node id is SHA-256 of the peer id (SPEC.md §12.1).

This module does no I/O: key files are turned into bytes and back by the caller.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = ["Identity", "PeerId"]

_PEER_ID_LEN = 32
_TEXT_LEN = 52
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")  # RFC 4648 §6, lowercased

# RFC 8032 §5.1: the field prime and the curve constant d of edwards25519.
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
# The y coordinates of the eight points of order dividing 8 (orders 1, 2, 4 and 8), the
# same set as libsodium's ``ge25519_has_small_order`` blocklist.  A key there verifies
# signatures that nobody made (the all-zero key accepts the all-zero signature).
_Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
_SMALL_ORDER_Y = frozenset({0, 1, _P - 1, _Y8, _P - _Y8})
# RFC 8032 §5.1: the order of the prime-order subgroup; a signature's S must be below it.
_L = 2**252 + 27742317777372353535851937790883648493


def _legendre(a: int) -> int:
    """The Legendre symbol (a / p) for 0 < a < p, by the binary Jacobi-symbol algorithm
    (quadratic reciprocity), several times faster in Python than Euler's criterion."""
    n, result = _P, 1
    while a:
        zeros = (a & -a).bit_length() - 1
        a >>= zeros
        if zeros & 1 and n % 8 in (3, 5):
            result = -result
        if a % 4 == 3 and n % 4 == 3:
            result = -result
        a, n = n % a, a
    return result


@functools.lru_cache(maxsize=4096)
def _is_public_key(raw: bytes) -> bool:
    """A valid public key (SPEC.md §3.3): RFC 8032 §5.1.3 decoding with y < p, where
    x^2 = (y^2 - 1) / (d y^2 + 1) has a root, and no point of small order.

    The eight points of order dividing 8 have exactly the five y coordinates of
    ``_SMALL_ORDER_Y`` (the identity (0, 1), (0, -1), (±sqrt(-1), 0) and the four points of
    order 8 at y = ±_Y8), so refusing those y refuses all eight with either sign bit, and
    ``y >= p`` refuses their non-canonical encodings (y = p, p + 1).  Only y = ±1 make
    the numerator zero, and both are small, so the sign bit needs no check: every x != 0
    has both signs.  The result is cached because the DHT sees the same peer ids again
    and again.
    """
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _P or y in _SMALL_ORDER_Y:
        return False
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    # u / v is a square exactly when u * v is (v^2 is one); neither is zero here.
    return _legendre(u * v % _P) == 1


def _is_signature(signature: bytes) -> bool:
    """A valid signature encoding (SPEC.md §3.3): 64 bytes R ‖ S with S < L and R a valid
    public key encoding (canonical, on the curve, not of small order).

    OpenSSL already refuses S >= L; a small-order R it accepts, and with R the identity
    point and S = H(R ‖ A ‖ M)·a the holder of a key can make a second signature of any
    message, so R is checked here.
    """
    if len(signature) != 64 or int.from_bytes(signature[32:], "little") >= _L:
        return False
    return _is_public_key(signature[:32])


@dataclass(frozen=True, slots=True, order=True, repr=False)
class PeerId:
    """A peer's identity: its raw Ed25519 public key (SPEC.md §3.2)."""

    raw: bytes
    _key: Ed25519PublicKey = field(compare=False, repr=False, hash=False)

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray) -> PeerId:
        """Build a peer id from the raw 32-byte Ed25519 public key (SPEC.md §3.2, §3.3).

        Raises:
            ValueError: not 32 bytes, not the encoding of a curve point (RFC 8032 §5.1.3),
                or a point of small order.
        """
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != _PEER_ID_LEN:
            raise ValueError("a peer id is 32 bytes")
        raw = bytes(raw)
        if not _is_public_key(raw):
            raise ValueError("not a valid Ed25519 public key")
        return cls(raw, Ed25519PublicKey.from_public_bytes(raw))

    @classmethod
    def from_text(cls, text: str) -> PeerId:
        """Parse the 52-character base32 form.

        Raises:
            ValueError: not a peer id in text form.
        """
        if len(text) != _TEXT_LEN or not _ALPHABET.issuperset(text):
            raise ValueError(f"a peer id is {_TEXT_LEN} lowercase base32 characters")
        peer = cls.from_bytes(base64.b32decode(text.upper() + "===="))
        # 52 characters carry 260 bits for 256: the spare low bits of the last character
        # must be zero, so that every peer id has exactly one text form.
        if peer.to_text() != text:
            raise ValueError(f"{text!r} is not the canonical text of a peer id")
        return peer

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
        """Check an Ed25519 signature made by this peer (SPEC.md §3.3).

        The signature must be a valid encoding (``S < L``, ``R`` canonical and not of
        small order); the equation is then RFC 8032's, cofactorless, as OpenSSL checks it.
        """
        if not _is_signature(signature):
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
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not a key file: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the key file does not hold an Ed25519 key")
        return cls(key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id.short()}…)"
