"""Shared helpers for the Connection tests: a connection under test facing a scripted peer."""

from __future__ import annotations

from typing import Any

from petalproto.core import Config, Connection, ConnState, ErrorCode, Event, Role, Settings
from petalproto.core._frames import FrameType
from petalproto.testing._pairs import ScriptedPeer, frame_bytes, make_connection, make_identity

SCRIPTED = make_identity("scripted")

#: Small windows, so that flow control shows with little data.
SMALL = Settings(max_frame=1 << 20, stream_window=1 << 16, connection_window=1 << 18, max_streams=4)


def established(
    role: Role = Role.RESPONDER,
    *,
    settings: Settings | None = None,
    peer_settings: Settings | None = None,
    config: Config | None = None,
) -> tuple[Connection, ScriptedPeer]:
    """A connection in OPEN (of ``role``) and the scripted peer at its other end.

    Args:
        role: the role of the connection under test.
        settings: what the connection announces.
        peer_settings: what the scripted peer announces.
        config: the connection's config (wins over ``settings``).
    """
    conn = make_connection(
        role,
        config=config or Config(settings=settings or Settings()),
        expected_peer=SCRIPTED.peer_id if role is Role.INITIATOR else None,
    )
    other = Role.RESPONDER if role is Role.INITIATOR else Role.INITIATOR
    peer = ScriptedPeer(other, settings=peer_settings)
    peer.establish(conn)
    assert conn.state is ConnState.OPEN
    return conn, peer


def inject(
    conn: Connection, peer: ScriptedPeer, *frames: tuple[Any, ...], now: float = 0.0
) -> list[Event]:
    """Seal ``frames`` (tuples of frame elements) and feed them to ``conn``."""
    return conn.receive_data(peer.seal(b"".join(frame_bytes(*f) for f in frames)), now)


def sent(conn: Connection, peer: ScriptedPeer) -> list[tuple[Any, ...]]:
    """The frames ``conn`` has queued, decoded by the peer."""
    return peer.receive(conn.data_to_send())


def assert_goaway(conn: Connection, peer: ScriptedPeer, code: ErrorCode, last: int = 0) -> None:
    """``conn`` failed with a connection error and wrote exactly one GOAWAY of ``code``."""
    assert conn.state is ConnState.ERROR
    [(kind, last_id, got, _reason)] = sent(conn, peer)
    assert (kind, last_id, got) == (FrameType.GOAWAY, last, code)
    assert conn.next_deadline() is None


def of_type(frames: list[tuple[Any, ...]], kind: FrameType) -> list[tuple[Any, ...]]:
    return [f for f in frames if f[0] is kind]
