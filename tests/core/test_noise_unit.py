"""Unit tests for petalproto.core._noise: state machine, limits and every error path."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from petalproto.core._errors import HandshakeFailed, LocalProtocolError, RemoteProtocolError
from petalproto.core._noise import (
    HASHES,
    MAX_MESSAGE_LEN,
    MAX_PLAINTEXT_LEN,
    TAG_LEN,
    CipherState,
    HandshakeState,
    _SymmetricState,
)

PATTERNS = ("NN", "XX", "IK")
HANDSHAKE_LEN = {"NN": 2, "XX": 3, "IK": 2}
KEY = bytes(range(32))
P = 2**255 - 19
# X25519 u-coordinates of order 1, 2, 4 or 8 (Bernstein's list, as blocked by libsodium),
# non-canonical encodings of them (u + p), and the same with the ignored top bit set.
_LOW_ORDER_U = (
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
    P,
    P + 1,
)
LOW_ORDER = [u.to_bytes(32, "little") for u in _LOW_ORDER_U] + [
    (u | 1 << 255).to_bytes(32, "little") for u in _LOW_ORDER_U
]


def fake_random(seed: bytes) -> Callable[[int], bytes]:
    """Deterministic random_bytes: SHA-256 of seed and a counter."""
    counter = itertools.count()
    return lambda n: hashlib.sha256(seed + bytes([next(counter)])).digest()[:n]


def static_private(name: bytes) -> bytes:
    return hashlib.sha256(b"static " + name).digest()


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def make_pair(
    pattern: str = "XX",
    hash_name: str = "SHA256",
    *,
    init_prologue: bytes = b"petalproto test",
    resp_prologue: bytes = b"petalproto test",
) -> tuple[HandshakeState, HandshakeState]:
    init_static = static_private(b"init") if pattern != "NN" else None
    resp_static = static_private(b"resp") if pattern != "NN" else None
    init = HandshakeState(
        pattern=pattern,
        initiator=True,
        prologue=init_prologue,
        static_key=init_static,
        remote_static=public_of(static_private(b"resp")) if pattern == "IK" else None,
        random_bytes=fake_random(b"init"),
        hash_name=hash_name,
    )
    resp = HandshakeState(
        pattern=pattern,
        initiator=False,
        prologue=resp_prologue,
        static_key=resp_static,
        random_bytes=fake_random(b"resp"),
        hash_name=hash_name,
    )
    return init, resp


def step(init: HandshakeState, resp: HandshakeState, index: int, payload: bytes) -> bytes:
    writer, reader = (init, resp) if index % 2 == 0 else (resp, init)
    assert reader.read_message(writer.write_message(payload)) == payload
    return payload


def complete(init: HandshakeState, resp: HandshakeState, pattern: str) -> None:
    for i in range(HANDSHAKE_LEN[pattern]):
        step(init, resp, i, f"payload {i}".encode())


def assert_dead(hs: HandshakeState) -> None:
    for call in (lambda: hs.write_message(b""), lambda: hs.read_message(bytes(96)), hs.split):
        with pytest.raises(LocalProtocolError):
            call()
    assert not hs.complete


# -- happy paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("hash_name", sorted(HASHES))
@pytest.mark.parametrize("pattern", PATTERNS)
def test_handshake_and_transport(pattern: str, hash_name: str) -> None:
    init, resp = make_pair(pattern, hash_name)
    assert init.remote_static == (public_of(static_private(b"resp")) if pattern == "IK" else None)
    assert resp.remote_static is None
    complete(init, resp, pattern)
    assert init.complete and resp.complete
    assert init.handshake_hash == resp.handshake_hash
    if pattern != "NN":
        assert init.remote_static == resp.static_public == public_of(static_private(b"resp"))
        assert resp.remote_static == init.static_public == public_of(static_private(b"init"))
    else:
        assert init.static_public is None and init.remote_static is None
    init_send, init_recv = init.split()
    resp_send, resp_recv = resp.split()
    assert init.complete  # still reported complete after split
    for i in range(3):
        assert resp_recv.decrypt_with_ad(b"ad", init_send.encrypt_with_ad(b"ad", b"i%d" % i))
        assert init_recv.decrypt_with_ad(b"", resp_send.encrypt_with_ad(b"", b"r%d" % i))
    assert init_send.nonce == resp_recv.nonce == 3


@pytest.mark.parametrize("hash_name", sorted(HASHES))
def test_initialize_symmetric_pads_or_hashes_the_name(hash_name: str) -> None:
    # Noise §5.2: the 32-byte SHA256 name is used as is; the 33-byte BLAKE2s name is hashed.
    name = f"Noise_XX_25519_ChaChaPoly_{hash_name}".encode()
    init, _ = make_pair("XX", hash_name, init_prologue=b"pro")
    if hash_name == "SHA256":
        assert len(name) == 32
        assert init.handshake_hash == hashlib.sha256(name + b"pro").digest()
    else:
        assert len(name) == 33
        h0 = hashlib.blake2s(name).digest()
        assert init.handshake_hash == hashlib.blake2s(h0 + b"pro").digest()


def test_ephemeral_is_drawn_once_when_writing() -> None:
    calls: list[int] = []

    def counting(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    init = HandshakeState(
        pattern="NN", initiator=True, prologue=b"", static_key=None, random_bytes=counting
    )
    assert calls == []
    init.write_message(b"")
    assert calls == [32]


def test_read_message_accepts_bytearray_and_returns_bytes() -> None:
    init, resp = make_pair("XX")
    payload = resp.read_message(bytearray(init.write_message(b"hello")))
    assert payload == b"hello"
    assert type(payload) is bytes


# -- message size limits (Noise §3) ----------------------------------------------------------

# Largest payload per XX message: 65535 minus 32, 96 and 64 bytes of overhead.
XX_MAX_PAYLOAD = (65503, 65439, 65471)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_xx_largest_payload_fits_and_one_more_byte_does_not(index: int) -> None:
    init, resp = make_pair("XX")
    for i in range(index):
        step(init, resp, i, b"")
    writer, reader = (init, resp) if index % 2 == 0 else (resp, init)
    message = writer.write_message(bytes(XX_MAX_PAYLOAD[index]))
    assert len(message) == MAX_MESSAGE_LEN
    assert reader.read_message(message) == bytes(XX_MAX_PAYLOAD[index])

    init, resp = make_pair("XX")
    for i in range(index):
        step(init, resp, i, b"")
    writer = init if index % 2 == 0 else resp
    with pytest.raises(LocalProtocolError):
        writer.write_message(bytes(XX_MAX_PAYLOAD[index] + 1))
    assert_dead(writer)


def test_oversized_handshake_message_is_rejected() -> None:
    _, resp = make_pair("XX")
    with pytest.raises(HandshakeFailed):
        resp.read_message(bytes(MAX_MESSAGE_LEN + 1))
    assert_dead(resp)


@pytest.mark.parametrize(
    ("pattern", "index", "minimum"), [("XX", 0, 32), ("XX", 1, 96), ("IK", 0, 96)]
)
def test_short_handshake_message_is_rejected(pattern: str, index: int, minimum: int) -> None:
    init, resp = make_pair(pattern)
    if index == 1:
        step(init, resp, 0, b"")
    reader = resp if index % 2 == 0 else init
    with pytest.raises(HandshakeFailed):
        reader.read_message(bytes(range(minimum - 1)))
    assert_dead(reader)


# -- tampering, prologue, low-order keys -----------------------------------------------------


def _tamper_cases() -> list[tuple[str, int]]:
    return [(p, i) for p in PATTERNS for i in range(HANDSHAKE_LEN[p])]


@pytest.mark.parametrize(("pattern", "index"), _tamper_cases())
def test_tampered_byte_in_each_handshake_message_fails(pattern: str, index: int) -> None:
    length = len(_message_at(pattern, index, None))
    for position in range(length):
        init, resp = make_pair(pattern)
        with pytest.raises(HandshakeFailed):
            _message_at(pattern, index, position, pair=(init, resp))
        assert not (init.complete and resp.complete)


def _message_at(
    pattern: str,
    index: int,
    flip: int | None,
    *,
    pair: tuple[HandshakeState, HandshakeState] | None = None,
) -> bytes:
    """Run a handshake, flipping bit 0 of byte ``flip`` in message ``index``."""
    init, resp = pair or make_pair(pattern)
    found = b""
    for i in range(HANDSHAKE_LEN[pattern]):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        message = bytearray(writer.write_message(b"data"))
        if i == index:
            found = bytes(message)
            if flip is not None:
                message[flip] ^= 0x01
        reader.read_message(bytes(message))
    return found


def test_top_bit_of_ephemeral_is_covered_by_the_transcript() -> None:
    # X25519 ignores bit 255 of a public key, so flipping it leaves the DH unchanged; the
    # handshake must still fail because h covers the bytes as sent.
    init, resp = make_pair("XX")
    msg1 = bytearray(init.write_message(b""))
    msg1[31] ^= 0x80
    resp.read_message(bytes(msg1))
    with pytest.raises(HandshakeFailed):
        init.read_message(resp.write_message(b""))
    assert_dead(init)


def test_remote_static_is_withheld_when_its_message_fails() -> None:
    init, resp = make_pair("XX")
    resp.read_message(init.write_message(b""))
    msg2 = bytearray(resp.write_message(b"payload"))
    msg2[-1] ^= 0x01  # the s decrypts; the payload tag (which depends on es) does not
    with pytest.raises(HandshakeFailed):
        init.read_message(bytes(msg2))
    assert init.remote_static is None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_prologue_mismatch_fails(pattern: str) -> None:
    init, resp = make_pair(pattern, resp_prologue=b"something else")
    msg1 = init.write_message(b"")
    if pattern == "IK":  # msg1 already carries an encrypted s, bound to the prologue
        with pytest.raises(HandshakeFailed):
            resp.read_message(msg1)
        return
    resp.read_message(msg1)
    with pytest.raises(HandshakeFailed):
        init.read_message(resp.write_message(b""))


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p.hex()[:8] + "-" + p.hex()[-2:])
def test_low_order_ephemeral_is_rejected_on_read(point: bytes) -> None:
    _, resp = make_pair("XX")
    with pytest.raises(HandshakeFailed) as info:
        resp.read_message(point + b"payload")
    assert isinstance(info.value.__cause__, ValueError)
    assert_dead(resp)


@pytest.mark.parametrize("point", LOW_ORDER[:2])
def test_low_order_responder_ephemeral_is_rejected(point: bytes) -> None:
    init, _ = make_pair("NN")
    init.write_message(b"")
    with pytest.raises(HandshakeFailed):
        init.read_message(point + bytes(TAG_LEN))


def _evil_xx_msg2(msg1: bytes, claimed_static: bytes, prologue: bytes) -> bytes:
    """A responder's msg2 that carries ``claimed_static`` correctly encrypted as its s."""
    sym = _SymmetricState(b"Noise_XX_25519_ChaChaPoly_SHA256", HASHES["SHA256"])
    sym.mix_hash(prologue)
    sym.mix_hash(msg1[:32])
    sym.mix_hash(msg1[32:])  # msg1's payload, EncryptAndHash without a key
    e = X25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
    e_pub = e.public_key().public_bytes_raw()
    sym.mix_hash(e_pub)
    sym.mix_key(e.exchange(X25519PublicKey.from_public_bytes(msg1[:32])))
    return e_pub + sym.encrypt_and_hash(claimed_static) + bytes(TAG_LEN)


