"""The fault-injecting client: our side of one connection to the target, byte by byte.

Unlike ``petalproto.net``, nothing here protects the target from us.  ``Wire`` is a raw TCP
stream with a bounded hex wirelog; ``Session`` runs the Noise XX initiator from our own
core pieces (``HandshakeState``, the payload helpers, ``CipherState``, the frame codec),
but every message passes through the case first, so a case can tamper with a byte, send a
bad signature, lie about a length, replay a transport message or stop half-way.

Reads take an absolute trio deadline and raise ``WireTimeout`` when it passes; the harness
turns that into a violation of the case's requirement ("hanging until the timeout is a
failure").  Anything the target sends that we cannot decrypt or decode raises
``TargetViolation``, which is always a FAIL.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petalproto.core import ErrorCode, Identity, PeerId, Settings
from petalproto.core._errors import HandshakeFailed, ProtocolError, RemoteProtocolError
from petalproto.core._frames import DataFlags, FrameType, decode_frame, encode_frame
from petalproto.core._handshake import PROLOGUE, SIG_PREFIX, make_payload, read_payload
from petalproto.core._msgpack import decode_strict, encode
from petalproto.core._noise import MAX_PLAINTEXT_LEN, CipherState, HandshakeState

__all__ = [
    "Hello",
    "Observation",
    "Session",
    "TargetViolation",
    "Wire",
    "WireLog",
    "WireTimeout",
    "describe_frame",
    "fresh_ephemeral",
    "raw_frame",
]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_RECV = 65536


class WireTimeout(Exception):
    """The target did not do what the case waits for before the deadline."""


class TargetViolation(Exception):
    """The target sent bytes that no conforming peer sends (undecryptable, malformed)."""


# ----------------------------------------------------------------------------- the wirelog


class WireLog:
    """What crossed the wire, in hex, bounded so a report stays small.

    Entries record the TCP bytes each way and, after the handshake, each plaintext frame.
    """

    MAX_ENTRIES = 64
    MAX_ENTRY_BYTES = 256
    MAX_TOTAL_BYTES = 8 * 1024

    def __init__(self, start: float) -> None:
        self._start = start
        self._entries: list[dict[str, Any]] = []
        self._total = 0
        self.dropped = 0

    def add(
        self, direction: str, layer: str, data: bytes | bytearray | memoryview, note: str = ""
    ) -> None:
        """Record ``data`` sent (``direction="send"``) or received (``"recv"``)."""
        shown = bytes(data[: self.MAX_ENTRY_BYTES])
        full = len(self._entries) >= self.MAX_ENTRIES
        if full or self._total + len(shown) > self.MAX_TOTAL_BYTES:
            self.dropped += 1
            return
        self._total += len(shown)
        entry: dict[str, Any] = {
            "t_ms": round((time.monotonic() - self._start) * 1000, 3),
            "dir": direction,
            "layer": layer,
            "len": len(data),
            "hex": shown.hex(),
        }
        if len(data) > len(shown):
            entry["truncated"] = True
        if note:
            entry["note"] = note
        self._entries.append(entry)

    def to_json(self) -> list[dict[str, Any]]:
        out = list(self._entries)
        if self.dropped:
            out.append({"dropped_entries": self.dropped})
        return out


# ----------------------------------------------------------------------------- raw TCP


class Wire:
    """One TCP connection to the target, with a receive buffer and the wirelog."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, log: WireLog) -> None:
        self._stream = stream
        self.log = log
        self._buffer = bytearray()
        self.eof = False
        self.reset = False
        self.send_failed = False
        self._closed = False

    async def send(self, data: bytes | bytearray | memoryview, note: str = "") -> bool:
        """Write ``data``.

        Returns:
            False when the target has already gone (the write failed); cases then go on
            to read what the target said before leaving.
        """
        self.log.add("send", "tcp", data, note)
        if self.send_failed or self._closed:
            return False
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.send_failed = True
            return False
        return True

    async def send_eof(self) -> None:
        """Half-close our direction (TCP FIN)."""
        self.log.add("send", "tcp", b"", "EOF")
        try:
            await self._stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.send_failed = True

    async def _fill(self, deadline: float, what: str) -> bool:
        """Read more bytes into the buffer. Returns: False at EOF.

        Raises:
            WireTimeout: nothing arrived by ``deadline``.
        """
        if self.eof:
            return False
        data: bytes | bytearray = b""
        with trio.move_on_at(deadline) as scope:
            try:
                data = await self._stream.receive_some(_RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.reset = True
        if scope.cancelled_caught:
            raise WireTimeout(f"still waiting for {what}")
        if not data:
            self.eof = True
            self.log.add("recv", "tcp", b"", "connection reset" if self.reset else "EOF")
            return False
        self.log.add("recv", "tcp", data)
        self._buffer += data
        return True

    async def _ensure(self, n: int, deadline: float, what: str) -> bool:
        """Buffer at least ``n`` bytes; False when the target closed first."""
        while len(self._buffer) < n:
            if not await self._fill(deadline, what):
                return False
        return True

    async def read_exact(self, n: int, deadline: float, what: str) -> bytes | None:
        """Exactly ``n`` bytes, or None when the target closed first.

        A timeout consumes nothing, so the read can be retried.
        """
        if not await self._ensure(n, deadline, what):
            return None
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def read_noise(self, deadline: float, what: str = "a Noise message") -> bytes | None:
        """One length-prefixed Noise message, or None at EOF; a timeout consumes nothing."""
        if not await self._ensure(2, deadline, what):
            if self._buffer:
                raise TargetViolation("the connection ended inside a length field")
            return None
        (length,) = _U16.unpack(self._buffer[:2])
        if not await self._ensure(2 + length, deadline, what):
            raise TargetViolation(f"the connection ended inside a {length}-byte Noise message")
        body = bytes(self._buffer[2 : 2 + length])
        del self._buffer[: 2 + length]
        return body

    async def read_any(self, deadline: float, what: str) -> bytes:
        """Whatever is buffered or arrives next; ``b""`` at EOF.

        Raises:
            WireTimeout: nothing arrived by ``deadline``.
        """
        if not self._buffer and not await self._fill(deadline, what):
            return b""
        out = bytes(self._buffer)
        self._buffer.clear()
        return out

    async def read_until_eof(self, deadline: float, what: str = "the target to close") -> bytes:
        """Everything the target sends until it closes.

        Raises:
            WireTimeout: the connection is still open at ``deadline``.
        """
        while await self._fill(deadline, what):
            pass
        out = bytes(self._buffer)
        self._buffer.clear()
        return out

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._stream.aclose()


# ----------------------------------------------------------------------------- frames


def raw_frame(body: bytes) -> bytes:
    """A frame with an arbitrary body: the 4-byte length, then the body as given."""
    return _U32.pack(len(body)) + body


_FLAG_NAMES = (("END_MESSAGE", DataFlags.END_MESSAGE), ("END_STREAM", DataFlags.END_STREAM))


def _code_name(code: object) -> str:
    try:
        return ErrorCode(code).name  # type: ignore[arg-type]
    except ValueError:
        return str(code)


def describe_frame(frame: tuple[Any, ...]) -> str:
    """A short human form of a decoded frame, for ``observed`` texts."""
    kind, *fields = frame
    match kind:
        case FrameType.DATA:
            names = [name for name, bit in _FLAG_NAMES if fields[1] & bit]
            return f"DATA(stream {fields[0]}, {'|'.join(names) or '0'}, {len(fields[2])} bytes)"
        case FrameType.RESET:
            return f"RESET(stream {fields[0]}, {_code_name(fields[1])}, {fields[2]!r})"
        case FrameType.GOAWAY:
            return f"GOAWAY(last {fields[0]}, {_code_name(fields[1])}, {fields[2]!r})"
        case FrameType.PING | FrameType.PONG:
            return f"{kind.name}({fields[0].hex()})"
        case _:
            return f"{FrameType(kind).name}{tuple(fields)}"


@dataclass(slots=True)
class Observation:
    """The frames the target sent while a case watched, and how the watch ended."""

    frames: list[tuple[Any, ...]] = field(default_factory=list)
    closed: bool = False
    reset: bool = False
    timed_out: bool = False

    def of(self, kind: FrameType, stream_id: int | None = None) -> list[tuple[Any, ...]]:
        return [f for f in self.frames if f[0] is kind and (stream_id is None or f[1] == stream_id)]

    @property
    def goaway(self) -> tuple[Any, ...] | None:
        found = self.of(FrameType.GOAWAY)
        return found[0] if found else None

    def summary(self) -> str:
        shown = [describe_frame(f) for f in self.frames if f[0] is not FrameType.CREDIT]
        if self.closed:
            shown.append("connection reset" if self.reset else "close")
        elif self.timed_out:
            shown.append("still open")
        return ", then ".join(shown) if shown else "nothing"


# ----------------------------------------------------------------------------- the session


def fresh_ephemeral() -> bytes:
    """The public half of a new X25519 key pair: a well-formed ``e`` for message 1."""
    return X25519PrivateKey.generate().public_key().public_bytes_raw()


@dataclass(frozen=True, slots=True)
class Hello:
    """What the target said in handshake message 2."""

    message: bytes
    payload: bytes
    remote_static: bytes
    fields: dict[str, Any]
    peer_id: PeerId
    settings: Settings


class Session:
    """Our side of one connection: a scriptable XX initiator, then encrypted frames.

    Args:
        wire: the TCP connection.
        prologue: the Noise prologue we hash (SPEC.md §6.2); a wrong one is a fault.
        settings: what our payload announces.
        static_private: our X25519 static key (default: a fresh one), for a case that must
            know the bytes its identity signature covers before the handshake starts.
    """

    def __init__(
        self,
        wire: Wire,
        *,
        prologue: bytes = PROLOGUE,
        settings: Settings | None = None,
        static_private: bytes | None = None,
    ) -> None:
        self.wire = wire
        self.identity = Identity.from_seed(os.urandom(32))
        self.settings = settings or Settings(agent="petal-conformance")
        self.static_private = static_private or os.urandom(32)
        self.hs = HandshakeState(
            pattern="XX",
            initiator=True,
            prologue=prologue,
            static_key=self.static_private,
            random_bytes=os.urandom,
        )
        static_public = self.hs.static_public
        assert static_public is not None
        self.static_public = static_public
        self.hello: Hello | None = None
        self.send_cs: CipherState | None = None
        self.recv_cs: CipherState | None = None
        self._plain = bytearray()

    # -- handshake pieces ------------------------------------------------------------------

    def msg1(self, payload: bytes = b"") -> bytes:
        """Our handshake message 1 (``-> e``); the payload travels in clear."""
        return self.hs.write_message(payload)

    async def send_noise(
        self, message: bytes, *, length: int | None = None, note: str = ""
    ) -> bool:
        """Send one Noise message with its 2-byte length; ``length`` overrides the prefix."""
        prefix = _U16.pack(len(message) if length is None else length)
        return await self.wire.send(prefix + message, note)

    async def read_msg2(self, deadline: float) -> Hello | None:
        """Read and check the target's message 2.

        Returns:
            What it said, or None when the target closed instead.

        Raises:
            HandshakeFailed: message 2 does not authenticate under our transcript.
            TargetViolation: it authenticates but its payload is not a valid identity proof.
        """
        message = await self.wire.read_noise(deadline, "handshake message 2")
        if message is None:
            return None
        payload = self.hs.read_message(message)  # HandshakeFailed propagates
        remote_static = self.hs.remote_static
        assert remote_static is not None
        try:
            fields = decode_strict(payload)
            peer_id, settings = read_payload(payload, remote_static)
        except RemoteProtocolError as exc:
            raise TargetViolation(f"handshake payload of message 2: {exc.msg}") from exc
        self.hello = Hello(message, payload, remote_static, fields, peer_id, settings)
        return self.hello

    def payload(
        self,
        *,
        identity_key: bytes | None = None,
        signature: bytes | None = None,
        signed_static: bytes | None = None,
        settings: dict[str, Any] | None = None,
        omit: tuple[str, ...] = (),
    ) -> bytes:
        """Our handshake payload for message 3, with optional faults.

        Args:
            identity_key: announce this key instead of ours.
            signature: send this signature instead of a real one.
            signed_static: sign this static key instead of the one Noise sends.
            settings: announce these settings instead of ours.
            omit: leave these fields out.
        """
        faults = (identity_key, signature, signed_static, settings)
        if all(fault is None for fault in faults) and not omit:
            return make_payload(self.identity, self.static_public, self.settings)
        static = self.static_public if signed_static is None else signed_static
        fields: dict[str, Any] = {
            "identity_key": self.identity.peer_id.raw if identity_key is None else identity_key,
            "identity_sig": self.identity.sign(SIG_PREFIX + static)
            if signature is None
            else signature,
            "settings": settings
            if settings is not None
            else {
                "max_frame": self.settings.max_frame,
                "stream_window": self.settings.stream_window,
                "connection_window": self.settings.connection_window,
                "max_streams": self.settings.max_streams,
                "agent": self.settings.agent,
            },
        }
        for name in omit:
            fields.pop(name, None)
        return encode(fields)

    def msg3(self, payload: bytes | None = None) -> bytes:
        """Our handshake message 3 (``-> s, se``), carrying ``payload`` (default: ours)."""
        message = self.hs.write_message(self.payload() if payload is None else payload)
        self.send_cs, self.recv_cs = self.hs.split()
        return message

    async def handshake(self, deadline: float) -> Hello:
        """A complete, well-formed handshake.

        Raises:
            TargetViolation: the target closed, or its message 2 failed our checks.
        """
        await self.send_noise(self.msg1(), note="msg1")
        try:
            hello = await self.read_msg2(deadline)
        except HandshakeFailed as exc:
            raise TargetViolation(f"message 2 did not authenticate: {exc.msg}") from exc
        if hello is None:
            raise TargetViolation("the target closed instead of sending message 2")
        await self.send_noise(self.msg3(), note="msg3")
        return hello

    # -- transport -------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self.send_cs is not None

    def seal(self, plaintext: bytes) -> bytes:
        """One Noise transport message, length prefix included (plaintext <= 65519)."""
        assert self.send_cs is not None, "handshake first"
        sealed = self.send_cs.encrypt_with_ad(b"", plaintext)
        return _U16.pack(len(sealed)) + sealed

    def seal_all(self, plaintext: bytes) -> bytes:
        """``plaintext`` cut into as many Noise transport messages as it needs."""
        return b"".join(
            self.seal(plaintext[i : i + MAX_PLAINTEXT_LEN])
            for i in range(0, max(len(plaintext), 1), MAX_PLAINTEXT_LEN)
        )

    @property
    def theirs(self) -> Settings:
        """The target's settings, from its handshake payload (handshake first)."""
        assert self.hello is not None, "handshake first"
        return self.hello.settings

    async def send_plain(self, plaintext: bytes, note: str = "") -> bool:
        """Encrypt and send bytes of the frame stream (any framing, or none)."""
        self.wire.log.add("send", "plain", plaintext, note)
        return await self.wire.send(self.seal_all(plaintext), note)

    async def send_frames(self, *frames: bytes, note: str = "") -> bool:
        """Send whole encoded frames in one write."""
        return await self.send_plain(b"".join(frames), note)

    async def send_frame(self, kind: FrameType, *fields: object, note: str = "") -> bool:
        return await self.send_frames(encode_frame(kind, *fields), note=note)

    async def next_frame(self, deadline: float) -> tuple[Any, ...] | None:
        """The target's next frame, or None when it closed.

        Raises:
            WireTimeout: nothing complete arrived by ``deadline``.
            TargetViolation: the target's bytes did not decrypt or decode.
        """
        assert self.recv_cs is not None, "handshake first"
        while True:
            frame = self._cut_frame()
            if frame is not None:
                return frame
            message = await self.wire.read_noise(deadline, "a frame")
            if message is None:
                return None
            try:
                self._plain += self.recv_cs.decrypt_with_ad(b"", message)
            except ProtocolError as exc:
                raise TargetViolation(f"transport message: {exc.msg}") from exc

    def _cut_frame(self) -> tuple[Any, ...] | None:
        if len(self._plain) < 4:
            return None
        (length,) = _U32.unpack(self._plain[:4])
        if len(self._plain) < 4 + length:
            return None
        body = bytes(self._plain[4 : 4 + length])
        del self._plain[: 4 + length]
        self.wire.log.add("recv", "frame", body)
        try:
            return decode_frame(body)
        except ProtocolError as exc:
            raise TargetViolation(f"frame {body[:32].hex()}: {exc.msg}") from exc

    async def sync(self, deadline: float) -> None:
        """A PING round trip.

        Raises:
            TargetViolation: the target closed or did not answer the PING.
        """
        opaque = os.urandom(8)
        await self.send_frame(FrameType.PING, opaque, note="PING (sync)")
        seen = await self.watch(deadline, until=lambda f: f[0] is FrameType.PONG and f[1] == opaque)
        if not seen.frames or seen.frames[-1][0] is not FrameType.PONG:
            raise TargetViolation(f"no PONG after the handshake: {seen.summary()}")

    async def watch(self, deadline: float, *, until: Any = None) -> Observation:
        """Collect the target's frames until it closes, ``until(frame)`` holds, or the
        deadline passes (then ``timed_out`` is set; no exception)."""
        seen = Observation()
        while True:
            try:
                frame = await self.next_frame(deadline)
            except WireTimeout:
                seen.timed_out = True
                return seen
            if frame is None:
                seen.closed = True
                seen.reset = self.wire.reset
                return seen
            seen.frames.append(frame)
            if until is not None and until(frame):
                return seen
