"""One link to one peer: Noise XX handshake, then encrypted msgpack frames (SPEC.md §6 to §9).

Theory of operation
-------------------
Bytes arrive through ``receive_data``.  They are cut into Noise messages by their 2-byte
big-endian length (SPEC.md §7.1).  The first three messages are the XX handshake:

    INITIATOR                                   RESPONDER
    start(): -> e                 (32 bytes)    AWAIT_INITIATOR_HELLO
    AWAIT_RESPONDER_HELLO     <- e, ee, s, es + payload
    -> s, se + payload; OPEN      AWAIT_INITIATOR_AUTH -> OPEN

The payloads of messages 2 and 3 bind each side's Ed25519 identity to its Noise static key
(``_handshake``).  Every handshake message has a length window; a length outside it aborts
before its body is read.  Any handshake failure moves to ERROR without sending anything:
there are no keys yet to protect an error frame.

After the handshake every Noise message is a ChaCha20-Poly1305 ciphertext of a piece of
the plaintext byte stream, in which frames follow each other (4-byte length, msgpack body,
SPEC.md §7.2).  A frame length above our ``max_frame`` is rejected as soon as its four
length bytes are in, before any of its body is buffered.  Decoded frames go to the
``Multiplexer``.

Errors: a peer's violation raises RemoteProtocolError (or a subclass) out of
``receive_data`` after queuing a GOAWAY with its code when transport keys exist; the
state is then ERROR and the shell only flushes and closes.  Our caller's misuse raises
LocalProtocolError and leaves the state alone.

States and the inputs each accepts:

    AWAIT_*      receive_data, handle_timer (handshake deadline)
    OPEN         everything
    CLOSING      we or the peer sent a graceful GOAWAY; existing streams finish
    CLOSED       clean end; ERROR: broken.  Both accept nothing but are harmless to poll.

This module never does I/O, reads a clock or draws randomness itself.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ._buffer import ReceiveBuffer
from ._errors import (
    ErrorCode,
    FrameTooLarge,
    HandshakeFailed,
    LocalProtocolError,
    MalformedMessage,
    PeerIdMismatch,
    RemoteProtocolError,
)
from ._events import (
    ConnectionClosed,
    Event,
    GoAway,
    HandshakeCompleted,
    Open,
    Ping,
    Settings,
)
from ._frames import decode_frame
from ._handshake import MAX_PAYLOAD, PROLOGUE, make_payload, read_payload
from ._identity import Identity, PeerId
from ._mux import Multiplexer
from ._noise import MAX_PLAINTEXT_LEN, TAG_LEN, CipherState, HandshakeState

__all__ = ["Config", "ConnState", "Connection", "Role"]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class ConnState(enum.Enum):
    AWAIT_INITIATOR_HELLO = "await-initiator-hello"
    AWAIT_RESPONDER_HELLO = "await-responder-hello"
    AWAIT_INITIATOR_AUTH = "await-initiator-auth"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    ERROR = "error"


_HANDSHAKE_STATES = (
    ConnState.AWAIT_INITIATOR_HELLO,
    ConnState.AWAIT_RESPONDER_HELLO,
    ConnState.AWAIT_INITIATOR_AUTH,
)
_DONE_STATES = (ConnState.CLOSED, ConnState.ERROR)

# SPEC.md §6.3: the length window of each handshake message we may receive, as
# (smallest, largest).  msg1 is a bare ephemeral key; msg2 = e(32) + s(32+16) +
# payload(P+16); msg3 = s(32+16) + payload(P+16), with 1 <= P <= MAX_PAYLOAD.
_HANDSHAKE_LENGTHS = {
    ConnState.AWAIT_INITIATOR_HELLO: (32, 32),
    ConnState.AWAIT_RESPONDER_HELLO: (97, 96 + MAX_PAYLOAD),
    ConnState.AWAIT_INITIATOR_AUTH: (65, 64 + MAX_PAYLOAD),
}


class Config:
    """Local settings and timeouts of a connection.

    Args:
        settings: what we announce to the peer (our receive limits).
        handshake_timeout: seconds the whole handshake may take.
        keepalive_interval: seconds of silence from the peer before we PING it.
        idle_timeout: seconds of silence from the peer before we give up on it.
        batch_credit: hold consumed credit back while the peer has at least half of a
            window left, and grant it in one CREDIT (SPEC.md §8.5); False grants every
            acknowledged message at once.
    """

    __slots__ = (
        "batch_credit",
        "handshake_timeout",
        "idle_timeout",
        "keepalive_interval",
        "settings",
    )

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        handshake_timeout: float = 10.0,
        keepalive_interval: float = 15.0,
        idle_timeout: float = 45.0,
        batch_credit: bool = True,
    ) -> None:
        if not 0 < keepalive_interval < idle_timeout or handshake_timeout <= 0:
            raise ValueError("need 0 < keepalive_interval < idle_timeout, handshake_timeout > 0")
        self.settings = settings or Settings()
        self.handshake_timeout = handshake_timeout
        self.keepalive_interval = keepalive_interval
        self.idle_timeout = idle_timeout
        self.batch_credit = batch_credit


class Connection:
    """One link to one peer: Noise handshake, then msgpack frames on streams.

    Args:
        role: INITIATOR for the side that dialled.
        identity: our Ed25519 identity.
        random_bytes: source of randomness (ephemeral and static Noise keys).
        config: settings and timeouts.
        expected_peer: for the initiator, the peer id it meant to dial (SPEC.md §6.6).
    """

    def __init__(
        self,
        role: Role,
        *,
        identity: Identity,
        random_bytes: Callable[[int], bytes],
        config: Config | None = None,
        expected_peer: PeerId | None = None,
    ) -> None:
        self.role = role
        self.config = config or Config()
        self.identity = identity
        self.expected_peer = expected_peer
        self.peer_id: PeerId | None = None
        self.peer_settings: Settings | None = None
        self._random_bytes = random_bytes
        static = X25519PrivateKey.from_private_bytes(random_bytes(32))
        self._static_public = static.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._hs: HandshakeState | None = HandshakeState(
            pattern="XX",
            initiator=role is Role.INITIATOR,
            prologue=PROLOGUE,
            static_key=static.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            ),
            random_bytes=random_bytes,
        )
        self._state = (
            ConnState.AWAIT_RESPONDER_HELLO
            if role is Role.INITIATOR
            else ConnState.AWAIT_INITIATOR_HELLO
        )
        self._started = False
        self._wire_in = ReceiveBuffer()
        self._plain_in = ReceiveBuffer()
        self._wire_out: list[bytes | bytearray] = []
        self._send_cs: CipherState | None = None
        self._recv_cs: CipherState | None = None
        self._mux: Multiplexer | None = None
        self._handshake_deadline = 0.0
        self._last_heard = 0.0
        self._ping_sent = False

    # ------------------------------------------------------------------ outputs

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def has_data_to_send(self) -> bool:
        """Whether ``data_to_send`` would return bytes (cheaper than calling it)."""
        return bool(self._wire_out) or (self._mux is not None and bool(self._mux.out))

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call (``b""`` when nothing is)."""
        if self._mux is not None and self._mux.out:
            self._seal()
        out = b"".join(self._wire_out)
        self._wire_out.clear()
        return out

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` next has work, or None."""
        if not self._started or self._state in _DONE_STATES:
            return None
        if self._state in _HANDSHAKE_STATES:
            return self._handshake_deadline
        if self._ping_sent:
            return self._last_heard + self.config.idle_timeout
        return self._last_heard + self.config.keepalive_interval

    def buffered(self, stream_id: int) -> int:
        """Bytes of ``stream_id`` still waiting for the peer's credit."""
        return self._mux.buffered(stream_id) if self._mux else 0

    def next_stream_id(self) -> int:
        """The id the next ``Open`` we send must carry.

        Raises:
            LocalProtocolError: the handshake is not done.
        """
        return self._open_mux().next_stream_id()

    @property
    def active_streams(self) -> int:
        return self._mux.active if self._mux else 0

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> None:
        """Begin the handshake; the initiator's first message is then in ``data_to_send``.

        Raises:
            LocalProtocolError: called twice.
        """
        if self._started:
            raise LocalProtocolError("already started")
        self._started = True
        self._handshake_deadline = now + self.config.handshake_timeout
        self._last_heard = now
        if self.role is Role.INITIATOR:
            assert self._hs is not None
            self._write_noise(self._hs.write_message(b""))

    def send(self, event: Event, now: float) -> None:
        """Queue ``event`` (Open, Message, EndStream, Reset, Ping, Pong or GoAway).

        Raises:
            LocalProtocolError: the event is not allowed now.
        """
        mux = self._open_mux()
        if isinstance(event, GoAway):
            mux.go_away(event.code, event.reason)
            if event.code is ErrorCode.NO_ERROR:
                self._state = ConnState.CLOSING
                self._maybe_finish()
            else:
                self._state = ConnState.CLOSED
            return
        if isinstance(event, Open) and self._state is not ConnState.OPEN:
            raise LocalProtocolError("the connection is closing; no new streams")
        mux.send(event)
        self._maybe_finish()

    def acknowledge(self, stream_id: int, size: int, now: float) -> None:
        """The application consumed a received ``Message`` of ``size`` bytes: give the
        credit back to the peer (SPEC.md §8.5). Harmless after the connection ended.

        Args:
            stream_id: the stream the message came on.
            size: the message's ``size``.
            now: the current time (unused; inputs all take it).

        Raises:
            LocalProtocolError: more bytes acknowledged than the peer sent.
        """
        if self._mux is not None and self._state not in _DONE_STATES:
            self._mux.acknowledge(stream_id, size)

    def send_failed(self) -> None:
        """The shell could not write what we gave it; the wire is in an unknown state."""
        self._state = ConnState.ERROR

    def handle_timer(self, now: float) -> list[Event]:
        """Run whatever is due at ``now``; harmless when called early or late."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        if self._state in _HANDSHAKE_STATES:
            self._state = ConnState.ERROR
            return [ConnectionClosed(code=ErrorCode.HANDSHAKE_FAILED, reason="handshake timeout")]
        mux = self._open_mux()
        if self._ping_sent:
            mux.go_away(ErrorCode.IDLE_TIMEOUT, "peer silent")
            self._state = ConnState.CLOSED
            return [ConnectionClosed(code=ErrorCode.IDLE_TIMEOUT, reason="peer silent")]
        mux.send(Ping(opaque=self._random_bytes(8)))
        self._ping_sent = True
        return []

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Feed bytes from the peer; ``b""`` means the peer closed its side.

        Returns:
            The events those bytes caused, in order.

        Raises:
            RemoteProtocolError: the peer broke the protocol (a subclass names how); the
                state is then ERROR and a GOAWAY is queued when keys exist.
            LocalProtocolError: the connection was already over.
        """
        if self._state in _DONE_STATES:
            raise LocalProtocolError(f"connection is {self._state.value}")
        if not self._started:
            raise LocalProtocolError("call start() first")
        if not data:
            return self._eof()
        self._last_heard = now
        self._ping_sent = False
        events: list[Event] = []
        try:
            self._drain_wire(memoryview(data).cast("B"), events)
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        return events

    # ------------------------------------------------------------------ internals

    def _open_mux(self) -> Multiplexer:
        if self._mux is None or self._state not in (ConnState.OPEN, ConnState.CLOSING):
            raise LocalProtocolError(f"connection is {self._state.value}")
        return self._mux

    def _eof(self) -> list[Event]:
        was = self._state
        self._state = ConnState.CLOSED
        if was in _HANDSHAKE_STATES:
            return [
                ConnectionClosed(
                    code=ErrorCode.HANDSHAKE_FAILED, reason="EOF in handshake", by_peer=True
                )
            ]
        clean = was is ConnState.CLOSING and not len(self._plain_in) and not len(self._wire_in)
        code = ErrorCode.NO_ERROR if clean or not self.active_streams else ErrorCode.CANCEL
        return [ConnectionClosed(code=code, reason="EOF", by_peer=True)]

    def _fail(self, exc: RemoteProtocolError) -> None:
        if self._mux is None:
            # A failed handshake sends nothing more (SPEC.md §6.6), not even a message 2
            # that this receive_data call made from a valid message 1 before the bad bytes.
            self._wire_out.clear()
        else:
            # Errors are raised only while frames are processed, so the state is OPEN or
            # CLOSING here: there are keys to carry the GOAWAY (SPEC.md §7.3).
            self._mux.out.clear()
            self._mux.go_away(exc.code, exc.msg[:200])
            self._seal()
        self._state = ConnState.ERROR

    def _noise_length(self, header: bytes | memoryview) -> int:
        """Check a Noise message's length field before its body is read (SPEC.md §6.3,
        §7.1)."""
        (length,) = _U16.unpack(header)
        if self._state in _HANDSHAKE_STATES:
            low, high = _HANDSHAKE_LENGTHS[self._state]
            if not low <= length <= high:
                raise HandshakeFailed(f"handshake message of {length} bytes")
        elif length < TAG_LEN:
            raise RemoteProtocolError(f"transport message of {length} bytes")
        return int(length)

    def _drain_wire(self, data: memoryview, events: list[Event]) -> None:
        """Handle every complete Noise message in the buffer and ``data``.

        A message begun in an earlier call is completed in ``_wire_in`` with just the bytes
        it lacks; the messages after it are read straight out of ``data``, and only an
        incomplete last one is buffered.  So bytes are copied once at most.
        """
        pos, end = 0, len(data)
        while len(self._wire_in) and self._state not in _DONE_STATES:
            have = len(self._wire_in)
            need = 2 - have if have < 2 else 2 + self._noise_length(self._wire_in.peek(2)) - have
            take = min(need, end - pos)
            self._wire_in.feed(data[pos : pos + take])
            pos += take
            if take < need:
                return
            if have < 2:
                continue  # the length is complete now; go round for the body
            self._wire_in.skip(2)
            self._handle_noise(self._wire_in.take(len(self._wire_in)), events)
        while end - pos >= 2 and self._state not in _DONE_STATES:
            length = self._noise_length(data[pos : pos + 2])
            if end - pos < 2 + length:
                break
            self._handle_noise(data[pos + 2 : pos + 2 + length], events)
            pos += 2 + length
        if pos < end and self._state not in _DONE_STATES:
            self._wire_in.feed(data[pos:])

    def _handle_noise(self, message: bytes | memoryview, events: list[Event]) -> None:
        if self._state in _HANDSHAKE_STATES:
            self._handle_handshake(bytes(message), events)
        else:
            assert self._recv_cs is not None
            self._drain_plaintext(self._recv_cs.decrypt_with_ad(b"", message), events)

    def _drain_plaintext(self, plaintext: bytes, events: list[Event]) -> None:
        """Parse the frames of a decrypted transport message.

        Senders align frames with transport messages (SPEC.md §8.4), so the common case
        parses straight out of ``plaintext``; only a frame split across messages is
        gathered in ``_plain_in``, and parsed once it is complete.
        """
        if len(self._plain_in):
            self._plain_in.feed(plaintext)
            header = self._plain_in.peek(4)
            if len(header) < 4 or len(self._plain_in) < 4 + self._frame_length(header):
                return
            plaintext = self._plain_in.take(len(self._plain_in))
        view = memoryview(plaintext)
        used = self._parse_frames(view, events)
        if used < len(view) and self._state not in _DONE_STATES:
            self._plain_in.feed(view[used:])
            if len(self._plain_in) >= 4:
                self._frame_length(self._plain_in.peek(4))

    def _frame_length(self, header: bytes | memoryview) -> int:
        """Check a frame's length field as soon as it is complete (SPEC.md §7.2)."""
        (length,) = _U32.unpack(header)
        if length > self.config.settings.max_frame:
            raise FrameTooLarge(
                f"frame of {length} bytes exceeds our limit of {self.config.settings.max_frame}"
            )
        if length == 0:
            raise MalformedMessage("empty frame")
        return int(length)

    def _parse_frames(self, view: memoryview, events: list[Event]) -> int:
        """Handle the complete frames at the start of ``view``; returns the bytes used."""
        assert self._mux is not None
        used, end = 0, len(view)
        while end - used >= 4 and self._state not in _DONE_STATES:
            length = self._frame_length(view[used : used + 4])
            if end - used < 4 + length:
                break
            frame = decode_frame(view[used + 4 : used + 4 + length])
            used += 4 + length
            new = self._mux.handle_frame(frame)
            events.extend(new)
            self._after_frames(new, events)
        return used

    def _after_frames(self, new: list[Event], events: list[Event]) -> None:
        for event in new:
            if isinstance(event, GoAway):
                if event.code is not ErrorCode.NO_ERROR:
                    self._state = ConnState.CLOSED
                    events.append(
                        ConnectionClosed(code=event.code, reason=event.reason, by_peer=True)
                    )
                    return
                self._state = ConnState.CLOSING
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._state is ConnState.CLOSING and self._mux is not None and not self._mux.active:
            self._state = ConnState.CLOSED

    def _handle_handshake(self, message: bytes, events: list[Event]) -> None:
        hs = self._hs
        assert hs is not None
        payload = hs.read_message(message)
        if self._state is ConnState.AWAIT_INITIATOR_HELLO:
            # The length window (exactly 32 bytes: a bare ``e``) already kept message 1's
            # payload empty, as SPEC.md §6.4 requires.
            self._write_noise(hs.write_message(self._payload()))
            self._state = ConnState.AWAIT_INITIATOR_AUTH
            return
        remote_static = hs.remote_static
        assert remote_static is not None
        peer, settings = read_payload(payload, remote_static)
        if self.expected_peer is not None and peer != self.expected_peer:
            raise PeerIdMismatch(f"dialled {self.expected_peer} but reached {peer}")
        if self._state is ConnState.AWAIT_RESPONDER_HELLO:
            self._write_noise(hs.write_message(self._payload()))
        self._send_cs, self._recv_cs = hs.split()
        self.peer_id, self.peer_settings = peer, settings
        self._mux = Multiplexer(
            initiator=self.role is Role.INITIATOR,
            ours=self.config.settings,
            theirs=settings,
            batch_credit=self.config.batch_credit,
        )
        self._hs = None
        self._state = ConnState.OPEN
        events.append(
            HandshakeCompleted(peer_id=peer, settings=settings, handshake_hash=hs.handshake_hash)
        )

    def _payload(self) -> bytes:
        return make_payload(self.identity, self._static_public, self.config.settings)

    def _write_noise(self, message: bytes) -> None:
        self._wire_out.append(_U16.pack(len(message)) + message)

    def _seal(self) -> None:
        """Encrypt the multiplexer's pending frames into Noise transport messages.

        Frames go into messages whole, as many as fit, so that no frame straddles two
        messages: every frame we write fits one (a DATA frame is at most 65503 bytes,
        ``DATA_CHUNK``), which is what SPEC.md §8.4 asks of senders.
        """
        assert self._mux is not None and self._send_cs is not None
        messages: list[list[bytes | memoryview]] = []
        size = MAX_PLAINTEXT_LEN + 1  # forces a new message for the first frame
        left = 0  # bytes of the current frame still to come; a frame may be several pieces
        for piece in self._mux.out:
            if not piece:
                continue  # the empty chunk of a DATA frame that only ends a stream
            if not left:  # a frame starts with this piece: its length prefix is in it
                left = 4 + int.from_bytes(piece[:4], "big")
                if size + left > MAX_PLAINTEXT_LEN:
                    messages.append([])
                    size = 0
            messages[-1].append(piece)
            size += len(piece)
            left -= len(piece)
        self._mux.out.clear()
        # One buffer for all the messages, each encrypted in place after its length.
        lengths = [sum(len(p) for p in pieces) for pieces in messages]
        out = bytearray(sum(lengths) + len(lengths) * (2 + TAG_LEN))
        view, at = memoryview(out), 0
        encrypt_into = self._send_cs.encrypt_into
        for pieces, length in zip(messages, lengths, strict=True):
            view[at : at + 2] = _U16.pack(length + TAG_LEN)
            plain = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            encrypt_into(b"", plain, view[at + 2 : at + 2 + length + TAG_LEN])
            at += 2 + length + TAG_LEN
        view.release()
        self._wire_out.append(out)
