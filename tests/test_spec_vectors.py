"""SPEC.md Appendix A matches what our core produces, byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

from petalproto.core import Config, Connection, Identity, Role
from petalproto.testing._vectors import VECTOR_SETTINGS, fixed_key, handshake_vector, sample_frames

SPEC = Path(__file__).parents[1] / "SPEC.md"


def _appendix_values() -> dict[str, str]:
    text = SPEC.read_text()
    appendix = text[text.index("## Appendix A.") :]
    return dict(re.findall(r"^([A-Za-z0-9_ |{}+:]+?): ([0-9a-z]+)$", appendix, re.MULTILINE))


def test_handshake_vector_matches_the_spec() -> None:
    values = _appendix_values()
    for key, value in handshake_vector().items():
        assert values[key] == value, key


def test_sample_frames_match_the_spec() -> None:
    values = _appendix_values()
    for key, value in sample_frames().items():
        assert values[key] == value, key


def test_the_vector_handshake_replays_into_a_fresh_responder() -> None:
    vector = handshake_vector()
    keys = [fixed_key("responder static"), fixed_key("responder ephemeral")]
    responder = Connection(
        Role.RESPONDER,
        identity=Identity.from_seed(fixed_key("responder identity")),
        random_bytes=lambda n: keys.pop(0),
        config=Config(settings=VECTOR_SETTINGS),
    )
    responder.start(0.0)
    responder.receive_data(bytes.fromhex(vector["message_1"]), 0.0)
    assert responder.data_to_send().hex() == vector["message_2"]
    events = responder.receive_data(bytes.fromhex(vector["message_3_and_ping_call"]), 0.0)
    assert [type(e).__name__ for e in events] == ["HandshakeCompleted", "Open", "Message"]