@pytest.mark.parametrize("point", LOW_ORDER[:4])
def test_low_order_static_in_handshake_is_rejected(point: bytes) -> None:
    init = HandshakeState(
        pattern="XX",
        initiator=True,
        prologue=b"p",
        static_key=KEY,
        random_bytes=fake_random(b"init"),
    )
    msg1 = init.write_message(b"")
    evil = _evil_xx_msg2(msg1, point, b"p")
    with pytest.raises(HandshakeFailed) as info:
        init.read_message(evil)
    # The s decrypted fine; the failure is the low-order check, not the tag.
    assert isinstance(info.value.__cause__, ValueError)
    assert init.remote_static is None


def test_low_order_remote_static_argument_is_refused() -> None:
    with pytest.raises(ValueError):
        HandshakeState(
            pattern="IK",
            initiator=True,
            prologue=b"",
            static_key=KEY,
            remote_static=bytes(32),
            random_bytes=fake_random(b""),
        )


# -- state machine ---------------------------------------------------------------------------


def test_initiator_cannot_read_first() -> None:
    init, _ = make_pair("XX")
    with pytest.raises(HandshakeFailed):
        init.read_message(bytes(32))
    assert_dead(init)


def test_responder_cannot_write_first() -> None:
    _, resp = make_pair("XX")
    with pytest.raises(LocalProtocolError):
        resp.write_message(b"")
    assert_dead(resp)


