"""The identity binding carried inside the Noise XX handshake (SPEC.md §6).

Noise proves that the peer holds the private half of the X25519 static key it sent.  The
handshake payload of messages 2 and 3 links that static key to the peer's Ed25519 identity:
``identity_sig`` signs ``SIG_PREFIX || static public key`` (libp2p-noise's construction with
our own domain string, so signatures cannot be replayed across protocols).  The payload also
carries the sender's settings.

Pure functions; the connection decides what to do with the results.
"""

from __future__ import annotations

from typing import Any

from ._errors import HandshakeFailed, MalformedMessage
from ._events import Settings
from ._identity import Identity, PeerId
from ._msgpack import decode_strict, encode

__all__ = [
    "MAX_PAYLOAD",
    "PROLOGUE",
    "PROTOCOL_NAME",
    "SIG_PREFIX",
    "make_payload",
    "read_payload",
]

#: SPEC.md §6.1: the only cipher suite.
PROTOCOL_NAME = "Noise_XX_25519_ChaChaPoly_SHA256"
#: SPEC.md §6.2: binds the protocol and its version into the handshake hash.
PROLOGUE = b"petalproto/0.2"
#: SPEC.md §6.5: the domain-separation string of the identity signature.
SIG_PREFIX = b"petalproto-noise-static-key:"
#: SPEC.md §6.4: the largest handshake payload a receiver accepts.
MAX_PAYLOAD = 1024

_SETTINGS_KEYS = ("max_frame", "stream_window", "connection_window", "max_streams", "agent")


def make_payload(identity: Identity, static_public: bytes, settings: Settings) -> bytes:
    """The payload of handshake message 2 (responder) or 3 (initiator)."""
    return encode(
        {
            "identity_key": identity.peer_id.raw,
            "identity_sig": identity.sign(SIG_PREFIX + static_public),
            "settings": {key: getattr(settings, key) for key in _SETTINGS_KEYS},
        }
    )


def _read_settings(raw: object) -> Settings:
    if not isinstance(raw, dict):
        raise HandshakeFailed("settings must be a map")
    # Unknown keys are ignored (SPEC.md §6.4) so that later versions can add settings.
    known: dict[str, Any] = {key: raw[key] for key in _SETTINGS_KEYS if key in raw}
    # A missing key takes the SPEC.md §6.4 default; for ``agent`` that is "", not the
    # name ``Settings`` announces for this implementation.
    known.setdefault("agent", "")
    try:
        return Settings(**known)
    except (TypeError, ValueError) as exc:
        raise HandshakeFailed(f"bad settings: {exc}") from exc


def read_payload(payload: bytes, remote_static: bytes) -> tuple[PeerId, Settings]:
    """Check a received payload against the static key Noise authenticated.

    Returns:
        The peer's id and settings.

    Raises:
        HandshakeFailed: malformed payload, bad key or a signature that does not cover
            ``remote_static``.
    """
    try:
        obj = decode_strict(payload)
    except MalformedMessage as exc:
        raise HandshakeFailed(f"handshake payload: {exc.msg}") from exc
    if not isinstance(obj, dict):
        raise HandshakeFailed("handshake payload must be a map")
    key, sig = obj.get("identity_key"), obj.get("identity_sig")
    if not isinstance(key, bytes) or not isinstance(sig, bytes):
        raise HandshakeFailed("handshake payload lacks identity_key or identity_sig")
    try:
        peer = PeerId.from_bytes(key)
    except ValueError as exc:
        raise HandshakeFailed(f"bad identity key: {exc}") from exc
    if not peer.verify(sig, SIG_PREFIX + remote_static):
        raise HandshakeFailed("identity signature does not cover the Noise static key")
    return peer, _read_settings(obj.get("settings", {}))
