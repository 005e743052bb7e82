"""Interop of petalproto.core._noise with an independent implementation, noiseprotocol 0.3.1.

noiseprotocol shares the ``cryptography`` primitives with us but not the protocol logic, so
driving its ``NoiseConnection`` in-process against our ``HandshakeState`` checks the
handshake, Split() orientation and transport framing from the outside.  Only static keys
are handed to noiseprotocol; it draws its own ephemerals, so it never warns.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag

from petalproto.core._errors import HandshakeFailed, RemoteProtocolError
from petalproto.core._noise import MAX_PLAINTEXT_LEN, CipherState, HandshakeState

noise_connection = pytest.importorskip("noise.connection")
noise_exceptions = pytest.importorskip("noise.exceptions")
NoiseConnection = noise_connection.NoiseConnection
Keypair = noise_connection.Keypair

PROLOGUE = b"petalproto interop test"
HASH_NAMES = ("SHA256", "BLAKE2s")


def _theirs(hash_name: str, *, initiator: bool, static_key: bytes, prologue: bytes) -> Any:
    conn = NoiseConnection.from_name(f"Noise_XX_25519_ChaChaPoly_{hash_name}".encode())
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static_key)
    conn.set_prologue(prologue)
    conn.start_handshake()
    return conn


def _ours(hash_name: str, *, initiator: bool, static_key: bytes, prologue: bytes) -> HandshakeState:
    return HandshakeState(
        pattern="XX",
        initiator=initiator,
        prologue=prologue,
        static_key=static_key,
        random_bytes=os.urandom,
        hash_name=hash_name,
    )


def _public(private: bytes) -> bytes:
    return (
        HandshakeState(
            pattern="XX", initiator=True, prologue=b"", static_key=private, random_bytes=os.urandom
        ).static_public
        or b""
    )


def _exchange(
    ours: HandshakeState, theirs: Any, *, we_start: bool
) -> tuple[CipherState, CipherState]:
    """Run the three XX messages, each with a distinct payload; return our (send, recv)."""
    payloads = [b"", b"responder payload " * 3, b"initiator payload " * 5]
    for i, payload in enumerate(payloads):
        our_turn = (i % 2 == 0) == we_start
        if our_turn:
            assert bytes(theirs.read_message(ours.write_message(payload))) == payload
        else:
            assert ours.read_message(bytes(theirs.write_message(payload))) == payload
    assert ours.complete
    assert theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    return ours.split()


@pytest.mark.parametrize("hash_name", HASH_NAMES)
@pytest.mark.parametrize("we_start", [True, False], ids=["ours-initiates", "theirs-initiates"])
def test_xx_interop(hash_name: str, we_start: bool) -> None:
    our_key, their_key = os.urandom(32), os.urandom(32)
    ours = _ours(hash_name, initiator=we_start, static_key=our_key, prologue=PROLOGUE)
    theirs = _theirs(hash_name, initiator=not we_start, static_key=their_key, prologue=PROLOGUE)
    send, recv = _exchange(ours, theirs, we_start=we_start)
    assert ours.remote_static == _public(their_key)

    for i in range(5):
        out = f"ours {i}".encode()
        assert theirs.decrypt(send.encrypt_with_ad(b"", out)) == out
        back = f"theirs {i}".encode() * (i + 1)
        assert recv.decrypt_with_ad(b"", theirs.encrypt(back)) == back

    big = os.urandom(MAX_PLAINTEXT_LEN)  # 65519 bytes: a 65535-byte Noise message
    sealed = send.encrypt_with_ad(b"", big)
    assert len(sealed) == 65535
    assert theirs.decrypt(sealed) == big
    assert recv.decrypt_with_ad(b"", theirs.encrypt(big)) == big

    # Tampering is caught in both directions.
    tampered = bytearray(send.encrypt_with_ad(b"", b"tamper me"))
    tampered[3] ^= 0x01
    with pytest.raises(noise_exceptions.NoiseInvalidMessage):
        theirs.decrypt(bytes(tampered))
    theirs_sealed = bytearray(theirs.encrypt(b"tamper me too"))
    theirs_sealed[-1] ^= 0x80
    before = recv.nonce
    with pytest.raises(RemoteProtocolError):
        recv.decrypt_with_ad(b"", bytes(theirs_sealed))
    assert recv.nonce == before


@pytest.mark.parametrize("hash_name", HASH_NAMES)
@pytest.mark.parametrize("we_start", [True, False], ids=["ours-initiates", "theirs-initiates"])
def test_xx_interop_rekey(hash_name: str, we_start: bool) -> None:
    ours = _ours(hash_name, initiator=we_start, static_key=os.urandom(32), prologue=PROLOGUE)
    theirs = _theirs(
        hash_name, initiator=not we_start, static_key=os.urandom(32), prologue=PROLOGUE
    )
    send, recv = _exchange(ours, theirs, we_start=we_start)
    assert theirs.decrypt(send.encrypt_with_ad(b"", b"before")) == b"before"
    send.rekey()
    theirs.rekey_inbound_cipher()
    recv.rekey()
    theirs.rekey_outbound_cipher()
    assert theirs.decrypt(send.encrypt_with_ad(b"", b"after")) == b"after"
    assert recv.decrypt_with_ad(b"", theirs.encrypt(b"reply")) == b"reply"


@pytest.mark.parametrize("hash_name", HASH_NAMES)
def test_tampered_handshake_from_them_is_rejected(hash_name: str) -> None:
    ours = _ours(hash_name, initiator=True, static_key=os.urandom(32), prologue=PROLOGUE)
    theirs = _theirs(hash_name, initiator=False, static_key=os.urandom(32), prologue=PROLOGUE)
    theirs.read_message(ours.write_message(b""))
    msg2 = bytearray(theirs.write_message(b"payload"))
    msg2[40] ^= 0x04  # inside the encrypted static key
    with pytest.raises(HandshakeFailed):
        ours.read_message(bytes(msg2))


@pytest.mark.parametrize("hash_name", HASH_NAMES)
def test_tampered_handshake_from_us_is_rejected(hash_name: str) -> None:
    ours = _ours(hash_name, initiator=False, static_key=os.urandom(32), prologue=PROLOGUE)
    theirs = _theirs(hash_name, initiator=True, static_key=os.urandom(32), prologue=PROLOGUE)
    ours.read_message(bytes(theirs.write_message(b"")))
    msg2 = bytearray(ours.write_message(b"payload"))
    msg2[-1] ^= 0x01  # the payload's tag
    with pytest.raises(InvalidTag):  # noiseprotocol does not wrap handshake failures
        theirs.read_message(bytes(msg2))


@pytest.mark.parametrize("hash_name", HASH_NAMES)
def test_prologue_mismatch_with_them(hash_name: str) -> None:
    ours = _ours(hash_name, initiator=True, static_key=os.urandom(32), prologue=PROLOGUE)
    theirs = _theirs(hash_name, initiator=False, static_key=os.urandom(32), prologue=b"other")
    theirs.read_message(ours.write_message(b""))
    with pytest.raises(HandshakeFailed):
        ours.read_message(bytes(theirs.write_message(b"")))
