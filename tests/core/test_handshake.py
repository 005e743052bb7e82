"""The Noise XX handshake and identity binding of a Connection (SPEC.md §6)."""

from __future__ import annotations

from typing import Any

import pytest

from petalproto.core import (
    MAX_PAYLOAD,
    SIG_PREFIX,
    Config,
    Connection,
    ConnectionClosed,
    ConnState,
    ErrorCode,
    HandshakeCompleted,
    HandshakeFailed,
    LocalProtocolError,
    Message,
    Open,
    PeerIdMismatch,
    Role,
    Settings,
    encode,
)
from petalproto.testing._pairs import (
    ConnectionPair,
    ScriptedPeer,
    make_connection,
    make_identity,
)

OTHER = Role.RESPONDER
SCRIPTED = make_identity("scripted")
MALLORY = make_identity("mallory")


def _opposite(role: Role) -> Role:
    return Role.RESPONDER if role is Role.INITIATOR else Role.INITIATOR


def _conn(role: Role, config: Config | None = None) -> Connection:
    """The connection under test; an initiator dials the scripted peer."""
    expected = SCRIPTED.peer_id if role is Role.INITIATOR else None
    return make_connection(role, config=config, expected_peer=expected)


def _to_last_message(role: Role, conn: Connection, peer: ScriptedPeer) -> None:
    """Run the handshake up to the message that carries the scripted peer's payload."""
    conn.start(0.0)
    if role is Role.INITIATOR:
        peer.read(conn.data_to_send())
    else:
        conn.receive_data(peer.write(), 0.0)
        peer.read(conn.data_to_send())


def _deliver_payload(role: Role, payload: bytes) -> tuple[Connection, list[Any]]:
    """Give ``conn`` (of ``role``) a handshake whose authenticated payload is ``payload``."""
    conn = _conn(role)
    peer = ScriptedPeer(_opposite(role))
    _to_last_message(role, conn, peer)
    return conn, conn.receive_data(peer.write(payload), 0.0)


def _assert_dead_and_silent(conn: Connection) -> None:
    assert conn.state is ConnState.ERROR
    assert conn.data_to_send() == b""
    assert conn.next_deadline() is None


# -- success ----------------------------------------------------------------------------------


def test_handshake_completes_both_ways() -> None:
    ours = Settings(
        max_frame=1 << 17,
        stream_window=1 << 16,
        connection_window=1 << 20,
        max_streams=3,
        agent="left",
    )
    theirs = Settings(agent="right")
    pair = ConnectionPair(
        initiator_config=Config(settings=ours),
        responder_config=Config(settings=theirs),
        handshake=False,
    )
    at_initiator, at_responder = pair.handshake()
    assert at_initiator.peer_id == make_identity("responder").peer_id
    assert at_responder.peer_id == make_identity("initiator").peer_id
    assert at_initiator.settings == theirs
    assert at_responder.settings == ours
    assert len(at_initiator.handshake_hash) == 32
    assert at_initiator.handshake_hash == at_responder.handshake_hash
    for conn, done in ((pair.initiator, at_initiator), (pair.responder, at_responder)):
        assert conn.state is ConnState.OPEN
        assert conn.peer_id == done.peer_id
        assert conn.peer_settings == done.settings


def test_handshake_message_sizes() -> None:
    pair = ConnectionPair(handshake=False)
    pair.initiator.start(0.0)
    pair.responder.start(0.0)
    msg1 = pair.initiator.data_to_send()
    assert len(msg1) == 2 + 32 and msg1[:2] == b"\x00\x20"
    assert pair.responder.receive_data(msg1, 0.0) == []
    msg2 = pair.responder.data_to_send()
    payload = int.from_bytes(msg2[:2], "big") - 96
    assert len(msg2) == 2 + 96 + payload and 1 <= payload <= MAX_PAYLOAD
    [done] = pair.initiator.receive_data(msg2, 0.0)
    assert isinstance(done, HandshakeCompleted)
    msg3 = pair.initiator.data_to_send()
    assert len(msg3) == 2 + int.from_bytes(msg3[:2], "big")


