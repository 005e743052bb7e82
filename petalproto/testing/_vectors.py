"""Golden vectors for SPEC.md Appendix A: a complete handshake with fixed keys and sample
frames, produced by our own core.  The test suite regenerates them and compares them with the
appendix byte for byte, so the spec and the code cannot drift apart."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petalproto.core import Config, Connection, Identity, Message, Open, Role, Settings
from petalproto.core._errors import ErrorCode
from petalproto.core._frames import FrameType, encode_frame
from petalproto.core._handshake import make_payload

__all__ = ["VECTOR_SETTINGS", "fixed_key", "handshake_vector", "sample_frames"]

#: SPEC.md A.1: both sides announce the default limits and the agent "vector", so the
#: vector does not change with our version number.
VECTOR_SETTINGS = Settings(agent="vector")


def fixed_key(label: str) -> bytes:
    """A reproducible 32-byte key: SHA-256 of ``petalproto-vector:`` and the label."""
    return hashlib.sha256(b"petalproto-vector:" + label.encode()).digest()


def _keys(*labels: str) -> Callable[[int], bytes]:
    queue = [fixed_key(label) for label in labels]

    def random_bytes(n: int) -> bytes:
        key = queue.pop(0)
        assert len(key) == n, "vectors draw only 32-byte keys"
        return key

    return random_bytes


def handshake_vector() -> dict[str, Any]:
    """Both sides of one handshake plus a ``ping`` call, every byte on the wire in hex."""
    initiator_id, responder_id = (
        Identity.from_seed(fixed_key("initiator identity")),
        Identity.from_seed(fixed_key("responder identity")),
    )
    initiator = Connection(
        Role.INITIATOR,
        identity=initiator_id,
        random_bytes=_keys("initiator static", "initiator ephemeral"),
        expected_peer=responder_id.peer_id,
        config=Config(settings=VECTOR_SETTINGS),
    )
    responder = Connection(
        Role.RESPONDER,
        identity=responder_id,
        random_bytes=_keys("responder static", "responder ephemeral"),
        config=Config(
            settings=VECTOR_SETTINGS, batch_credit=False
        ),  # its reply shows the CREDIT (SPEC.md A.1)
    )
    initiator.start(0.0)
    responder.start(0.0)
    msg1 = initiator.data_to_send()
    responder.receive_data(msg1, 0.0)
    msg2 = responder.data_to_send()
    initiator.receive_data(msg2, 0.0)
    stream_id = initiator.next_stream_id()
    initiator.send(Open(stream_id=stream_id, method="ping"), 0.0)
    initiator.send(Message(stream_id=stream_id, body={}, end_stream=True), 0.0)
    msg3_and_call = initiator.data_to_send()
    responder.receive_data(msg3_and_call, 0.0)
    responder.acknowledge(stream_id, 1, 0.0)
    responder.send(
        Message(stream_id=stream_id, body={"agent": "vector", "observed": None}, end_stream=True),
        0.0,
    )
    reply = responder.data_to_send()
    return {
        "initiator_identity_seed": fixed_key("initiator identity").hex(),
        "responder_identity_seed": fixed_key("responder identity").hex(),
        "initiator_static": fixed_key("initiator static").hex(),
        "initiator_ephemeral": fixed_key("initiator ephemeral").hex(),
        "responder_static": fixed_key("responder static").hex(),
        "responder_ephemeral": fixed_key("responder ephemeral").hex(),
        "initiator_peer_id": str(initiator_id.peer_id),
        "responder_peer_id": str(responder_id.peer_id),
        "initiator_payload": _payload(initiator_id, "initiator static"),
        "responder_payload": _payload(responder_id, "responder static"),
        "message_1": msg1.hex(),
        "message_2": msg2.hex(),
        "message_3_and_ping_call": msg3_and_call.hex(),
        "responder_reply": reply.hex(),
    }


def _payload(identity: Identity, static_label: str) -> str:
    """The plaintext handshake payload (SPEC.md §6.4) that the vector's side encrypts."""
    static = X25519PrivateKey.from_private_bytes(fixed_key(static_label))
    return make_payload(identity, static.public_key().public_bytes_raw(), VECTOR_SETTINGS).hex()


def sample_frames() -> dict[str, str]:
    """Plaintext frames (length prefix included), in hex."""
    return {
        "OPEN 1 ping": encode_frame(FrameType.OPEN, 1, "ping").hex(),
        "DATA 1 END_MESSAGE|END_STREAM {}": encode_frame(FrameType.DATA, 1, 3, b"\x80").hex(),
        "CREDIT 0 +65536": encode_frame(FrameType.CREDIT, 0, 65536).hex(),
        "RESET 1 UNKNOWN_METHOD": encode_frame(
            FrameType.RESET, 1, int(ErrorCode.UNKNOWN_METHOD), "unknown method"
        ).hex(),
        "PING 0001020304050607": encode_frame(FrameType.PING, bytes(range(8))).hex(),
        "GOAWAY 0 NO_ERROR": encode_frame(FrameType.GOAWAY, 0, 0, "").hex(),
    }