def test_cannot_write_twice_in_a_row() -> None:
    init, _ = make_pair("XX")
    init.write_message(b"")
    with pytest.raises(LocalProtocolError):
        init.write_message(b"")
    assert_dead(init)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_split_before_complete(pattern: str) -> None:
    init, _ = make_pair(pattern)
    with pytest.raises(LocalProtocolError):
        init.split()
    assert_dead(init)
    step_init, _ = make_pair(pattern)
    step_init.write_message(b"")
    with pytest.raises(LocalProtocolError):
        step_init.split()


def test_split_only_once() -> None:
    init, resp = make_pair("XX")
    complete(init, resp, "XX")
    init.split()
    with pytest.raises(LocalProtocolError):
        init.split()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_no_handshake_messages_after_complete(pattern: str) -> None:
    init, resp = make_pair(pattern)
    complete(init, resp, pattern)
    last_writer = init if HANDSHAKE_LEN[pattern] % 2 == 1 else resp
    other = resp if last_writer is init else init
    with pytest.raises(LocalProtocolError):
        last_writer.write_message(b"")
    with pytest.raises(HandshakeFailed):
        other.read_message(bytes(64))
    assert_dead(last_writer)
    assert_dead(other)


def test_short_random_bytes_is_a_local_error() -> None:
    init = HandshakeState(
        pattern="NN", initiator=True, prologue=b"", static_key=None, random_bytes=lambda n: b"x"
    )
    with pytest.raises(LocalProtocolError):
        init.write_message(b"")
    assert_dead(init)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pattern": "KK"}, "unsupported"),
        ({"hash_name": "SHA512"}, "unsupported"),
        ({"static_key": None}, "static_key"),
        ({"pattern": "NN"}, "static_key"),
        ({"pattern": "IK"}, "remote_static"),
        ({"remote_static": KEY}, "remote_static"),
        ({"static_key": bytes(31)}, "32"),
        ({"pattern": "IK", "remote_static": bytes(33)}, "32"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "pattern": "XX",
        "initiator": True,
        "prologue": b"",
        "static_key": KEY,
        "random_bytes": fake_random(b""),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        HandshakeState(**args)  # type: ignore[arg-type]


def test_ik_responder_needs_no_remote_static() -> None:
    with pytest.raises(ValueError, match="remote_static"):
        HandshakeState(
            pattern="IK",
            initiator=False,
            prologue=b"",
            static_key=KEY,
            remote_static=public_of(KEY),
            random_bytes=fake_random(b""),
        )


# -- CipherState -----------------------------------------------------------------------------


def test_cipherstate_without_key_passes_data_through() -> None:
    state = CipherState()
    assert not state.has_key()
    assert state.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert state.decrypt_with_ad(b"ad", b"plain") == b"plain"
    assert state.nonce == 0
    with pytest.raises(LocalProtocolError):
        state.rekey()


@pytest.mark.parametrize(("key", "nonce"), [(bytes(31), 0), (KEY, -1), (KEY, 2**64)])
def test_cipherstate_bad_arguments(key: bytes, nonce: int) -> None:
    with pytest.raises(ValueError):
        CipherState(key, nonce=nonce)


def test_nonce_exhaustion() -> None:
    sender, receiver = CipherState(KEY, nonce=2**64 - 2), CipherState(KEY, nonce=2**64 - 2)
    assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"last")) == b"last"
    assert sender.nonce == receiver.nonce == 2**64 - 1
    with pytest.raises(LocalProtocolError):
        sender.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(RemoteProtocolError):
        receiver.decrypt_with_ad(b"", bytes(32))
    assert sender.nonce == receiver.nonce == 2**64 - 1