def test_initiator_may_send_right_after_message_3() -> None:
    # SPEC.md §6.3: transport messages may follow message 3 in the same flight.
    pair = ConnectionPair(handshake=False)
    pair.initiator.start(0.0)
    pair.responder.start(0.0)
    pair.transfer(pair.initiator)
    pair.transfer(pair.responder)
    pair.initiator.send(Open(stream_id=1, method="ping"), 0.0)
    pair.initiator.send(Message(stream_id=1, body={}, end_stream=True), 0.0)
    events = pair.transfer(pair.initiator)
    assert [type(e) for e in events] == [HandshakeCompleted, Open, Message]


def test_scripted_peer_completes_both_roles() -> None:
    for role in Role:
        conn = _conn(role)
        [done] = ScriptedPeer(_opposite(role)).establish(conn)
        assert isinstance(done, HandshakeCompleted)
        assert done.peer_id == SCRIPTED.peer_id
        assert conn.state is ConnState.OPEN


def test_responder_accepts_any_initiator() -> None:
    conn = make_connection(Role.RESPONDER)
    [done] = ScriptedPeer(Role.INITIATOR, identity=MALLORY).establish(conn)
    assert isinstance(done, HandshakeCompleted) and done.peer_id == MALLORY.peer_id


def test_initiator_without_expected_peer_accepts_anyone() -> None:
    conn = make_connection(Role.INITIATOR)
    [done] = ScriptedPeer(Role.RESPONDER, identity=MALLORY).establish(conn)
    assert isinstance(done, HandshakeCompleted) and done.peer_id == MALLORY.peer_id


# -- identity checks (SPEC.md §6.6) -----------------------------------------------------------


def test_expected_peer_mismatch() -> None:
    conn = _conn(Role.INITIATOR)
    peer = ScriptedPeer(Role.RESPONDER, identity=MALLORY)
    _to_last_message(Role.INITIATOR, conn, peer)
    with pytest.raises(PeerIdMismatch) as info:
        conn.receive_data(peer.write(peer.payload()), 0.0)
    assert isinstance(info.value, HandshakeFailed)
    assert info.value.code is ErrorCode.HANDSHAKE_FAILED
    _assert_dead_and_silent(conn)  # no message 3


def _payload(**fields: Any) -> bytes:
    return encode(fields)


def _signed(static_public: bytes, **overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "identity_key": SCRIPTED.peer_id.raw,
        "identity_sig": SCRIPTED.sign(SIG_PREFIX + static_public),
        "settings": {},
    }
    fields.update(overrides)
    return _payload(**{k: v for k, v in fields.items() if v is not None})


BAD_SETTINGS: list[dict[str, Any]] = [
    {"max_frame": (1 << 16) - 1},
    {"max_frame": (1 << 26) + 1},
    {"max_frame": "1048576"},
    {"max_frame": True},
    {"stream_window": (1 << 16) - 1},
    {"stream_window": 1 << 31},
    {"connection_window": 1 << 31},
    {"stream_window": 1 << 20, "connection_window": (1 << 20) - 1},
    {"max_streams": 0},
    {"max_streams": (1 << 16) + 1},
    {"max_streams": 1.0},
    {"agent": "a" * 65},
    {"agent": "é" * 33},
    {"agent": b"agent"},
    {"agent": None},
]


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("settings", BAD_SETTINGS)
def test_settings_out_of_range_abort(role: Role, settings: dict[str, Any]) -> None:
    conn = _conn(role)
    peer = ScriptedPeer(_opposite(role))
    _to_last_message(role, conn, peer)
    with pytest.raises(HandshakeFailed, match="bad settings"):
        conn.receive_data(peer.write(_signed(peer.static_public, settings=settings)), 0.0)
    _assert_dead_and_silent(conn)


