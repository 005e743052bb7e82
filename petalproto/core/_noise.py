"""The Noise Protocol Framework, revision 34, for 25519 / ChaChaPoly / SHA256 or BLAKE2s.

Spec: noiseprotocol/noise_spec ``noise.md`` rev 34 (2018-07-11).  Section numbers below
("Noise §5.3") refer to it.  Only what SPEC.md needs is here: the fundamental patterns
NN, XX and IK, no PSKs, no fallback, no out-of-order transport (``SetNonce``).

Theory of operation
-------------------

``CipherState`` (Noise §5.1) is the transport object: a key ``k`` (or none) and a
nonce counter ``n``.  Each ``encrypt_with_ad``/``decrypt_with_ad`` uses ``n`` and then
increments it; a failed decryption leaves ``n`` unchanged.  ``n = 2**64 - 1`` is reserved:
once ``n`` reaches it every further call fails, and the session must be torn down
(Noise §5.1, §14).  ``rekey`` replaces ``k`` and leaves ``n`` alone (Noise §11.3).

``_SymmetricState`` (Noise §5.2) holds the chaining key ``ck``, the transcript hash ``h``
and the handshake's ``CipherState``.

``HandshakeState`` (Noise §5.3) runs one handshake.  Its state is explicit:

    state       meaning                          next legal call
    WRITE       message ``index`` is ours        write_message()
    READ        message ``index`` is the peer's  read_message()
    COMPLETE    all messages done; keys derived  split()
    SPLIT       transport keys handed out        nothing more (properties only)
    ERROR       a call failed                    nothing: every call raises

Message ``i`` of every pattern here is written by the initiator when ``i`` is even and by
the responder when it is odd, so the state alternates WRITE/READ as ``index`` advances.
After the last message the state becomes COMPLETE and the two transport keys are derived
(Noise ``Split()``); ``split()`` hands them out once, oriented for this side.

Invariants and rules:

* Any exception raised by a public method moves the state to ERROR first (Noise §5: a
  failed handshake is deleted).  Afterwards every method raises ``LocalProtocolError``.
* ``write_message`` raises only ``LocalProtocolError`` (a caller bug: out of turn, message
  too long).  ``read_message`` raises only ``HandshakeFailed`` (the peer's fault: too short,
  too long, bad tag, low-order key, out of turn), or ``LocalProtocolError`` once dead.
* Every public key the peer sends is checked for low order the moment it arrives (see
  ``_load_public``), so a low-order key fails the ``read_message`` that carried it and no
  later DH can produce the all-zero output.  SPEC.md mandates this abort.
* Every message is at most 65535 bytes (Noise §3), checked before writing and reading.
* Ephemeral keys come only from ``random_bytes`` and are dropped once the handshake
  completes.  There is no other way to set them (Noise §14: never reuse ephemerals).

This module never does I/O and never draws randomness itself.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ._errors import HandshakeFailed, LocalProtocolError, RemoteProtocolError

__all__ = [
    "HASHES",
    "MAX_MESSAGE_LEN",
    "MAX_PLAINTEXT_LEN",
    "TAG_LEN",
    "CipherState",
    "HandshakeState",
]

# Noise §12.5 (SHA256) and §12.7 (BLAKE2s): HASHLEN = 32, BLOCKLEN = 64 for both.  HMAC is
# plain RFC 2104 HMAC over the hash (Noise §4.3), not BLAKE2s's keyed mode.
HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256(),
    "BLAKE2s": hashes.BLAKE2s(32),
}
MAX_MESSAGE_LEN: Final = 65535  # Noise §3: every Noise message, handshake or transport
TAG_LEN: Final = 16  # Noise §12.3: ChaChaPoly (RFC 7539) tag
MAX_PLAINTEXT_LEN: Final = MAX_MESSAGE_LEN - TAG_LEN  # 65519

_DHLEN: Final = 32  # Noise §12.1: X25519
_KEYLEN: Final = 32  # Noise §4.2: cipher keys are 32 bytes
_HASHLEN: Final = 32  # both supported hashes; so HKDF outputs need no truncation (§5.2)
_MAX_NONCE: Final = 2**64 - 1  # Noise §5.1: reserved, never used for a message
_ZEROS: Final = bytes(_KEYLEN)

# What the message APIs accept; cryptography's AEAD takes any of them without a copy.
_BytesLike: TypeAlias = bytes | bytearray | memoryview

# Noise §12.3: nonce = 32 bits of zeros || little-endian u64 n.
_pack_nonce: Final = struct.Struct("<4xQ").pack

# A fixed scalar for testing peer keys.  A clamped X25519 scalar is 8*k with 0 < k < l, so
# its product with a point is the identity exactly when the point has order 1, 2, 4 or 8:
# cryptography raises ValueError for precisely the keys that would give an all-zero DH with
# *any* private key (Noise §12.1, §14).  The scalar's value does not matter.
_PROBE: Final = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


class CipherState:
    """A Noise CipherState (Noise §5.1): an optional ChaChaPoly key and a nonce counter.

    Without a key, both directions pass data through unchanged, as the spec requires during
    the first handshake messages.
    """

    __slots__ = ("_aead", "_n")

    def __init__(self, key: bytes | None = None, nonce: int = 0) -> None:
        """Args:
            key: a 32-byte ChaChaPoly key, or None for an empty CipherState.
            nonce: the next nonce to use, 0 <= nonce <= 2**64 - 1.

        Raises:
            ValueError: the key is not 32 bytes or the nonce is out of range.
        """
        if key is not None and len(key) != _KEYLEN:
            raise ValueError(f"a ChaChaPoly key is {_KEYLEN} bytes")
        if not 0 <= nonce <= _MAX_NONCE:
            raise ValueError("the nonce must fit in 64 bits")
        self._aead = None if key is None else ChaCha20Poly1305(key)
        self._n = nonce

    def has_key(self) -> bool:
        """Returns: True once a key is set (Noise ``HasKey()``)."""
        return self._aead is not None

    @property
    def nonce(self) -> int:
        """The nonce the next encrypt or decrypt will use."""
        return self._n

    def encrypt_with_ad(self, ad: _BytesLike, plaintext: _BytesLike) -> bytes:
        """Encrypt one message (Noise ``EncryptWithAd``) and advance the nonce.

        Args:
            ad: associated data, authenticated but not sent.
            plaintext: at most ``MAX_PLAINTEXT_LEN`` bytes.

        Returns:
            The ciphertext with its 16-byte tag, or ``plaintext`` itself without a key.

        Raises:
            LocalProtocolError: the nonce is exhausted or the plaintext is too long.
        """
        aead = self._aead
        if aead is None:
            return bytes(plaintext)
        n = self._n
        if n == _MAX_NONCE:
            raise LocalProtocolError("nonce exhausted: the session must be closed")
        if len(plaintext) > MAX_PLAINTEXT_LEN:
            raise LocalProtocolError(f"plaintext over {MAX_PLAINTEXT_LEN} bytes")
        ciphertext = aead.encrypt(_pack_nonce(n), plaintext, ad)
        self._n = n + 1
        return ciphertext

    def encrypt_into(self, ad: _BytesLike, plaintext: _BytesLike, out: memoryview) -> None:
        """``encrypt_with_ad`` writing the ciphertext into ``out`` (exactly
        ``len(plaintext) + TAG_LEN`` bytes) instead of a new object, for the transport's
        hot path.

        Raises:
            LocalProtocolError: no key, the nonce is exhausted, the plaintext is too long,
                or ``out`` has the wrong size.
        """
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("encrypt_into needs a key")
        n = self._n
        if n == _MAX_NONCE:
            raise LocalProtocolError("nonce exhausted: the session must be closed")
        if len(plaintext) > MAX_PLAINTEXT_LEN or len(out) != len(plaintext) + TAG_LEN:
            raise LocalProtocolError("bad plaintext or output size")
        aead.encrypt_into(_pack_nonce(n), plaintext, ad, out)
        self._n = n + 1

    def decrypt_with_ad(self, ad: _BytesLike, ciphertext: _BytesLike) -> bytes:
        """Decrypt one message (Noise ``DecryptWithAd``); advance the nonce only on success.

        Args:
            ad: the associated data the sender used.
            ciphertext: at most ``MAX_MESSAGE_LEN`` bytes.

        Returns:
            The plaintext, or ``ciphertext`` itself without a key.

        Raises:
            RemoteProtocolError: authentication failed, the message is over 65535 bytes, or
                the nonce is exhausted.
        """
        aead = self._aead
        if aead is None:
            return bytes(ciphertext)
        n = self._n
        if n == _MAX_NONCE:
            raise RemoteProtocolError("nonce exhausted: the session must be closed")
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise RemoteProtocolError(f"Noise message over {MAX_MESSAGE_LEN} bytes")
        try:
            plaintext = aead.decrypt(_pack_nonce(n), ciphertext, ad)
        except InvalidTag as exc:
            raise RemoteProtocolError("Noise message failed authentication") from exc
        self._n = n + 1
        return plaintext

    def rekey(self) -> None:
        """Replace the key with REKEY(k) (Noise §4.2, §11.3); the nonce is unchanged.

        Raises:
            LocalProtocolError: there is no key to replace.
        """
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("cannot rekey a CipherState without a key")
        self._aead = ChaCha20Poly1305(aead.encrypt(_pack_nonce(_MAX_NONCE), _ZEROS, b"")[:_KEYLEN])


def _hash(alg: hashes.HashAlgorithm, data: bytes) -> bytes:
    ctx = hashes.Hash(alg)
    ctx.update(data)
    return ctx.finalize()


def _hmac(alg: hashes.HashAlgorithm, key: bytes, data: bytes) -> bytes:
    ctx = hmac.HMAC(key, alg)
    ctx.update(data)
    return ctx.finalize()


def _hkdf2(alg: hashes.HashAlgorithm, ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise §4.3 HKDF with two outputs (RFC 5869, salt = ck, empty info)."""
    temp = _hmac(alg, ck, ikm)
    out1 = _hmac(alg, temp, b"\x01")
    return out1, _hmac(alg, temp, out1 + b"\x02")


