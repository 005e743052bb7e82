"""Fuzz the frame layer of an established connection (SPEC.md §7.2, §8, §9).

Random bytes on the wire stop at the first transport message: its tag does not verify.  So
this harness plays the peer with ``ScriptedPeer``, which holds the peer's transport cipher
state, and seals the fuzz input as the peer's *decrypted* byte stream.  The input reaches
the frame length checks, the frame decoder and the multiplexer.

Input layout: the first byte picks the case, the rest is the plaintext.

- bit 0: the connection under test is the responder (0) or the initiator (1);
- bit 1: it opens a stream of its own first and queues a message on it;
- bits 2-7: plaintext per transport message, ``64 * (n + 1)`` bytes, so that frames are
  cut across transport messages in many ways (the last value, 63, means as large as fits).

Rules checked (STYLE.md §3, §5): only ``RemoteProtocolError`` and its subclasses escape
``receive_data``; afterwards the state is ERROR and the only frame written is one GOAWAY;
without an error, whatever the connection writes decodes cleanly.

Run::

    python fuzz/frames.py -max_len=4096 -atheris_runs=200000

Without atheris the module still imports, and ``TestOneInput(data)`` can be called directly
(``tests/core/test_fuzz_harnesses.py`` does).
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
        Config,
        Connection,
        ConnState,
        Message,
        Open,
        RemoteProtocolError,
        Role,
        Settings,
    )
    from petalproto.core._frames import FrameType
    from petalproto.core._noise import MAX_PLAINTEXT_LEN
    from petalproto.testing._pairs import ScriptedPeer, make_connection, make_identity

_PEER = make_identity("fuzz-peer")
# Small limits, so that short inputs reach them: 64 KiB frames and windows, 2 streams.
_SETTINGS = Settings(
    max_frame=1 << 16, stream_window=1 << 16, connection_window=1 << 17, max_streams=2
)


def _established(role: Role) -> tuple[Connection, ScriptedPeer]:
    conn = make_connection(
        role,
        config=Config(settings=_SETTINGS),
        expected_peer=_PEER.peer_id if role is Role.INITIATOR else None,
        seed="fuzz",
    )
    other = Role.RESPONDER if role is Role.INITIATOR else Role.INITIATOR
    peer = ScriptedPeer(other, identity=_PEER, settings=_SETTINGS, seed="fuzz-peer")
    peer.establish(conn)
    return conn, peer


def _feed(conn: Connection, peer: ScriptedPeer, plain: bytes, step: int) -> None:
    for start in range(0, len(plain), step):
        events = conn.receive_data(peer.seal(plain[start : start + step]), 0.0)
        for event in events:
            if isinstance(event, Message):  # consume, as an application would
                conn.acknowledge(event.stream_id, event.size, 0.0)
        _check_output(conn, peer)
        if conn.state is ConnState.CLOSED:
            return


def _check_output(conn: Connection, peer: ScriptedPeer) -> None:
    """Whatever the connection writes must be valid frames."""
    try:
        peer.receive(conn.data_to_send())
    except RemoteProtocolError as exc:  # the peer's parser: a bug on our side, not theirs
        raise AssertionError(f"the connection wrote a bad frame: {exc}") from exc


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer expect
    """One fuzz case; see the module docstring for the layout of ``data``."""
    if not data:
        return
    mode, plain = data[0], data[1:]
    conn, peer = _established(Role.INITIATOR if mode & 1 else Role.RESPONDER)
    if mode & 2:
        stream_id = conn.next_stream_id()
        conn.send(Open(stream_id=stream_id, method="fuzz"), 0.0)
        conn.send(Message(stream_id=stream_id, body=b"q" * 1000), 0.0)
        _check_output(conn, peer)
    slots = mode >> 2
    step = MAX_PLAINTEXT_LEN if slots == 63 else 64 * (slots + 1)
    try:
        _feed(conn, peer, plain, step)
    except RemoteProtocolError:
        assert conn.state is ConnState.ERROR, conn.state
        frames = peer.receive(conn.data_to_send())
        assert [frame[0] for frame in frames] == [FrameType.GOAWAY], frames


if __name__ == "__main__":  # pragma: no cover - manual fuzzing
    if atheris is None:
        sys.exit("atheris is not installed")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