@pytest.mark.parametrize("role", list(Role))
def test_bad_identity_signatures_abort(role: Role) -> None:
    static = ScriptedPeer(_opposite(role)).static_public
    cases = {
        "signed by another key": {"identity_sig": MALLORY.sign(SIG_PREFIX + static)},
        "over another static key": {"identity_sig": SCRIPTED.sign(SIG_PREFIX + bytes(32))},
        "with another domain string": {
            "identity_sig": SCRIPTED.sign(b"noise-libp2p-static-key:" + static)
        },
        "truncated": {"identity_sig": SCRIPTED.sign(SIG_PREFIX + static)[:63]},
        "all zeros": {"identity_sig": bytes(64)},
    }
    for why, fields in cases.items():
        with pytest.raises(HandshakeFailed, match="does not cover") as info:
            _deliver_payload(role, _signed(static, **fields))
        assert info.value.code is ErrorCode.HANDSHAKE_FAILED, why


@pytest.mark.parametrize("role", list(Role))
def test_signature_over_another_static_key_abort(role: Role) -> None:
    # A payload honestly signed for one Noise static key, replayed under another.
    other = ScriptedPeer(_opposite(role), seed="another")
    conn = _conn(role)
    peer = ScriptedPeer(_opposite(role))
    _to_last_message(role, conn, peer)
    with pytest.raises(HandshakeFailed, match="does not cover"):
        conn.receive_data(peer.write(other.payload()), 0.0)
    _assert_dead_and_silent(conn)


def _malformed_payloads(static: bytes) -> dict[str, tuple[bytes, str]]:
    sig = SCRIPTED.sign(SIG_PREFIX + static)
    key = SCRIPTED.peer_id.raw
    return {
        "not msgpack": (b"\xc1", "handshake payload: invalid msgpack"),
        "trailing bytes": (_signed(static) + b"\x00", "handshake payload: invalid msgpack"),
        "not a map": (encode([key, sig]), "must be a map"),
        "a string": (encode("hello"), "must be a map"),
        "no identity_key": (_payload(identity_sig=sig), "lacks identity_key"),
        "no identity_sig": (_payload(identity_key=key), "lacks identity_key"),
        "key as str": (_payload(identity_key=key.hex(), identity_sig=sig), "lacks"),
        "sig as str": (_payload(identity_key=key, identity_sig=sig.hex()), "lacks"),
        "short key": (_signed(static, identity_key=key[:31]), "bad identity key"),
        "small-order key": (_signed(static, identity_key=bytes(32)), "bad identity key"),
        "settings not a map": (_signed(static, settings=[1]), "settings must be a map"),
        "duplicate keys": (
            b"\x82\xa8settings\x80\xa8settings\x80",
            "handshake payload: duplicate map key",
        ),
    }


@pytest.mark.parametrize("role", list(Role))
def test_malformed_payloads_abort(role: Role) -> None:
    static = ScriptedPeer(_opposite(role)).static_public
    for why, (payload, match) in _malformed_payloads(static).items():
        with pytest.raises(HandshakeFailed, match=match):
            _deliver_payload(role, payload)
        assert why


@pytest.mark.parametrize("role", list(Role))
def test_missing_and_unknown_settings(role: Role) -> None:
    static = ScriptedPeer(_opposite(role)).static_public
    payload = _signed(static, settings={"max_streams": 7, "future_setting": [1, {"x": 2}]})
    conn, [done] = _deliver_payload(role, payload)
    assert isinstance(done, HandshakeCompleted)
    # Missing keys take the SPEC.md §6.4 defaults, agent included; unknown keys are ignored.
    assert done.settings == Settings(max_streams=7, agent="")
    assert conn.state is ConnState.OPEN
    conn, [done] = _deliver_payload(role, _signed(static, settings=None))
    assert isinstance(done, HandshakeCompleted)
    assert done.settings == Settings(agent="")


@pytest.mark.parametrize("role", list(Role))
def test_payload_length_limits(role: Role) -> None:
    static = ScriptedPeer(_opposite(role)).static_public
    base = len(_signed(static, pad=""))

    def padded(size: int) -> bytes:
        payload = _signed(static, pad="x" * (size - base - 2))  # str8 header: 2 more bytes
        assert len(payload) == size
        return payload

    _, [done] = _deliver_payload(role, padded(MAX_PAYLOAD))
    assert isinstance(done, HandshakeCompleted)
    with pytest.raises(HandshakeFailed, match="handshake message of"):
        _deliver_payload(role, padded(MAX_PAYLOAD + 1))