class _SymmetricState:
    """Noise §5.2: chaining key, transcript hash and the handshake CipherState."""

    __slots__ = ("_alg", "cipher", "ck", "h")

    def __init__(self, protocol_name: bytes, alg: hashes.HashAlgorithm) -> None:
        self._alg = alg
        # InitializeSymmetric: a name that fits in HASHLEN is zero-padded, a longer one
        # hashed ("..._SHA256" names are exactly 32 bytes, "..._BLAKE2s" ones are 33).
        if len(protocol_name) <= _HASHLEN:
            self.h = protocol_name.ljust(_HASHLEN, b"\x00")
        else:
            self.h = _hash(alg, protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self._alg, self.ck, ikm)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self._alg, self.h + data)

    def encrypt_and_hash(self, plaintext: _BytesLike) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """Returns: (initiator-to-responder key, responder-to-initiator key)."""
        return _hkdf2(self._alg, self.ck, b"")


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A handshake pattern (Noise §7): pre-message keys and the message token lists."""

    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]

    def check_keys(self, initiator: bool, has_static: bool, has_remote: bool) -> None:
        """Raises: ValueError: a key is missing or not used by this side of the pattern."""
        ours_pre, theirs_pre = self.initiator_pre, self.responder_pre
        if not initiator:
            ours_pre, theirs_pre = theirs_pre, ours_pre
        ours = self.messages[0 if initiator else 1 :: 2]
        if ("s" in ours_pre or any("s" in tokens for tokens in ours)) != has_static:
            raise ValueError("static_key is needed exactly when this side sends s")
        if ("s" in theirs_pre) != has_remote:
            raise ValueError("remote_static is needed exactly when it is pre-shared")


# Noise §7.4 (NN) and §7.5 (XX, IK).  Message i is the initiator's when i is even.
_PATTERNS: Final[dict[str, _Pattern]] = {
    "NN": _Pattern((), (), (("e",), ("e", "ee"))),
    "XX": _Pattern((), (), (("e",), ("e", "ee", "s", "es"), ("s", "se"))),
    "IK": _Pattern((), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
}


def _overhead(messages: tuple[tuple[str, ...], ...]) -> tuple[int, ...]:
    """Bytes each message adds to its payload.  Fixed for 25519 patterns without PSKs."""
    sizes: list[int] = []
    keyed = False
    for tokens in messages:
        size = 0
        for token in tokens:
            if token == "e":
                size += _DHLEN
            elif token == "s":
                size += _DHLEN + TAG_LEN * keyed
            else:  # ee, es, se, ss: the first DH sets a key (Noise §5.2 MixKey)
                keyed = True
        sizes.append(size + TAG_LEN * keyed)
    return tuple(sizes)


def _load_public(raw: bytes) -> X25519PublicKey:
    """Parse a peer's X25519 public key, refusing low-order points.

    Raises:
        ValueError: the key is not 32 bytes or has low order.
    """
    key = X25519PublicKey.from_public_bytes(raw)
    _PROBE.exchange(key)  # raises ValueError on an all-zero result; see _PROBE
    return key


class _State(enum.Enum):
    WRITE = "our message is next"
    READ = "the peer's message is next"
    COMPLETE = "handshake done"
    SPLIT = "transport keys handed out"
    ERROR = "failed; unusable"


class HandshakeState:
    """One Noise handshake (Noise §5.3) for ``Noise_{NN,XX,IK}_25519_ChaChaPoly_{hash}``.

    Call ``write_message`` and ``read_message`` in the pattern's order, then ``split()``.
    """

    def __init__(
        self,
        *,
        pattern: str,
        initiator: bool,
        prologue: bytes,
        static_key: bytes | None,
        remote_static: bytes | None = None,
        random_bytes: Callable[[int], bytes],
        hash_name: str = "SHA256",
    ) -> None:
        """Args:
            pattern: "NN", "XX" or "IK".
            initiator: True on the side that sends the first message.
            prologue: bytes both sides must agree on (Noise §6); hashed, never sent.
            static_key: our 32-byte X25519 private key; required exactly when the pattern
                has us send or pre-share ``s``.
            remote_static: the peer's 32-byte X25519 public key; required exactly when the
                pattern pre-shares it (the IK initiator).
            random_bytes: source of ephemeral private keys, called once with 32.
            hash_name: "SHA256" or "BLAKE2s".

        Raises:
            ValueError: unknown pattern or hash, a key missing, unneeded or not 32 bytes,
                or a low-order ``remote_static``.
        """
        if pattern not in _PATTERNS or hash_name not in HASHES:
            raise ValueError(f"unsupported Noise protocol {pattern!r} with {hash_name!r}")
        pat = _PATTERNS[pattern]
        pat.check_keys(initiator, static_key is not None, remote_static is not None)
        self._initiator = initiator
        self._random_bytes = random_bytes
        self._messages = pat.messages
        self._overheads = _overhead(pat.messages)
        self._s = None if static_key is None else X25519PrivateKey.from_private_bytes(static_key)
        self._s_pub = None if self._s is None else self._s.public_key().public_bytes_raw()
        self._rs = None if remote_static is None else _load_public(remote_static)
        self._rs_pub = None if remote_static is None else bytes(remote_static)
        self._e: X25519PrivateKey | None = None
        self._re: X25519PublicKey | None = None
        name = f"Noise_{pattern}_25519_ChaChaPoly_{hash_name}".encode("ascii")
        self._sym = _SymmetricState(name, HASHES[hash_name])
        self._sym.mix_hash(prologue)
        # Noise §5.3 Initialize: hash pre-message keys, the initiator's first.
        for owner_is_initiator, tokens in ((True, pat.initiator_pre), (False, pat.responder_pre)):
            for _token in tokens:  # "s" is the only pre-message token in these patterns
                key = self._s_pub if owner_is_initiator == initiator else self._rs_pub
                assert key is not None
                self._sym.mix_hash(key)
        self._index = 0
        self._state = _State.WRITE if initiator else _State.READ
        self._keys: tuple[bytes, bytes] | None = None

    @property
    def complete(self) -> bool:
        """True once every handshake message has been written or read."""
        return self._state in (_State.COMPLETE, _State.SPLIT)

    @property
    def handshake_hash(self) -> bytes:
        """The transcript hash ``h`` (Noise §11.2); the channel-binding value once complete."""
        return self._sym.h

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key once pre-shared or received; None after a failure.

        A received key is authenticated by the time the ``read_message`` that carried it
        returns: the same message's payload tag depends on a DH with it.
        """
        return None if self._state is _State.ERROR else self._rs_pub

    @property
    def static_public(self) -> bytes | None:
        """Our static public key, if this side has one."""
        return self._s_pub

    def write_message(self, payload: _BytesLike) -> bytes:
        """Write the next handshake message (Noise ``WriteMessage``).

        Args:
            payload: application bytes; cleartext in messages before the first DH.

        Returns:
            The message to send; at most ``MAX_MESSAGE_LEN`` bytes.

        Raises:
            LocalProtocolError: it is not our turn, the handshake is over or dead, the
                message would exceed 65535 bytes, or ``random_bytes`` misbehaved.
        """
        try:
            return self._write(payload)
        except BaseException:
            self._state = _State.ERROR
            raise

    def read_message(self, message: _BytesLike) -> bytes:
        """Read the peer's next handshake message (Noise ``ReadMessage``).

        Args:
            message: one whole handshake message, as framed by the transport.

        Returns:
            The payload it carried.

        Raises:
            HandshakeFailed: the message is too short or too long, fails authentication,
                carries a low-order key, or arrives when it is not the peer's turn.
            LocalProtocolError: an earlier call already failed.
        """
        try:
            return self._read(bytes(message))
        except BaseException:
            self._state = _State.ERROR
            raise

    def split(self) -> tuple[CipherState, CipherState]:
        """Hand out the transport CipherStates (Noise ``Split()``); callable once.

        Returns:
            (send, receive), oriented for this side.

        Raises:
            LocalProtocolError: the handshake is not complete, failed, or was split already.
        """
        try:
            self._expect(_State.COMPLETE, "split")
        except BaseException:
            self._state = _State.ERROR
            raise
        assert self._keys is not None
        initiator_to_responder, responder_to_initiator = self._keys
        self._keys = None
        self._state = _State.SPLIT
        if self._initiator:
            return CipherState(initiator_to_responder), CipherState(responder_to_initiator)
        return CipherState(responder_to_initiator), CipherState(initiator_to_responder)

    # -- state machine ----------------------------------------------------------------------

    def _expect(self, state: _State, call: str) -> None:
        if self._state is state:
            return
        if self._state is _State.ERROR:
            raise LocalProtocolError("this handshake already failed and cannot be used")
        if state is _State.READ:
            raise HandshakeFailed(f"unexpected handshake message: {self._state.value}")
        raise LocalProtocolError(f"{call}() out of turn: {self._state.value}")

    def _advance(self) -> None:
        self._index += 1
        if self._index < len(self._messages):
            self._state = _State.READ if self._state is _State.WRITE else _State.WRITE
            return
        self._keys = self._sym.split()
        self._e = None  # Noise §5.3: the handshake's secrets go once Split() has run
        self._state = _State.COMPLETE

    def _write(self, payload: _BytesLike) -> bytes:
        self._expect(_State.WRITE, "write_message")
        if len(payload) + self._overheads[self._index] > MAX_MESSAGE_LEN:
            raise LocalProtocolError(f"handshake message would exceed {MAX_MESSAGE_LEN} bytes")
        parts = [_WRITERS[token](self, token) for token in self._messages[self._index]]
        parts.append(self._sym.encrypt_and_hash(payload))
        self._advance()
        return b"".join(parts)

    def _read(self, message: bytes) -> bytes:
        self._expect(_State.READ, "read_message")
        if len(message) > MAX_MESSAGE_LEN:
            raise HandshakeFailed(f"handshake message over {MAX_MESSAGE_LEN} bytes")
        if len(message) < self._overheads[self._index]:
            raise HandshakeFailed("handshake message too short")
        pos = 0
        for token in self._messages[self._index]:
            pos = _READERS[token](self, token, message, pos)
        payload = self._decrypt_and_hash(message[pos:])
        self._advance()
        return payload

    # -- tokens (Noise §5.3) ------------------------------------------------------------------

    def _write_e(self, _token: str) -> bytes:
        raw = self._random_bytes(_DHLEN)
        if len(raw) != _DHLEN:
            raise LocalProtocolError(f"random_bytes({_DHLEN}) returned {len(raw)} bytes")
        self._e = X25519PrivateKey.from_private_bytes(raw)
        public = self._e.public_key().public_bytes_raw()
        self._sym.mix_hash(public)
        return public

    def _write_s(self, _token: str) -> bytes:
        assert self._s_pub is not None
        return self._sym.encrypt_and_hash(self._s_pub)

    def _write_dh(self, token: str) -> bytes:
        self._mix_dh(token)
        return b""

    def _read_e(self, _token: str, message: bytes, pos: int) -> int:
        raw = message[pos : pos + _DHLEN]
        self._re = self._peer_key(raw)
        self._sym.mix_hash(raw)
        return pos + _DHLEN

    def _read_s(self, _token: str, message: bytes, pos: int) -> int:
        end = pos + _DHLEN + (TAG_LEN if self._sym.cipher.has_key() else 0)
        raw = self._decrypt_and_hash(message[pos:end])
        self._rs = self._peer_key(raw)
        self._rs_pub = raw
        return end

    def _read_dh(self, token: str, _message: bytes, pos: int) -> int:
        self._mix_dh(token)
        return pos

    def _mix_dh(self, token: str) -> None:
        # In "es" the initiator contributes e and the responder s; likewise for the others.
        ours, theirs = (token[0], token[1]) if self._initiator else (token[1], token[0])
        local = self._e if ours == "e" else self._s
        remote = self._re if theirs == "e" else self._rs
        assert local is not None and remote is not None
        # Every remote key passed _load_public, so exchange() cannot hit an all-zero result.
        self._sym.mix_key(local.exchange(remote))

    def _peer_key(self, raw: bytes) -> X25519PublicKey:
        try:
            return _load_public(raw)
        except ValueError as exc:
            raise HandshakeFailed("peer sent a low-order X25519 public key") from exc

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        try:
            return self._sym.decrypt_and_hash(ciphertext)
        except RemoteProtocolError as exc:
            raise HandshakeFailed("handshake message failed authentication") from exc


# Token dispatch tables (Noise §5.3 WriteMessage / ReadMessage).
_DH_TOKENS: Final = ("ee", "es", "se", "ss")
_WRITERS: Final[dict[str, Callable[[HandshakeState, str], bytes]]] = {
    "e": HandshakeState._write_e,
    "s": HandshakeState._write_s,
    **dict.fromkeys(_DH_TOKENS, HandshakeState._write_dh),
}
_READERS: Final[dict[str, Callable[[HandshakeState, str, bytes, int], int]]] = {
    "e": HandshakeState._read_e,
    "s": HandshakeState._read_s,
    **dict.fromkeys(_DH_TOKENS, HandshakeState._read_dh),
}
