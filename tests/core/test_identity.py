"""Identities, peer ids and their text form (SPEC.md §3), and addresses (SPEC.md §4)."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given
from hypothesis import strategies as st

from petalproto.core import Address, Identity, PeerId, join_host_port, split_host_port
from petalproto.testing._pairs import make_identity

# RFC 8032 §7.1, TEST 1: secret key, public key and the signature of the empty message.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39"
    "701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

P = 2**255 - 19
D = -121665 * pow(121666, -1, P) % P
# y coordinates of the points of order 1, 2, 4 and 8 (libsodium's blocklist).
SMALL_ORDER_Y = (
    0,
    1,
    P - 1,
    2707385501144840649318225287225658788936804267575313519463743609750303402022,
    55188659117513257062467267217118295137698188065244968500265048394206261417927,
)
ALICE = make_identity("alice")
BOB = make_identity("bob")
seeds = st.binary(min_size=32, max_size=32)


def _encode(y: int, sign: int = 0) -> bytes:
    return (y | sign << 255).to_bytes(32, "little")


def _is_square(n: int) -> bool:
    return pow(n, (P - 1) // 2, P) == 1


# -- identities -------------------------------------------------------------------------------


def test_rfc8032_vector() -> None:
    identity = Identity.from_seed(RFC_SEED)
    assert identity.peer_id.raw == RFC_PUBLIC
    assert identity.seed() == RFC_SEED
    assert identity.sign(b"") == RFC_SIG
    assert identity.peer_id.verify(RFC_SIG, b"")


def test_verify_rejects_what_the_peer_did_not_sign() -> None:
    sig = ALICE.sign(b"message")
    assert ALICE.peer_id.verify(sig, b"message")
    assert not ALICE.peer_id.verify(sig, b"messagE")
    assert not BOB.peer_id.verify(sig, b"message")
    assert not ALICE.peer_id.verify(sig[:63], b"message")
    assert not ALICE.peer_id.verify(sig + b"\x00", b"message")
    assert not ALICE.peer_id.verify(bytes(64), b"message")


@pytest.mark.parametrize("size", [0, 31, 33])
def test_seed_must_be_32_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Identity.from_seed(bytes(size))


def test_pem_round_trip() -> None:
    pem = ALICE.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = Identity.from_pem(pem)
    assert loaded.peer_id == ALICE.peer_id
    assert loaded.seed() == ALICE.seed()


def _pkcs8(oid: bytes) -> bytes:
    """A PKCS#8 PrivateKeyInfo for an algorithm nobody implements (OID ``oid``)."""
    algorithm = b"\x30" + bytes([len(oid) + 2]) + b"\x06" + bytes([len(oid)]) + oid
    body = b"\x02\x01\x00" + algorithm + b"\x04\x02\x04\x00"
    der = b"\x30" + bytes([len(body)]) + body
    return (
        b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(der) + b"-----END PRIVATE KEY-----\n"
    )