# -- length windows (SPEC.md §6.3) ------------------------------------------------------------


def _in_state(state: ConnState) -> tuple[Connection, ScriptedPeer]:
    role = Role.INITIATOR if state is ConnState.AWAIT_RESPONDER_HELLO else Role.RESPONDER
    conn = _conn(role)
    peer = ScriptedPeer(_opposite(role))
    conn.start(0.0)
    if state is ConnState.AWAIT_RESPONDER_HELLO:
        peer.read(conn.data_to_send())
    if state is ConnState.AWAIT_INITIATOR_AUTH:
        conn.receive_data(peer.write(), 0.0)
        peer.read(conn.data_to_send())
    assert conn.state is state
    return conn, peer


WINDOWS = {
    ConnState.AWAIT_INITIATOR_HELLO: (32, 32),
    ConnState.AWAIT_RESPONDER_HELLO: (97, 96 + MAX_PAYLOAD),
    ConnState.AWAIT_INITIATOR_AUTH: (65, 64 + MAX_PAYLOAD),
}


@pytest.mark.parametrize("state", list(WINDOWS))
def test_length_outside_the_window_aborts_before_the_body(state: ConnState) -> None:
    low, high = WINDOWS[state]
    for length in (0, 1, low - 1, high + 1, 65535):
        conn, _ = _in_state(state)
        with pytest.raises(HandshakeFailed, match=f"handshake message of {length} bytes"):
            conn.receive_data(length.to_bytes(2, "big"), 0.0)
        _assert_dead_and_silent(conn)


@pytest.mark.parametrize("state", list(WINDOWS))
def test_length_inside_the_window_waits_for_the_body(state: ConnState) -> None:
    low, high = WINDOWS[state]
    for length in (low, high):
        conn, _ = _in_state(state)
        assert conn.receive_data(length.to_bytes(2, "big") + bytes(length - 1), 0.0) == []
        assert conn.state is state
        assert conn.data_to_send() == b""


def test_message_1_must_carry_no_payload() -> None:
    conn, peer = _in_state(ConnState.AWAIT_INITIATOR_HELLO)
    msg1 = peer.write(b"x")
    assert msg1[:2] == b"\x00\x21"
    with pytest.raises(HandshakeFailed):
        conn.receive_data(msg1[:2], 0.0)  # refused on its length alone
    _assert_dead_and_silent(conn)


def test_low_order_ephemeral_key_aborts() -> None:
    conn, _ = _in_state(ConnState.AWAIT_INITIATOR_HELLO)
    with pytest.raises(HandshakeFailed, match="low-order"):
        conn.receive_data(b"\x00\x20" + bytes(32), 0.0)
    _assert_dead_and_silent(conn)


# -- tampering and prologue -------------------------------------------------------------------


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize("index", [2, 17, 33])
def test_tampered_message_1_fails_at_the_initiator(index: int) -> None:
    # Message 1 is a bare ephemeral key: the responder cannot tell, but its reply is bound
    # to the altered key, so the initiator cannot decrypt message 2.
    pair = ConnectionPair(handshake=False)
    pair.initiator.start(0.0)
    pair.responder.start(0.0)
    msg1 = pair.initiator.data_to_send()
    pair.responder.receive_data(_flip(msg1, index), 0.0)
    with pytest.raises(HandshakeFailed, match="authentication"):
        pair.transfer(pair.responder)
    _assert_dead_and_silent(pair.initiator)


@pytest.mark.parametrize("where", ["e", "s", "s tag", "payload", "payload tag"])
def test_tampered_message_2(where: str) -> None:
    pair = ConnectionPair(handshake=False)
    pair.initiator.start(0.0)
    pair.responder.start(0.0)
    pair.transfer(pair.initiator)
    msg2 = pair.responder.data_to_send()
    index = {"e": 2, "s": 40, "s tag": 2 + 32 + 40, "payload": 2 + 96, "payload tag": -1}[where]
    with pytest.raises(HandshakeFailed):
        pair.initiator.receive_data(_flip(msg2, index % len(msg2)), 0.0)
    _assert_dead_and_silent(pair.initiator)


