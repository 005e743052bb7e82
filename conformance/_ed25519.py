"""Edwards25519 arithmetic for forging the signatures SPEC.md §3.3 forbids.

A plain, slow, pure-Python implementation of RFC 8032 §5.1 (affine coordinates), written
for the conformance cases and not shared with ``petalproto.core``: it makes the keys and
signatures that a permissive verifier (cofactorless RFC 8032 as OpenSSL implements it, with
no check of small-order points) accepts and a conforming peer must refuse:

* ``SMALL_ORDER_POINTS``: the canonical encodings of the eight points of order dividing 8;
* ``forge_small_order``: for a small-order key A, a signature (R small order, S = 0) of a
  message that the equation [S]B = R + [k]A holds for;
* ``identity_r_signature``: for a real key, a second signature of any message with R the
  identity point and S = k·a (the key holder can make it; the verification equation holds);
* ``non_canonical_s``: a valid signature with S + L in place of S.
"""

from __future__ import annotations

import hashlib

from petalproto.core import Identity

__all__ = [
    "SMALL_ORDER_POINTS",
    "forge_small_order",
    "identity_r_signature",
    "non_canonical_s",
]

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def add(a: Point, b: Point) -> Point:
    """Point addition on -x^2 + y^2 = 1 + d x^2 y^2 (RFC 8032 §5.1.4), affine."""
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x = (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P
    y = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return (x, y)


def mul(k: int, a: Point) -> Point:
    result = IDENTITY
    while k:
        if k & 1:
            result = add(result, a)
        a = add(a, a)
        k >>= 1
    return result


def decode(raw: bytes) -> Point | None:
    """RFC 8032 §5.1.3, or None when ``raw`` is no canonical point encoding."""
    n = int.from_bytes(raw, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == -u % P:
        x = x * _SQRT_M1 % P
    elif v * x * x % P != u:
        return None
    if x == 0 and sign:
        return None
    return (P - x if x & 1 != sign else x, y)


def encode(point: Point) -> bytes:
    x, y = point
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _order8_point() -> Point:
    y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
    point = decode(y8.to_bytes(32, "little"))
    assert point is not None
    return point


#: The eight points of order dividing 8: the multiples of a point of order 8.
SMALL_ORDER_POINTS: tuple[bytes, ...] = tuple(encode(mul(i, _order8_point())) for i in range(8))


def _challenge(r: bytes, a: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % L


def forge_small_order(key: bytes, message: bytes) -> bytes | None:
    """A signature by nobody that the cofactorless equation accepts for the small-order
    ``key`` over ``message``: S = 0 and R = -[k]A, or None when no R of small order fits
    (then try another message).  For the identity key, R = identity always fits."""
    a = decode(key)
    assert a is not None
    for r_raw in SMALL_ORDER_POINTS:
        r = decode(r_raw)
        assert r is not None
        if add(r, mul(_challenge(r_raw, key, message), a)) == IDENTITY:
            return r_raw + bytes(32)
    return None


def _scalar(identity: Identity) -> int:
    digest = hashlib.sha512(identity.seed()).digest()
    a = int.from_bytes(digest[:32], "little")
    return (a & ((1 << 254) - 8)) | (1 << 254)  # RFC 8032 §5.1.5 clamping


def identity_r_signature(identity: Identity, message: bytes) -> bytes:
    """A signature by ``identity`` whose R is the identity point: [S]B = [k·a]B = [k]A."""
    r_raw = encode(IDENTITY)
    k = _challenge(r_raw, identity.peer_id.raw, message)
    return r_raw + (k * _scalar(identity) % L).to_bytes(32, "little")


def non_canonical_s(signature: bytes) -> bytes:
    """``signature`` with S + L for S: the same equation, an encoding RFC 8032 refuses."""
    s = int.from_bytes(signature[32:], "little")
    return signature[:32] + (s + L).to_bytes(32, "little")