ENCRYPTED_PEM = Ed25519PrivateKey.from_private_bytes(bytes(32)).private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"secret"),
)
EC_PEM = generate_private_key(SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a key file"),
        (b"not a key", "not a key file"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a key file"),
        (ENCRYPTED_PEM, "not a key file"),  # cryptography: TypeError, password needed
        (_pkcs8(b"\x2a\x03\x04"), "not a key file"),  # cryptography: UnsupportedAlgorithm
        (EC_PEM, "does not hold an Ed25519 key"),
    ],
)
def test_from_pem_rejects(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Identity.from_pem(data)


def test_identity_repr_shows_only_the_peer_id() -> None:
    assert repr(ALICE) == f"Identity({ALICE.peer_id.short()}…)"
    assert ALICE.seed().hex() not in repr(ALICE)


# -- peer ids ---------------------------------------------------------------------------------


@given(seeds)
def test_text_form_round_trips(seed: bytes) -> None:
    peer = Identity.from_seed(seed).peer_id
    text = peer.to_text()
    assert len(text) == 52
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert text == base64.b32encode(peer.raw).decode().rstrip("=").lower()
    assert PeerId.from_text(text) == peer
    assert str(peer) == text
    assert repr(peer) == f"PeerId({text!r})"
    assert peer.short() == text[:10]
    assert PeerId.from_bytes(peer.raw) == peer
    assert PeerId.from_bytes(bytearray(peer.raw)) == peer


def test_node_id_is_sha256_of_the_peer_id() -> None:
    assert ALICE.peer_id.node_id == int.from_bytes(
        hashlib.sha256(ALICE.peer_id.raw).digest(), "big"
    )
    assert 0 <= ALICE.peer_id.node_id < 1 << 256


def test_peer_ids_compare_by_bytes() -> None:
    again = PeerId.from_bytes(ALICE.peer_id.raw)
    assert again == ALICE.peer_id
    assert hash(again) == hash(ALICE.peer_id)
    assert len({again, ALICE.peer_id, BOB.peer_id}) == 2
    assert sorted([ALICE.peer_id, BOB.peer_id]) == sorted(
        [ALICE.peer_id, BOB.peer_id], key=lambda p: p.raw
    )


def _bad_texts() -> list[str]:
    good = ALICE.peer_id.to_text()
    return [
        "",
        good[:-1],
        good + "a",
        good.upper(),
        good[:-1] + "A",
        good[:-1] + "0",  # 0, 1, 8 and 9 are not in the base32 alphabet
        good[:-1] + "1",
        good[:-1] + "8",
        good[:-1] + "9",
        good[:-1] + "=",
        good[:-1] + "é",
        good[:-1] + " ",
    ]


@pytest.mark.parametrize("text", _bad_texts())
def test_from_text_rejects_length_and_alphabet(text: str) -> None:
    with pytest.raises(ValueError, match="lowercase base32"):
        PeerId.from_text(text)


def test_from_text_rejects_non_canonical_text() -> None:
    # The last of the 52 characters carries one bit of the key and four spare bits.
    text = ALICE.peer_id.to_text()
    assert text[-1] in "aq"
    spare = "b" if text[-1] == "a" else "r"
    assert base64.b32decode((text[:-1] + spare).upper() + "====") == ALICE.peer_id.raw
    with pytest.raises(ValueError, match="canonical"):
        PeerId.from_text(text[:-1] + spare)


def test_from_text_rejects_an_invalid_key() -> None:
    text = base64.b32encode(_encode(0)).decode().rstrip("=").lower()
    with pytest.raises(ValueError, match="not a valid Ed25519 public key"):
        PeerId.from_text(text)


@pytest.mark.parametrize("raw", [b"", bytes(31), bytes(33), "a" * 32, None])
def test_from_bytes_rejects_lengths_and_types(raw: object) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PeerId.from_bytes(raw)  # type: ignore[arg-type]


def _point_order_divides_8(y: int) -> bool:
    """Independent check of the small-order list: [8]P is the neutral element (0, 1)."""
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x2 = u * pow(v, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if x * x % P != x2:
        x = x * pow(2, (P - 1) // 4, P) % P
    assert x * x % P == x2
    for _ in range(3):  # doubling on -x^2 + y^2 = 1 + d x^2 y^2 (RFC 8032 §5.1.4)
        t = D * x * x * y * y % P
        x, y = 2 * x * y * pow(1 + t, -1, P) % P, (y * y + x * x) * pow(1 - t, -1, P) % P
    return (x, y) == (0, 1)


@pytest.mark.parametrize("y", SMALL_ORDER_Y)
@pytest.mark.parametrize("sign", [0, 1])
def test_from_bytes_rejects_small_order_points(y: int, sign: int) -> None:
    assert _point_order_divides_8(y)
    with pytest.raises(ValueError, match="not a valid Ed25519 public key"):
        PeerId.from_bytes(_encode(y, sign))


def test_small_order_key_would_accept_forged_signatures() -> None:
    # Why small-order keys are refused: the all-zero key "verifies" the all-zero signature
    # over about a quarter of all messages.
    key = Ed25519PublicKey.from_public_bytes(bytes(32))
    forged = 0
    for n in range(32):
        with contextlib.suppress(InvalidSignature):
            key.verify(bytes(64), b"message %d" % n)
            forged += 1
    assert forged > 0


@pytest.mark.parametrize("y", [P, P + 1, P + 2, 2**255 - 1])
def test_from_bytes_rejects_non_canonical_y(y: int) -> None:
    with pytest.raises(ValueError, match="not a valid Ed25519 public key"):
        PeerId.from_bytes(_encode(y))


def test_from_bytes_rejects_points_off_the_curve() -> None:
    off = [y for y in range(2, 60) if not _is_square((y * y - 1) * pow(D * y * y + 1, -1, P))]
    on = [y for y in range(2, 60) if y not in off]
    assert off and on
    for y in off:
        with pytest.raises(ValueError, match="not a valid Ed25519 public key"):
            PeerId.from_bytes(_encode(y))
    for y in on:
        assert PeerId.from_bytes(_encode(y, 1)).raw == _encode(y, 1)


# -- addresses --------------------------------------------------------------------------------

PID = ALICE.peer_id.to_text()


@pytest.mark.parametrize(
    ("text", "host", "port", "formatted"),
    [
        (f"{PID}@example.org:4001", "example.org", 4001, None),
        (f"{PID}@192.0.2.1:1", "192.0.2.1", 1, None),
        (f"{PID}@[::1]:65535", "::1", 65535, None),
        (f"{PID}@[2001:db8::7]:4001", "2001:db8::7", 4001, None),
        (f"  {PID}@localhost:80\n", "localhost", 80, f"{PID}@localhost:80"),
    ],
)
def test_address_parse_and_format(text: str, host: str, port: int, formatted: str | None) -> None:
    address = Address.parse(text)
    assert address == Address(ALICE.peer_id, host, port)
    assert str(address) == (formatted or text)
    assert Address.parse(str(address)) == address
    assert address.host_port() == str(address).partition("@")[2]


@pytest.mark.parametrize(
    "text",
    [
        "example.org:4001",  # no peer id
        f"{PID}example.org:4001",
        f"{PID}@example.org",  # no port
        f"{PID}@example.org:",
        f"{PID}@:4001",  # no host
        f"{PID}@[]:4001",
        f"{PID}@[::1]",
        f"{PID}@[::1:4001",
        f"{PID}@::1:4001",  # IPv6 without brackets
        f"{PID}@example.org:0",
        f"{PID}@example.org:65536",
        f"{PID}@example.org:-1",
        f"{PID}@example.org:+1",
        f"{PID}@example.org:40 01",
        f"{PID}@example.org:٤٠٠١",  # Arabic-Indic digits: isdigit() but not ASCII
        f"{PID}@exa mple.org:4001",
        f"{PID}@a/b:4001",
        f"{PID}@a@b:4001",
        f"{PID}@[a]b]:4001",
        f"{PID}@{'a' * 254}:4001",
        f"{PID.upper()}@example.org:4001",
        f"{PID[:-1]}@example.org:4001",
    ],
)
def test_address_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Address.parse(text)


@pytest.mark.parametrize(
    ("host", "port"),
    [("", 1), ("a" * 254, 1), ("a b", 1), ("[::1]", 1), ("h", 0), ("h", 65536), ("h", True)],
)
def test_address_constructor_rejects(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        Address(ALICE.peer_id, host, port)


def test_address_constructor_rejects_a_non_str_host() -> None:
    with pytest.raises(ValueError):
        Address(ALICE.peer_id, b"host", 1)  # type: ignore[arg-type]


def test_split_and_join_host_port() -> None:
    assert split_host_port("h:0") == ("h", 0)  # listeners may ask for any port
    assert split_host_port("[fe80::1%eth0]:7") == ("fe80::1%eth0", 7)
    assert join_host_port("fe80::1%eth0", 7) == "[fe80::1%eth0]:7"
    assert join_host_port("h", 7) == "h:7"
    with pytest.raises(ValueError, match="brackets"):
        split_host_port("::1:7")


# -- valid keys and signatures: all eight small-order points (SPEC.md §3.3) --------------------


def test_the_small_order_list_is_exactly_the_eight_points() -> None:
    from conformance._ed25519 import SMALL_ORDER_POINTS, decode, mul

    assert len(set(SMALL_ORDER_POINTS)) == 8
    ys = {int.from_bytes(raw, "little") & ((1 << 255) - 1) for raw in SMALL_ORDER_POINTS}
    assert ys == set(SMALL_ORDER_Y)
    for raw in SMALL_ORDER_POINTS:
        point = decode(raw)
        assert point is not None and mul(8, point) == (0, 1)


def _small_order_encodings() -> list[bytes]:
    """Every 32-byte string that decodes, leniently (y mod p, any sign), to a small-order
    point: the eight canonical encodings, the other sign bit, and y + p where that fits."""
    out = set()
    for y in SMALL_ORDER_Y:
        for sign in (0, 1):
            out.add(_encode(y, sign))
            if y + P < 1 << 255:
                out.add(_encode(y + P, sign))
    return sorted(out)


@pytest.mark.parametrize("raw", _small_order_encodings(), ids=lambda raw: raw.hex()[:8])
def test_every_encoding_of_a_small_order_point_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a valid Ed25519 public key"):
        PeerId.from_bytes(raw)


def test_the_small_order_keys_forge_signatures_that_openssl_accepts() -> None:
    from conformance._ed25519 import SMALL_ORDER_POINTS, forge_small_order

    forged = 0
    for key in SMALL_ORDER_POINTS:
        for n in range(16):
            message = b"message %d" % n
            signature = forge_small_order(key, message)
            if signature is not None:
                Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
                forged += 1
                break
    assert forged == 8


SIG_MESSAGE = b"petalproto test message"


def test_verify_refuses_a_non_canonical_s() -> None:
    from conformance._ed25519 import non_canonical_s

    signature = ALICE.sign(SIG_MESSAGE)
    assert ALICE.peer_id.verify(signature, SIG_MESSAGE)
    assert not ALICE.peer_id.verify(non_canonical_s(signature), SIG_MESSAGE)


def test_verify_refuses_an_identity_r_that_openssl_accepts() -> None:
    from conformance._ed25519 import identity_r_signature

    signature = identity_r_signature(ALICE, SIG_MESSAGE)
    Ed25519PublicKey.from_public_bytes(ALICE.peer_id.raw).verify(signature, SIG_MESSAGE)
    assert not ALICE.peer_id.verify(signature, SIG_MESSAGE)


@pytest.mark.parametrize("r", _small_order_encodings(), ids=lambda raw: raw.hex()[:8])
def test_verify_refuses_every_small_order_r(r: bytes) -> None:
    signature = ALICE.sign(SIG_MESSAGE)
    assert not ALICE.peer_id.verify(r + signature[32:], SIG_MESSAGE)


def test_verify_refuses_an_r_off_the_curve_and_a_short_signature() -> None:
    signature = ALICE.sign(SIG_MESSAGE)
    off = next(y for y in range(2, 60) if not _is_square((y * y - 1) * pow(D * y * y + 1, -1, P)))
    assert not ALICE.peer_id.verify(_encode(off) + signature[32:], SIG_MESSAGE)
    assert not ALICE.peer_id.verify(signature[:63], SIG_MESSAGE)