@pytest.mark.parametrize("index", [2, 2 + 47, 2 + 48, -1])
def test_tampered_message_3(index: int) -> None:
    pair = ConnectionPair(handshake=False)
    pair.initiator.start(0.0)
    pair.responder.start(0.0)
    pair.transfer(pair.initiator)
    pair.transfer(pair.responder)
    msg3 = pair.initiator.data_to_send()
    with pytest.raises(HandshakeFailed, match="authentication"):
        pair.responder.receive_data(_flip(msg3, index % len(msg3)), 0.0)
    _assert_dead_and_silent(pair.responder)


def test_wrong_prologue_fails_at_the_first_encrypted_field() -> None:
    # A responder of another protocol version: the initiator cannot decrypt its ``s``.
    conn = _conn(Role.INITIATOR)
    peer = ScriptedPeer(Role.RESPONDER, prologue=b"petalproto/0.1")
    conn.start(0.0)
    peer.read(conn.data_to_send())
    with pytest.raises(HandshakeFailed, match="authentication"):
        conn.receive_data(peer.write(peer.payload()), 0.0)
    _assert_dead_and_silent(conn)
    # An initiator of another version cannot read our message 2 either.
    conn = _conn(Role.RESPONDER)
    peer = ScriptedPeer(Role.INITIATOR, prologue=b"")
    conn.start(0.0)
    conn.receive_data(peer.write(), 0.0)
    with pytest.raises(HandshakeFailed, match="authentication"):
        peer.read(conn.data_to_send())


# -- timeout, EOF and misuse ------------------------------------------------------------------


@pytest.mark.parametrize("state", list(WINDOWS))
def test_handshake_timeout(state: ConnState) -> None:
    conn, _ = _in_state(state)
    assert conn.next_deadline() == 10.0
    assert conn.handle_timer(9.999) == []
    assert conn.state is state
    assert conn.handle_timer(10.0) == [
        ConnectionClosed(code=ErrorCode.HANDSHAKE_FAILED, reason="handshake timeout")
    ]
    _assert_dead_and_silent(conn)
    assert conn.handle_timer(20.0) == []


def test_handshake_timeout_is_configurable_and_counts_from_start() -> None:
    conn = make_connection(Role.RESPONDER, config=Config(handshake_timeout=2.5))
    assert conn.next_deadline() is None
    assert conn.handle_timer(100.0) == []
    conn.start(100.0)
    assert conn.next_deadline() == 102.5
    conn.receive_data(ScriptedPeer(Role.INITIATOR).write(), 101.0)
    assert conn.next_deadline() == 102.5  # progress does not extend it


@pytest.mark.parametrize("state", list(WINDOWS))
def test_eof_during_the_handshake(state: ConnState) -> None:
    conn, _ = _in_state(state)
    conn.receive_data(b"\x00", 0.0)  # half a length field is dropped too
    assert conn.receive_data(b"", 1.0) == [
        ConnectionClosed(code=ErrorCode.HANDSHAKE_FAILED, reason="EOF in handshake", by_peer=True)
    ]
    assert conn.state is ConnState.CLOSED
    assert conn.next_deadline() is None
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"", 2.0)


def test_start_is_required_and_happens_once() -> None:
    conn = make_connection(Role.RESPONDER)
    for data in (b"", b"\x00\x20"):
        with pytest.raises(LocalProtocolError, match="start"):
            conn.receive_data(data, 0.0)
    conn.start(0.0)
    with pytest.raises(LocalProtocolError, match="already started"):
        conn.start(0.0)
    initiator = make_connection(Role.INITIATOR)
    assert initiator.data_to_send() == b""
    initiator.start(0.0)
    assert len(initiator.data_to_send()) == 34


def test_nothing_is_sent_after_a_failure_in_the_same_input() -> None:
    # A valid message 1 and garbage in one read: message 2 was made, but must not go out.
    conn = make_connection(Role.RESPONDER)
    conn.start(0.0)
    with pytest.raises(HandshakeFailed):
        conn.receive_data(ScriptedPeer(Role.INITIATOR).write() + b"\x00\x00", 0.0)
    _assert_dead_and_silent(conn)
