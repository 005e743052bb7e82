"""Connections wired together in memory, and a peer played by hand, for tests.

``ConnectionPair`` is h11's ``ConnectionPair``: an initiator and a responder ``Connection``
that hand each other their bytes, with no sockets and no clock (time is ``pair.now``).
``ScriptedPeer`` is one end of a connection driven by hand, in the spirit of h2's
``FrameFactory``: it runs the Noise handshake through ``HandshakeState`` and then seals and
opens frames as raw bytes, so a test can send what a well-behaved ``Connection`` never
would (a bad identity signature, a frame beyond the window, an unknown frame type) and read
exactly what the connection under test put on the wire.

Everything is reproducible: identities and Noise keys come from ``deterministic_random``,
SHA-256 in counter mode over a seed.  Nothing here needs pytest.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from petalproto.core import (
    PROLOGUE,
    Config,
    Connection,
    Event,
    HandshakeCompleted,
    Identity,
    PeerId,
    Role,
    Settings,
)
from petalproto.core._buffer import ReceiveBuffer
from petalproto.core._frames import decode_frame
from petalproto.core._handshake import make_payload
from petalproto.core._noise import MAX_PLAINTEXT_LEN, CipherState, HandshakeState

__all__ = [
    "ConnectionPair",
    "ScriptedPeer",
    "deterministic_random",
    "frame_bytes",
    "make_connection",
    "make_identity",
]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def deterministic_random(seed: bytes | str = b"") -> Callable[[int], bytes]:
    """A reproducible stand-in for ``os.urandom``: SHA-256 in counter mode over ``seed``.

    Args:
        seed: different seeds give unrelated streams.

    Returns:
        ``random_bytes(n)``; successive calls return successive parts of one stream.
    """
    key = seed.encode() if isinstance(seed, str) else bytes(seed)
    counter = itertools.count()
    pending = bytearray()

    def random_bytes(n: int) -> bytes:
        while len(pending) < n:
            pending.extend(hashlib.sha256(key + next(counter).to_bytes(8, "big")).digest())
        out = bytes(pending[:n])
        del pending[:n]
        return out

    return random_bytes


def make_identity(name: str = "peer") -> Identity:
    """A reproducible identity whose Ed25519 seed is SHA-256 of ``name``."""
    return Identity.from_seed(hashlib.sha256(b"identity:" + name.encode()).digest())


def make_connection(
    role: Role,
    *,
    identity: Identity | None = None,
    config: Config | None = None,
    expected_peer: PeerId | None = None,
    seed: str | None = None,
) -> Connection:
    """A ``Connection`` with a reproducible identity and randomness.

    Args:
        role: INITIATOR or RESPONDER.
        identity: defaults to ``make_identity(role.value)``.
        config: defaults to ``Config()``.
        expected_peer: for an initiator, the peer id it dials.
        seed: seed of its randomness; defaults to the role's name.

    Returns:
        The connection, not started.
    """
    return Connection(
        role,
        identity=identity or make_identity(role.value),
        random_bytes=deterministic_random(seed if seed is not None else role.value),
        config=config,
        expected_peer=expected_peer,
    )


def frame_bytes(*elements: object) -> bytes:
    """One frame as it travels inside the decrypted stream: u32 length, msgpack array.

    The elements are not checked, so any shape can be built, e.g.
    ``frame_bytes(1, 1, "ping")`` for an OPEN or ``frame_bytes(99)`` for an unknown type.
    """
    body: bytes = msgpack.packb(list(elements), use_bin_type=True)
    return _U32.pack(len(body)) + body


class ConnectionPair:
    """An initiator and a responder ``Connection`` wired together byte for byte.

    Args:
        initiator_config: the initiator's config.
        responder_config: the responder's config.
        initiator_identity: defaults to ``make_identity("initiator")``.
        responder_identity: defaults to ``make_identity("responder")``.
        expected_peer: what the initiator dials; defaults to the responder's id.
        seed: varies the Noise keys of both sides.
        now: the starting time.
        handshake: run the handshake right away.
    """

    def __init__(
        self,
        *,
        initiator_config: Config | None = None,
        responder_config: Config | None = None,
        initiator_identity: Identity | None = None,
        responder_identity: Identity | None = None,
        expected_peer: PeerId | None = None,
        seed: str = "",
        now: float = 0.0,
        handshake: bool = True,
    ) -> None:
        responder_identity = responder_identity or make_identity("responder")
        self.now = now
        self.initiator = make_connection(
            Role.INITIATOR,
            identity=initiator_identity,
            config=initiator_config,
            expected_peer=expected_peer or responder_identity.peer_id,
            seed=f"{seed}initiator",
        )
        self.responder = make_connection(
            Role.RESPONDER,
            identity=responder_identity,
            config=responder_config,
            seed=f"{seed}responder",
        )
        if handshake:
            self.handshake()

    def other(self, conn: Connection) -> Connection:
        """The connection at the other end from ``conn``."""
        return self.responder if conn is self.initiator else self.initiator

    def transfer(self, sender: Connection) -> list[Event]:
        """Deliver everything ``sender`` has queued to the other side.

        Returns:
            The events the receiving side reported (none when nothing was queued).

        Raises:
            RemoteProtocolError: the receiver rejected the bytes.
        """
        data = sender.data_to_send()
        return self.other(sender).receive_data(data, self.now) if data else []

    def send(self, sender: Connection, *events: Event) -> list[Event]:
        """``sender.send`` each event, then deliver the bytes.

        Returns:
            The events the receiving side reported.
        """
        for event in events:
            sender.send(event, self.now)
        return self.transfer(sender)

    def exchange(self) -> tuple[list[Event], list[Event]]:
        """Move bytes both ways until neither side has anything to send.

        Returns:
            (events the initiator reported, events the responder reported).
        """
        at_initiator: list[Event] = []
        at_responder: list[Event] = []
        while True:
            moved = False
            for sender, events in ((self.initiator, at_responder), (self.responder, at_initiator)):
                data = sender.data_to_send()
                if data:
                    moved = True
                    events.extend(self.other(sender).receive_data(data, self.now))
            if not moved:
                return at_initiator, at_responder

    def handshake(self) -> tuple[HandshakeCompleted, HandshakeCompleted]:
        """Start both sides and run the Noise handshake to the end.

        Returns:
            (the initiator's HandshakeCompleted, the responder's).

        Raises:
            HandshakeFailed: one side rejected the other.
        """
        self.initiator.start(self.now)
        self.responder.start(self.now)
        at_initiator, at_responder = self.exchange()
        done = [
            next(e for e in events if isinstance(e, HandshakeCompleted))
            for events in (at_initiator, at_responder)
        ]
        return done[0], done[1]


class ScriptedPeer:
    """One end of a connection played by hand.

    The handshake runs through ``HandshakeState`` one message at a time (``write`` and
    ``read``), so each message and payload can be altered; ``establish`` runs it properly.
    Once it is done, ``seal`` encrypts any plaintext for the connection under test and
    ``receive`` decrypts and decodes what that connection sent.

    Args:
        role: the role this peer plays.
        identity: defaults to ``make_identity("scripted")``.
        settings: what ``payload()`` announces.
        prologue: the Noise prologue; change it to play a peer of another version.
        seed: seed of the Noise keys.
    """

    def __init__(
        self,
        role: Role,
        *,
        identity: Identity | None = None,
        settings: Settings | None = None,
        prologue: bytes = PROLOGUE,
        seed: str = "scripted",
    ) -> None:
        random_bytes = deterministic_random(seed)
        self.role = role
        self.identity = identity or make_identity("scripted")
        self.settings = settings or Settings()
        self.hs = HandshakeState(
            pattern="XX",
            initiator=role is Role.INITIATOR,
            prologue=prologue,
            static_key=random_bytes(32),
            random_bytes=random_bytes,
        )
        static_public = self.hs.static_public
        assert static_public is not None
        self.static_public = static_public
        self.send_cs: CipherState | None = None
        self.recv_cs: CipherState | None = None
        self._wire = ReceiveBuffer()
        self._plain = ReceiveBuffer()

    # -- handshake ---------------------------------------------------------------------------

    def payload(
        self,
        *,
        identity: Identity | None = None,
        static_public: bytes | None = None,
        settings: Settings | None = None,
    ) -> bytes:
        """A handshake payload (SPEC.md §6.4), valid unless an argument says otherwise.

        Args:
            identity: sign as someone else.
            static_public: sign a Noise static key other than ours.
            settings: announce other settings.
        """
        return make_payload(
            identity or self.identity,
            self.static_public if static_public is None else static_public,
            settings or self.settings,
        )

    def write(self, payload: bytes = b"") -> bytes:
        """Our next handshake message with ``payload``, length prefix included."""
        message = self.hs.write_message(payload)
        self._split_if_done()
        return _U16.pack(len(message)) + message

    def read(self, data: bytes) -> bytes:
        """Read exactly one length-prefixed handshake message.

        Returns:
            The payload it carried.

        Raises:
            HandshakeFailed: the message does not decrypt.
        """
        (length,) = _U16.unpack(data[:2])
        assert len(data) == 2 + length, "expected exactly one handshake message"
        payload = self.hs.read_message(data[2:])
        self._split_if_done()
        return payload

    def establish(self, conn: Connection, now: float = 0.0) -> list[Event]:
        """Start ``conn`` (of the other role) and complete a valid handshake with it.

        Returns:
            The events ``conn`` reported; the last is its ``HandshakeCompleted``.
        """
        conn.start(now)
        if self.role is Role.INITIATOR:
            conn.receive_data(self.write(), now)
            self.read(conn.data_to_send())
            return conn.receive_data(self.write(self.payload()), now)
        self.read(conn.data_to_send())
        events = conn.receive_data(self.write(self.payload()), now)
        self.read(conn.data_to_send())
        return events

    def _split_if_done(self) -> None:
        if self.hs.complete:
            self.send_cs, self.recv_cs = self.hs.split()

    # -- transport ---------------------------------------------------------------------------

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` into as many transport messages as it needs (SPEC.md §7.1).

        An empty ``plaintext`` still gives one message (a bare tag).
        """
        assert self.send_cs is not None, "the handshake is not done"
        out = []
        for start in range(0, max(len(plaintext), 1), MAX_PLAINTEXT_LEN):
            sealed = self.send_cs.encrypt_with_ad(b"", plaintext[start : start + MAX_PLAINTEXT_LEN])
            out.append(_U16.pack(len(sealed)) + sealed)
        return b"".join(out)

    def open(self, data: bytes) -> bytes:
        """Decrypt transport messages from the connection under test.

        Returns:
            The plaintext of every complete message in ``data`` (and in earlier calls'
            leftovers).
        """
        assert self.recv_cs is not None, "the handshake is not done"
        self._wire.feed(data)
        out = bytearray()
        while len(self._wire) >= 2:
            (length,) = _U16.unpack(self._wire.peek(2))
            if len(self._wire) < 2 + length:
                break
            self._wire.skip(2)
            out += self.recv_cs.decrypt_with_ad(b"", self._wire.take(length))
        return bytes(out)

    def receive(self, data: bytes) -> list[tuple[Any, ...]]:
        """Decrypt ``data`` and decode the complete frames in it.

        Returns:
            One ``(FrameType, field, ...)`` tuple per frame.
        """
        self._plain.feed(self.open(data))
        frames = []
        while len(self._plain) >= 4:
            (length,) = _U32.unpack(self._plain.peek(4))
            if len(self._plain) < 4 + length:
                break
            self._plain.skip(4)
            frames.append(decode_frame(self._plain.take(length)))
        return frames