def test_reserved_nonce_from_the_start() -> None:
    with pytest.raises(LocalProtocolError):
        CipherState(KEY, nonce=2**64 - 1).encrypt_with_ad(b"", b"")
    with pytest.raises(RemoteProtocolError):
        CipherState(KEY, nonce=2**64 - 1).decrypt_with_ad(b"", bytes(16))


def test_decrypt_failure_does_not_advance_the_nonce() -> None:
    sender, receiver = CipherState(KEY), CipherState(KEY)
    sealed = sender.encrypt_with_ad(b"ad", b"message")
    for bad in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:10], b"", sealed):
        with pytest.raises(RemoteProtocolError):
            receiver.decrypt_with_ad(b"other ad" if bad is sealed else b"ad", bad)
        assert receiver.nonce == 0
    assert receiver.decrypt_with_ad(b"ad", sealed) == b"message"
    assert receiver.nonce == 1


def test_transport_size_limits() -> None:
    sender, receiver = CipherState(KEY), CipherState(KEY)
    sealed = sender.encrypt_with_ad(b"", bytes(MAX_PLAINTEXT_LEN))
    assert len(sealed) == MAX_MESSAGE_LEN
    assert receiver.decrypt_with_ad(b"", sealed) == bytes(MAX_PLAINTEXT_LEN)
    with pytest.raises(LocalProtocolError):
        sender.encrypt_with_ad(b"", bytes(MAX_PLAINTEXT_LEN + 1))
    assert sender.nonce == 1
    with pytest.raises(RemoteProtocolError):
        receiver.decrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN + 1))
    assert receiver.nonce == 1


