"""The receive path under random chunking and garbage, and every (state, input) pair.

STYLE.md §5 (after h11's ``test_io.py`` and ``fuzz/``, and h2's ``test_state_machines.py``):
cutting the input anywhere changes no event; garbage raises only RemoteProtocolError; every
state answers every input with a result or the right error.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petalproto.core import (
    Connection,
    ConnState,
    EndStream,
    ErrorCode,
    Event,
    GoAway,
    LocalProtocolError,
    Message,
    Open,
    Ping,
    RemoteProtocolError,
    Reset,
    Role,
    Settings,
)
from petalproto.core._frames import FrameType as F
from petalproto.testing._pairs import ConnectionPair, ScriptedPeer, frame_bytes, make_connection

from .connutil import established, inject, sent

FAST = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)


# -- a recorded conversation ------------------------------------------------------------------


Step = tuple[str, Any]  # ("data", bytes received) or ("send", Event sent)


class Recording:
    """One conversation, kept as what each side received and sent, in order, and the
    events each side reported.  The randomness is seeded, so a fresh side that is fed the
    same bytes and makes the same sends writes the same bytes: the recording replays."""

    def __init__(self, big: int) -> None:
        self.pair = ConnectionPair(handshake=False, seed="recording")
        i, r = self.pair.initiator, self.pair.responder
        self.steps: dict[Role, list[Step]] = {Role.INITIATOR: [], Role.RESPONDER: []}
        self.events: dict[Role, list[Event]] = {Role.INITIATOR: [], Role.RESPONDER: []}
        i.start(0.0)
        r.start(0.0)
        self.flow()
        self.act(
            Role.INITIATOR,
            Open(stream_id=1, method="m"),
            Message(stream_id=1, body={"big": b"x" * big}),
            Ping(opaque=b"pingping"),
            Open(stream_id=3, method="n"),
        )
        self.act(
            Role.RESPONDER,
            Message(stream_id=1, body=[1, "two"], end_stream=True),
            Open(stream_id=2, method="push"),
            EndStream(stream_id=2),
            Reset(stream_id=3, code=ErrorCode.CANCEL, reason="no"),
        )
        self.act(
            Role.INITIATOR, EndStream(stream_id=1), Message(stream_id=2, body=None, end_stream=True)
        )
        self.act(Role.RESPONDER, GoAway(reason="done"))
        assert (i.state, r.state) == (ConnState.CLOSED, ConnState.CLOSED)

    def conn(self, role: Role) -> Connection:
        return self.pair.initiator if role is Role.INITIATOR else self.pair.responder

    def act(self, role: Role, *events: Event) -> None:
        for event in events:
            self.conn(role).send(event, 0.0)
            self.steps[role].append(("send", event))
        self.flow()

    def flow(self) -> None:
        while True:
            moved = False
            for sender, receiver in (
                (Role.INITIATOR, Role.RESPONDER),
                (Role.RESPONDER, Role.INITIATOR),
            ):
                data = self.conn(sender).data_to_send()
                if data:
                    moved = True
                    self.steps[receiver].append(("data", data))
                    self.events[receiver] += self.conn(receiver).receive_data(data, 0.0)
            if not moved:
                return

    def segments(self, role: Role) -> list[Step]:
        """The steps of ``role`` with consecutive received bytes joined into one."""
        out: list[Step] = []
        for kind, value in self.steps[role]:
            if kind == "data" and out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + value)
            else:
                out.append((kind, value))
        return out

    def replay(self, role: Role, cut: Callable[[bytes], list[bytes]]) -> list[Event]:
        """Run a fresh copy of one side through the recording, with every stretch of
        received bytes cut into pieces by ``cut``."""
        fresh = ConnectionPair(handshake=False, seed="recording")
        conn = fresh.initiator if role is Role.INITIATOR else fresh.responder
        conn.start(0.0)
        events: list[Event] = []
        for kind, value in self.segments(role):
            if kind == "send":
                conn.send(value, 0.0)
                continue
            for piece in cut(value):
                events += conn.receive_data(piece, 0.0)
        return events


SMALL_TALK = Recording(big=100)
BIG_TALK = Recording(big=300_000)


def _cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]  # b"" is EOF


def test_recording_covers_every_frame_type() -> None:
    events = SMALL_TALK.events[Role.INITIATOR] + SMALL_TALK.events[Role.RESPONDER]
    names = {type(e).__name__ for e in events}
    assert names >= {
        "HandshakeCompleted",
        "Open",
        "Message",
        "EndStream",
        "Reset",
        "Ping",
        "Pong",
        "GoAway",
    }


@pytest.mark.parametrize("role", list(Role))
def test_whole_and_one_byte_at_a_time(role: Role) -> None:
    expected = SMALL_TALK.events[role]
    assert SMALL_TALK.replay(role, lambda data: [data]) == expected
    assert SMALL_TALK.replay(role, lambda data: [data[n : n + 1] for n in range(len(data))]) == (
        expected
    )


def test_bytes_after_the_end_are_not_processed() -> None:
    # The initiator reaches CLOSED inside its last stretch of input (the GOAWAY); whatever
    # trails it is never looked at, not even its length field.
    role = Role.INITIATOR
    segments = SMALL_TALK.segments(role)
    last = max(n for n, (kind, _) in enumerate(segments) if kind == "data")

    def cut(stretch: bytes) -> list[bytes]:
        return (
            [stretch + b"\x00\x01trailing garbage"] if stretch == segments[last][1] else [stretch]
        )

    assert SMALL_TALK.replay(role, cut) == SMALL_TALK.events[role]


@FAST
@given(st.data())
@pytest.mark.parametrize("role", list(Role))
def test_random_chunking_changes_no_event(role: Role, data: st.DataObject) -> None:
    def cut(stretch: bytes) -> list[bytes]:
        if len(stretch) < 2:
            return [stretch]
        return _cut(stretch, data.draw(st.lists(st.integers(1, len(stretch) - 1), max_size=8)))

    assert BIG_TALK.replay(role, cut) == BIG_TALK.events[role]


# -- garbage ----------------------------------------------------------------------------------


def _fresh(state: str) -> Connection:
    if state == "initiator":
        conn = make_connection(Role.INITIATOR)
        conn.start(0.0)
        conn.data_to_send()
        return conn
    conn = make_connection(Role.RESPONDER)
    conn.start(0.0)
    if state == "after-hello":
        conn.receive_data(ScriptedPeer(Role.INITIATOR).write(), 0.0)
        conn.data_to_send()
    return conn


@given(st.binary(max_size=4096), st.sampled_from(["responder", "after-hello", "initiator"]))
def test_garbage_into_a_handshake(junk: bytes, state: str) -> None:
    conn = _fresh(state)
    try:
        conn.receive_data(junk, 0.0)
    except RemoteProtocolError:
        assert conn.state is ConnState.ERROR
        assert conn.data_to_send() == b""  # nothing is sent after a failed handshake


@given(st.binary(min_size=1, max_size=2048))
def test_raw_garbage_into_an_established_connection(junk: bytes) -> None:
    conn, _ = established()
    with contextlib.suppress(RemoteProtocolError):
        conn.receive_data(junk, 0.0)


def _check_after(conn: Connection, peer: ScriptedPeer, error: bool) -> None:
    frames = sent(conn, peer)  # whatever the connection wrote decodes cleanly
    if error:
        assert conn.state is ConnState.ERROR
        assert [f[0] for f in frames] == [F.GOAWAY]
    else:
        assert conn.state in (ConnState.OPEN, ConnState.CLOSING, ConnState.CLOSED)


@given(st.binary(max_size=2048))
def test_sealed_garbage_reaches_the_frame_parser(junk: bytes) -> None:
    conn, peer = established(settings=Settings(max_frame=1 << 16))
    try:
        conn.receive_data(peer.seal(junk), 0.0)
    except RemoteProtocolError:
        _check_after(conn, peer, error=True)
    else:
        _check_after(conn, peer, error=False)


ids = st.integers(0, 12)
fields = st.one_of(
    ids, st.binary(max_size=12), st.text(max_size=4), st.none(), st.integers(-1, 2**32)
)
frames = st.one_of(
    st.tuples(st.just(F.OPEN), ids, st.sampled_from(["m", ""])),
    st.tuples(
        st.just(F.DATA),
        ids,
        st.integers(0, 4),
        st.sampled_from([b"", b"\x01", b"\x92", b"\x01\x02", b"\xc1", b"\x92\x01\x02"]),
    ),
    st.tuples(st.just(F.CREDIT), ids, st.sampled_from([1, 100, 2**31 - 1])),
    st.tuples(st.just(F.RESET), ids, st.integers(0, 40), st.just("")),
    st.tuples(st.just(F.PING), st.just(b"12345678")),
    st.tuples(st.just(F.PONG), st.just(b"12345678")),
    st.tuples(st.just(F.GOAWAY), ids, st.sampled_from([0, 0, 2]), st.just("")),
    st.lists(fields, max_size=4).map(lambda f: (F.DATA, *f)),
    st.lists(fields, max_size=4).map(tuple),
)


@pytest.mark.slow
@given(st.lists(frames, max_size=12), st.sampled_from(list(Role)), st.booleans())
def test_random_frames_keep_the_connection_consistent(
    sequence: list[tuple[Any, ...]], role: Role, ours: bool
) -> None:
    conn, peer = established(role, settings=Settings(max_streams=2))
    if ours:  # give the connection streams of its own as well
        conn.send(Open(stream_id=conn.next_stream_id(), method="m"), 0.0)
        conn.send(Message(stream_id=conn.next_stream_id() - 2, body=b"y" * 100), 0.0)
        sent(conn, peer)
    for frame in sequence:
        try:
            events = conn.receive_data(peer.seal(frame_bytes(*frame)), 0.0)
        except RemoteProtocolError:
            _check_after(conn, peer, error=True)
            return
        for event in events:
            if isinstance(event, Message):
                conn.acknowledge(event.stream_id, event.size, 0.0)
        _check_after(conn, peer, error=False)
        if conn.state is ConnState.CLOSED:
            return


# -- every (state x input) pair ---------------------------------------------------------------

LOCAL, REMOTE = "LocalProtocolError", "RemoteProtocolError"
S = ConnState
HANDSHAKING = (S.AWAIT_INITIATOR_HELLO, S.AWAIT_RESPONDER_HELLO, S.AWAIT_INITIATOR_AUTH)


def _in_state(state: ConnState) -> Connection:
    if state in HANDSHAKING:
        return _fresh(
            {
                S.AWAIT_INITIATOR_HELLO: "responder",
                S.AWAIT_INITIATOR_AUTH: "after-hello",
                S.AWAIT_RESPONDER_HELLO: "initiator",
            }[state]
        )
    conn, peer = established()
    if state is S.CLOSING:
        inject(conn, peer, (F.OPEN, 1, "m"), (F.GOAWAY, 1, 0, ""))
    elif state is S.CLOSED:
        conn.receive_data(b"", 0.0)
    elif state is S.ERROR:
        with contextlib.suppress(RemoteProtocolError):
            conn.receive_data(b"\x00\x00", 0.0)
    conn.data_to_send()
    assert conn.state is state
    return conn


INPUTS: dict[str, Callable[[Connection], object]] = {
    "start": lambda c: c.start(1.0),
    "eof": lambda c: c.receive_data(b"", 1.0),
    "junk": lambda c: c.receive_data(b"\x00\x00", 1.0),
    "timer-early": lambda c: c.handle_timer(1.0),
    "timer-late": lambda c: c.handle_timer(1000.0),
    "open": lambda c: c.send(Open(stream_id=2, method="m"), 1.0),
    "message": lambda c: c.send(Message(stream_id=1, body=0), 1.0),
    "ping": lambda c: c.send(Ping(opaque=bytes(8)), 1.0),
    "goaway": lambda c: c.send(GoAway(), 1.0),
    "acknowledge": lambda c: c.acknowledge(1, 1, 1.0),
    "send_failed": lambda c: c.send_failed(),
}

_H = dict.fromkeys(HANDSHAKING)
# What each input does in each state: an error class name, or the state afterwards
# (None: unchanged).  OPEN has no streams; CLOSING has the peer's stream 1 open.
EXPECTED: dict[str, dict[ConnState, str | ConnState | None]] = {
    "start": {s: LOCAL for s in S},
    "eof": {
        **dict.fromkeys(HANDSHAKING, S.CLOSED),
        S.OPEN: S.CLOSED,
        S.CLOSING: S.CLOSED,
        S.CLOSED: LOCAL,
        S.ERROR: LOCAL,
    },
    "junk": {
        **dict.fromkeys(HANDSHAKING, REMOTE),
        S.OPEN: REMOTE,
        S.CLOSING: REMOTE,
        S.CLOSED: LOCAL,
        S.ERROR: LOCAL,
    },
    "timer-early": {s: None for s in S},
    "timer-late": {
        **dict.fromkeys(HANDSHAKING, S.ERROR),
        S.OPEN: None,
        S.CLOSING: None,
        S.CLOSED: None,
        S.ERROR: None,
    },
    "open": {**dict.fromkeys(S, LOCAL), S.OPEN: None},
    "message": {**dict.fromkeys(S, LOCAL), S.CLOSING: None},
    "ping": {**dict.fromkeys(S, LOCAL), S.OPEN: None, S.CLOSING: None},
    "goaway": {**dict.fromkeys(S, LOCAL), S.OPEN: S.CLOSED, S.CLOSING: None},
    "acknowledge": {**dict.fromkeys(S), S.OPEN: LOCAL, S.CLOSING: LOCAL},
    "send_failed": {s: S.ERROR for s in S},
}


def test_the_table_covers_every_pair() -> None:
    assert set(EXPECTED) == set(INPUTS)
    for name, row in EXPECTED.items():
        assert set(row) == set(ConnState), name


@pytest.mark.parametrize("state", list(ConnState))
@pytest.mark.parametrize("name", list(INPUTS))
def test_state_input_pair(state: ConnState, name: str) -> None:
    conn = _in_state(state)
    expected = EXPECTED[name][state]
    try:
        INPUTS[name](conn)
    except LocalProtocolError:
        assert expected == LOCAL
        assert conn.state is state  # the caller's mistake changes nothing
    except RemoteProtocolError:
        assert expected == REMOTE
        assert conn.state is ConnState.ERROR
    else:
        assert expected not in (LOCAL, REMOTE)
        assert conn.state is (expected or state)
    # The outputs can always be polled.
    conn.data_to_send()
    conn.next_deadline()
