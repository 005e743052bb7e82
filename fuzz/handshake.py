"""Fuzz the handshake of a fresh connection (SPEC.md §6).

Input layout: the first byte picks the case (its value modulo 4), the rest is the fuzz.

0. The rest is raw wire bytes sent to a fresh responder, followed by EOF: the length
   windows and message 1 (a bare ephemeral key, the only unauthenticated message).
1. A scripted initiator sends a valid message 1 and then message 3 with the rest as its
   *payload*, encrypted properly: the responder's payload parser sees the fuzz.
2. The same for message 2: a scripted responder answers a fresh initiator with the rest as
   its payload.
3. A payload with a valid identity signature and the rest as its ``settings`` (decoded as
   msgpack when it is, else as a byte string): the settings checks see the fuzz.

Rules checked (STYLE.md §3, §5): only ``RemoteProtocolError`` and its subclasses escape
``receive_data``; after one the state is ERROR and nothing more is written (SPEC.md §6.6).

Run::

    python fuzz/handshake.py -max_len=2048 -atheris_runs=200000

Without atheris the module still imports, and ``TestOneInput(data)`` can be called directly.
"""

from __future__ import annotations

import contextlib
import sys

try:
    import atheris
except ImportError:  # pragma: no cover - atheris is optional
    atheris = None

# Instrument our code for coverage feedback only when fuzzing, not when tests import this.
_FUZZING = __name__ == "__main__" and atheris is not None
with atheris.instrument_imports() if _FUZZING else contextlib.nullcontext():
    from petalproto.core import (
        SIG_PREFIX,
        Connection,
        ConnState,
        MalformedMessage,
        RemoteProtocolError,
        Role,
        decode_strict,
        encode,
    )
    from petalproto.testing._pairs import ScriptedPeer, make_connection, make_identity

_PEER = make_identity("fuzz-peer")
# HandshakeState refuses to write a message over 65535 bytes; the largest payload it takes.
_MAX_PAYLOAD = 65535 - 96


def _settings_payload(peer: ScriptedPeer, rest: bytes) -> bytes:
    try:
        settings: object = decode_strict(rest)
    except MalformedMessage:
        settings = rest
    return encode(
        {
            "identity_key": _PEER.peer_id.raw,
            "identity_sig": _PEER.sign(SIG_PREFIX + peer.static_public),
            "settings": settings,
        }
    )


def _prepare(case: int, rest: bytes) -> tuple[Connection, bytes]:
    """The connection under test, brought to the message that the fuzz stands in for,
    and the bytes to feed it."""
    if case == 0:
        conn = make_connection(Role.RESPONDER, seed="fuzz")
        conn.start(0.0)
        return conn, rest
    role = Role.INITIATOR if case == 2 else Role.RESPONDER
    conn = make_connection(role, seed="fuzz", expected_peer=_PEER.peer_id)
    peer = ScriptedPeer(
        Role.RESPONDER if case == 2 else Role.INITIATOR, identity=_PEER, seed="fuzz-peer"
    )
    conn.start(0.0)
    if role is Role.RESPONDER:
        conn.receive_data(peer.write(), 0.0)
    peer.read(conn.data_to_send())
    payload = _settings_payload(peer, rest) if case == 3 else rest
    return conn, peer.write(payload[:_MAX_PAYLOAD])


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer expect
    """One fuzz case; see the module docstring for the layout of ``data``."""
    if not data:
        return
    conn, wire = _prepare(data[0] % 4, data[1:])
    try:
        conn.receive_data(wire, 0.0)
    except RemoteProtocolError:
        assert conn.state is ConnState.ERROR, conn.state
        assert conn.data_to_send() == b"", "sent something after a failed handshake"
        return
    conn.data_to_send()
    if conn.state not in (ConnState.CLOSED, ConnState.ERROR):
        conn.receive_data(b"", 1.0)  # and EOF, in whatever state that left


if __name__ == "__main__":  # pragma: no cover - manual fuzzing
    if atheris is None:
        sys.exit("atheris is not installed")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