def test_rekey_keeps_nonce_and_changes_key() -> None:
    sender, receiver = CipherState(KEY, nonce=5), CipherState(KEY, nonce=5)
    sender.rekey()
    assert sender.nonce == 5
    sealed = sender.encrypt_with_ad(b"", b"x")
    with pytest.raises(RemoteProtocolError):
        receiver.decrypt_with_ad(b"", sealed)
    receiver.rekey()
    assert receiver.decrypt_with_ad(b"", sealed) == b"x"


# -- garbage in ------------------------------------------------------------------------------


def _reader_at(pattern: str, index: int) -> HandshakeState:
    init, resp = make_pair(pattern)
    for i in range(index):
        step(init, resp, i, b"")
    return resp if index % 2 == 0 else init


READ_POINTS = [(p, i) for p in PATTERNS for i in range(HANDSHAKE_LEN[p])]


@pytest.mark.parametrize(("pattern", "index"), READ_POINTS)
@given(junk=st.binary(max_size=512))
def test_garbage_raises_only_handshake_failed(pattern: str, index: int, junk: bytes) -> None:
    reader = _reader_at(pattern, index)
    with contextlib.suppress(HandshakeFailed):
        reader.read_message(junk)


@given(junk=st.binary(max_size=512), nonce=st.integers(0, 2**64 - 1))
def test_transport_garbage_raises_only_remote_protocol_error(junk: bytes, nonce: int) -> None:
    with contextlib.suppress(RemoteProtocolError):
        CipherState(KEY, nonce=nonce).decrypt_with_ad(b"", junk)


def test_encrypt_into_matches_encrypt_and_checks_its_arguments() -> None:
    from petalproto.core._errors import LocalProtocolError as _Local
    from petalproto.core._noise import TAG_LEN as _TAG
    from petalproto.core._noise import CipherState as _CS

    key = bytes(range(32))
    plain = b"hello, transport"
    out = bytearray(len(plain) + _TAG)
    _CS(key).encrypt_into(b"ad", plain, memoryview(out))
    assert bytes(out) == _CS(key).encrypt_with_ad(b"ad", plain)
    with pytest.raises(_Local):
        _CS(None).encrypt_into(b"", plain, memoryview(out))
    with pytest.raises(_Local):
        _CS(key, nonce=2**64 - 1).encrypt_into(b"", plain, memoryview(out))
    with pytest.raises(_Local):
        _CS(key).encrypt_into(b"", plain, memoryview(out)[1:])
