"""A responder with switches, each of which breaks one rule of SPEC.md.

It is a second, deliberately small implementation of the responder side, built from our
core pieces (``HandshakeState``, ``CipherState``, the frame codec, the strict decoder) but
not from ``Connection``, so that the suite is checked against two implementations.  With
``Faults()`` it conforms; every field of ``Faults`` turns one check off or one behaviour
wrong, and the tests show that some conformance case then reports FAIL.

Sans-IO like the core: ``receive(data)`` takes bytes (``b""`` is EOF) and leaves the answer
in ``out``; ``closed`` says the driver should close after sending it.  ``serve_broken``
runs it behind a loopback listener.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from petalproto.core import Address, ErrorCode, Identity, PeerId, Settings
from petalproto.core._errors import HandshakeFailed, ProtocolError
from petalproto.core._frames import DataFlags, FrameType, decode_frame, encode_frame
from petalproto.core._handshake import PROLOGUE, SIG_PREFIX
from petalproto.core._msgpack import decode_strict, encode
from petalproto.core._noise import MAX_PLAINTEXT_LEN, CipherState, HandshakeState

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_MAX_CREDIT = (1 << 31) - 1
_L = 2**252 + 27742317777372353535851937790883648493  # RFC 8032 §5.1: the group order
_SETTING_KEYS = ("max_frame", "stream_window", "connection_window", "max_streams", "agent")
#: Small windows keep the flow-control cases fast.
SETTINGS: dict[str, Any] = {
    "max_frame": 1 << 16,
    "stream_window": 1 << 16,
    "connection_window": 1 << 18,
    "max_streams": 16,
    "agent": "broken-peer",
}
_END = DataFlags.END_MESSAGE | DataFlags.END_STREAM


@dataclass(frozen=True, slots=True)
class Faults:
    """Each field, changed from its default, breaks one rule."""

    # handshake
    prologue: bytes = PROLOGUE
    handshake_windows: bool = True  # check length fields before reading bodies
    reassemble: bool = True  # False: each TCP read must hold whole Noise messages
    msg1_payload_check: bool = True
    low_order_check: bool = True  # False: swap a low-order e for a fresh key and go on
    verify_identity: bool = True  # key validity and signature
    openssl_keys: bool = False  # accept what OpenSSL accepts: small-order keys and R
    reduce_s: bool = False  # read S modulo L (accepts S + L)
    strict_payload: bool = True  # strict msgpack and shape for the handshake payload
    settings_check: bool = True
    reject_unknown_settings: bool = False
    require_all_settings: bool = False
    require_key_order: bool = False  # payload and settings keys only in table order
    close_on_handshake_failure: bool = True  # False: go silent, keep the connection
    handshake_timeout: float | None = 0.5  # §6.7 (short, to keep tests fast)
    settings: dict[str, Any] = field(default_factory=lambda: dict(SETTINGS))
    pad_msg2: bool = False  # a 1100-byte extra payload field
    discard_after_msg3: bool = False  # drop transport bytes read together with msg3
    # transport and frames
    close_on_auth_failure: bool = True  # False: discard the message and go on
    max_frame_check: bool = True
    max_frame_off_by_one: bool = False  # rejects frames of exactly max_frame bytes
    reject_empty_frame: bool = True
    frames_within_messages: bool = False  # frames may not span transport messages
    one_frame_per_message: bool = False
    partial_frame_at_eof: bool = False  # parse what is buffered when EOF comes
    continue_after_error: bool = False  # GOAWAY, but finish the batch first
    goaway_on_error: bool = True  # False: close without saying why (a SHOULD, §7.3)
    strict_msgpack: bool = True
    max_depth_off_by_one: bool = False  # rejects 32 levels
    require_canonical: bool = False
    reject_unknown_frames: bool = True
    check_frame_shapes: bool = True
    # streams
    check_stream_ids: bool = True
    require_consecutive_ids: bool = False
    strict_closed_streams: bool = False  # frames on closed streams are errors
    stream_closed_reset: bool = False  # True: 0.1's RESET(STREAM_CLOSED), not a discard
    one_chunk_messages: bool = False  # every DATA chunk is a whole message
    empty_end_is_message: bool = False
    check_message_end: bool = True
    flow_control: bool = True
    respect_peer_credit: bool = True
    grant_consumed: bool = True  # False: never give back credit for requests it served
    echo_reset: bool = False
    serve_one_stream: bool = False
    # connection management and calls
    answer_pings: bool = True
    pong_echo: bool = True
    goaway_close: bool = True
    unknown_method_reset: bool = True
    check_requests: bool = True
    reject_unknown_request_keys: bool = False
    response_end_stream: bool = True
    ping_response: dict[str, Any] | None = None


class _Abort(Exception):
    """The handshake failed."""


class _ConnectionError(Exception):
    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name)
        self.code = code


@dataclass(slots=True)
class _Stream:
    method: str
    recv_left: int
    send_credit: int
    buffer: bytearray = field(default_factory=bytearray)
    request: Any = None
    has_request: bool = False
    ended: bool = False


def _lenient(data: bytes) -> tuple[bool, Any]:
    """msgpack-python's defaults, widened: the first object, any key, any bytes as str."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors="surrogateescape")
    unpacker.feed(data)
    try:
        return True, next(unpacker)
    except (StopIteration, ValueError, msgpack.FormatError, msgpack.StackError):
        return False, None


def _depth(obj: object, level: int = 0) -> int:
    if isinstance(obj, list):
        return max([level, *(_depth(x, level + 1) for x in obj)])
    if isinstance(obj, dict):
        return max([level, *(_depth(v, level + 1) for v in obj.values())])
    return level - 1


class BrokenResponder:
    """One connection's responder side."""

    def __init__(self, faults: Faults, identity: Identity, remote: list[Any] | None) -> None:
        self.f = faults
        self.identity = identity
        self.remote = remote
        self.hs = HandshakeState(
            pattern="XX",
            initiator=False,
            prologue=faults.prologue,
            static_key=os.urandom(32),
            random_bytes=os.urandom,
        )
        self.state = "msg1"
        self.wire = bytearray()
        self.plain = bytearray()
        self.out = bytearray()
        self._frames_out = bytearray()
        self.closed = False
        self.send_cs: CipherState | None = None
        self.recv_cs: CipherState | None = None
        self.ours = Settings()
        self.theirs = Settings()
        self.streams: dict[int, _Stream] = {}
        self.their_highest = 0
        self.recv_conn_left = 0
        self.send_conn_credit = 0
        self.pending: list[tuple[int, bytes]] = []
        self._to_serve: list[int] = []
        self._closing = False

    # -- input ----------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if self.state == "silent" or self.closed:
            return
        try:
            if not data:
                self._eof()
            else:
                self.wire += data
                self._drain_wire()
            self._serve_ready()
        except _Abort:
            if self.f.close_on_handshake_failure:
                self.closed = True
            else:
                self.state = "silent"
        except _ConnectionError as exc:
            self._frames_out.clear()
            self._goaway(exc.code)
            self.closed = True
        self._seal()

    def _eof(self) -> None:
        if self.f.partial_frame_at_eof and self.state == "open" and len(self.plain) > 4:
            self._frame(bytes(self.plain[4:]))
        self.closed = True

    def _drain_wire(self) -> None:
        while self.state != "silent" and not self.closed:
            message = self._next_message()
            if message is None:
                break
            if self.state == "open":
                self._transport(message)
            else:
                self._handshake(message)
                if self.state == "open" and self.f.discard_after_msg3:
                    self.wire.clear()
        if not self.f.reassemble and self.state != "open":
            self.wire.clear()

    def _next_message(self) -> bytes | None:
        if len(self.wire) < 2:
            return None
        (length,) = _U16.unpack(self.wire[:2])
        if self.state != "open" and self.f.handshake_windows:
            low, high = (32, 32) if self.state == "msg1" else (65, 64 + 1024)
            if not low <= length <= high:
                raise _Abort
        if len(self.wire) < 2 + length:
            return None
        message = bytes(self.wire[2 : 2 + length])
        del self.wire[: 2 + length]
        return message

    # -- handshake ------------------------------------------------------------------------------

    def _handshake(self, message: bytes) -> None:
        try:
            if self.state == "msg1":
                if not self.f.low_order_check:
                    message = self._swap_low_order(message)
                payload = self.hs.read_message(message)
                if payload and self.f.msg1_payload_check:
                    raise _Abort
                msg2 = self.hs.write_message(self._payload())
                self.out += _U16.pack(len(msg2)) + msg2
                self.state = "msg3"
                return
            payload = self.hs.read_message(message)
        except HandshakeFailed as exc:
            raise _Abort from exc
        remote_static = self.hs.remote_static
        assert remote_static is not None
        self.theirs = self._read_payload(payload, remote_static)
        try:
            self.ours = Settings(**self.f.settings)
        except ValueError:  # announcing nonsense is the fault; keep working limits
            self.ours = Settings(**SETTINGS)
        self.send_cs, self.recv_cs = self.hs.split()
        self.recv_conn_left = self.ours.connection_window
        self.send_conn_credit = self.theirs.connection_window
        self.state = "open"

    def _swap_low_order(self, message: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.x25519 import (
            X25519PrivateKey,
            X25519PublicKey,
        )

        probe = X25519PrivateKey.generate()
        try:
            probe.exchange(X25519PublicKey.from_public_bytes(message[:32]))
        except ValueError:
            fresh = X25519PrivateKey.generate().public_key().public_bytes_raw()
            return fresh + message[32:]
        return message

    def _payload(self) -> bytes:
        static = self.hs.static_public
        assert static is not None
        fields: dict[str, Any] = {
            "identity_key": self.identity.peer_id.raw,
            "identity_sig": self.identity.sign(SIG_PREFIX + static),
            "settings": self.f.settings,
        }
        if self.f.pad_msg2:
            fields["padding"] = bytes(1100)
        return encode(fields)

    def _read_payload(self, payload: bytes, remote_static: bytes) -> Settings:
        obj = self._decode(payload) if self.f.strict_payload else _lenient(payload)[1]
        if not isinstance(obj, dict):
            if self.f.strict_payload:
                raise _Abort
            obj = {}
        if self.f.verify_identity:
            key, sig = obj.get("identity_key"), obj.get("identity_sig")
            if not isinstance(key, bytes) or not isinstance(sig, bytes):
                raise _Abort
            if not self._verify(key, sig, SIG_PREFIX + remote_static):
                raise _Abort
        raw = obj.get("settings", {})
        raw = raw if isinstance(raw, dict) else {}
        if self.f.require_key_order and (
            list(obj) != ["identity_key", "identity_sig", "settings"][: len(obj)]
            or list(raw) != [k for k in _SETTING_KEYS if k in raw]
        ):
            raise _Abort
        if self.f.reject_unknown_settings and set(raw) - set(_SETTING_KEYS):
            raise _Abort
        if self.f.require_all_settings and set(_SETTING_KEYS) - set(raw):
            raise _Abort
        if not self.f.settings_check:
            return Settings()
        try:
            return Settings(**{k: raw[k] for k in _SETTING_KEYS if k in raw})
        except (TypeError, ValueError) as exc:
            raise _Abort from exc

    def _verify(self, key: bytes, sig: bytes, message: bytes) -> bool:
        if self.f.reduce_s and len(sig) == 64:
            s = int.from_bytes(sig[32:], "little") % _L
            sig = sig[:32] + s.to_bytes(32, "little")
        if self.f.openssl_keys:
            try:
                Ed25519PublicKey.from_public_bytes(key).verify(sig, message)
            except (ValueError, InvalidSignature):
                return False
            return True
        try:
            peer = PeerId.from_bytes(key)
        except ValueError:
            return False
        return peer.verify(sig, message)

    def _decode(self, data: bytes) -> Any:
        try:
            return decode_strict(data)
        except ProtocolError as exc:
            raise _Abort from exc

    # -- transport and frames -------------------------------------------------------------------

    def _transport(self, message: bytes) -> None:
        assert self.recv_cs is not None
        try:
            plain = self.recv_cs.decrypt_with_ad(b"", message)
        except ProtocolError as exc:
            if self.f.close_on_auth_failure:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR) from exc
            return
        if self.f.frames_within_messages or self.f.one_frame_per_message:
            self._frames(bytearray(plain), only_one=self.f.one_frame_per_message)
        else:
            self.plain += plain
            self._frames(self.plain, only_one=False)

    def _frames(self, buffer: bytearray, *, only_one: bool) -> None:
        while len(buffer) >= 4 and not self.closed:
            (length,) = _U32.unpack(buffer[:4])
            limit = self.ours.max_frame
            over = length >= limit if self.f.max_frame_off_by_one else length > limit
            if self.f.max_frame_check and over:
                raise _ConnectionError(ErrorCode.FRAME_TOO_LARGE)
            if length == 0:
                if self.f.reject_empty_frame:
                    raise _ConnectionError(ErrorCode.MALFORMED)
                del buffer[:4]
                continue
            if len(buffer) < 4 + length:
                return
            body = bytes(buffer[4 : 4 + length])
            del buffer[: 4 + length]
            try:
                self._frame(body)
            except _ConnectionError as exc:
                if not self.f.continue_after_error:
                    raise
                self._goaway(exc.code)
                self._closing = True
            if only_one:
                return

    def _frame(self, body: bytes) -> None:
        frame = self._decode_frame(body)
        if frame is None:
            return
        kind, *fields = frame
        handlers: dict[FrameType, Callable[..., None]] = {
            FrameType.OPEN: self._open,
            FrameType.DATA: self._data,
            FrameType.CREDIT: self._credit,
            FrameType.RESET: self._reset,
            FrameType.PING: self._ping,
            FrameType.PONG: lambda _o: None,
            FrameType.GOAWAY: self._goaway_received,
        }
        handlers[kind](*fields)

    def _decode_frame(self, body: bytes) -> tuple[Any, ...] | None:
        if self.f.strict_msgpack and self.f.check_frame_shapes and self.f.reject_unknown_frames:
            try:
                return decode_frame(body)
            except ProtocolError as exc:
                raise _ConnectionError(exc.code) from exc
        ok, obj = _lenient(body) if not self.f.strict_msgpack else (True, self._strict(body))
        if not ok or not isinstance(obj, list) or not obj or type(obj[0]) is not int:
            return None
        if obj[0] not in set(FrameType):
            if self.f.reject_unknown_frames:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR)
            return None
        try:
            frame = decode_frame(encode(obj))
        except ProtocolError:
            if self.f.check_frame_shapes:
                raise _ConnectionError(ErrorCode.MALFORMED) from None
            return None
        return frame

    def _strict(self, body: bytes) -> Any:
        try:
            return decode_strict(body)
        except ProtocolError as exc:
            raise _ConnectionError(ErrorCode.MALFORMED) from exc

    # -- frame handlers -------------------------------------------------------------------------

    def _idle(self, stream_id: int) -> bool:
        return stream_id % 2 == 0 or stream_id > self.their_highest

    def _live(self, stream_id: int) -> _Stream | None:
        stream = self.streams.get(stream_id)
        if stream is None and self._idle(stream_id):
            if self.f.check_stream_ids:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR)
        elif stream is None and self.f.strict_closed_streams:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR)
        return stream

    def _open(self, stream_id: int, method: str) -> None:
        if self.f.check_stream_ids and (stream_id % 2 == 0 or stream_id <= self.their_highest):
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR)
        if self.f.require_consecutive_ids and stream_id != self.their_highest + 2:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR)
        self.their_highest = max(self.their_highest, stream_id)
        busy = self.f.serve_one_stream and self.streams
        if len(self.streams) >= self.ours.max_streams or busy:
            self._send(FrameType.RESET, stream_id, int(ErrorCode.REFUSED_STREAM), "")
            return
        if method != "ping" and self.f.unknown_method_reset:
            self._send(FrameType.RESET, stream_id, int(ErrorCode.UNKNOWN_METHOD), "unknown")
            return
        self.streams[stream_id] = _Stream(
            method, self.ours.stream_window, self.theirs.stream_window
        )

    def _data(self, stream_id: int, flags: int, chunk: bytes) -> None:
        n = len(chunk)
        if self.f.flow_control and n > self.recv_conn_left:
            raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR)
        self.recv_conn_left -= n
        stream = self._live(stream_id)
        if stream is None:
            self._grant(n)
            return
        if stream.ended:
            self._grant(n)
            if self.f.stream_closed_reset:
                self._reset_stream(stream_id, ErrorCode.STREAM_CLOSED)
            return
        if self.f.flow_control and n > stream.recv_left:
            raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR)
        stream.recv_left -= n
        stream.buffer += chunk
        if self.f.empty_end_is_message and flags == DataFlags.END_STREAM and not chunk:
            flags |= DataFlags.END_MESSAGE
        whole = flags & DataFlags.END_MESSAGE or self.f.one_chunk_messages
        if whole and not self._message(stream_id, stream):
            return
        if flags & DataFlags.END_STREAM:
            if stream.buffer and self.f.check_message_end:
                self._reset_stream(stream_id, ErrorCode.PROTOCOL_ERROR)
                return
            stream.ended = True
            self._to_serve.append(stream_id)

    def _message(self, stream_id: int, stream: _Stream) -> bool:
        raw = bytes(stream.buffer)
        stream.buffer.clear()
        if self.f.strict_msgpack:
            try:
                body = decode_strict(raw)
            except ProtocolError:
                self._reset_stream(stream_id, ErrorCode.MALFORMED)
                return False
            too_deep = self.f.max_depth_off_by_one and _depth(body) >= 32
            if too_deep or (self.f.require_canonical and encode(body) != raw):
                self._reset_stream(stream_id, ErrorCode.MALFORMED)
                return False
        else:
            ok, body = _lenient(raw)
            body = body if ok else {}
        stream.request, stream.has_request = body, True
        return True

    def _credit(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            if self.f.flow_control and self.send_conn_credit + increment > _MAX_CREDIT:
                raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR)
            self.send_conn_credit += increment
            self._flush_pending()
            return
        stream = self._live(stream_id)
        if stream is not None:
            if self.f.flow_control and stream.send_credit + increment > _MAX_CREDIT:
                raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR)
            stream.send_credit += increment

    def _reset(self, stream_id: int, code: int, reason: str) -> None:
        if self._live(stream_id) is not None:
            del self.streams[stream_id]
            if self.f.echo_reset:
                self._send(FrameType.RESET, stream_id, int(ErrorCode.CANCEL), "echo")

    def _ping(self, opaque: bytes) -> None:
        if self.f.answer_pings:
            self._send(FrameType.PONG, opaque if self.f.pong_echo else bytes(8))

    def _goaway_received(self, last: int, code: int, reason: str) -> None:
        if not self.f.goaway_close:
            return
        if code != ErrorCode.NO_ERROR:
            self.closed = True
        else:
            self._closing = True

    # -- output ---------------------------------------------------------------------------------

    def _serve_ready(self) -> None:
        """Answer the calls whose requests are complete: after the whole batch, as a peer
        with handler tasks would."""
        for stream_id in self._to_serve:
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                if self.f.grant_consumed:
                    self._grant(self.ours.stream_window - stream.recv_left)
                self._answer(stream_id, stream)
        self._to_serve.clear()
        if self._closing and not self.streams and not self.pending:
            self.closed = True

    def _answer(self, stream_id: int, stream: _Stream) -> None:
        request = stream.request
        bad = not stream.has_request or not isinstance(request, dict)
        unknown_keys = self.f.reject_unknown_request_keys and bool(request)
        if (self.f.check_requests and bad) or unknown_keys:
            self._send(FrameType.RESET, stream_id, int(ErrorCode.BAD_REQUEST), "bad request")
            return
        response = self.f.ping_response or {"agent": "broken-peer", "observed": self.remote}
        flags = _END if self.f.response_end_stream else DataFlags.END_MESSAGE
        data = encode_frame(FrameType.DATA, stream_id, flags, encode(response))
        size = len(encode(response))
        if self.f.respect_peer_credit and size > self.send_conn_credit:
            self.pending.append((size, data))
            return
        self.send_conn_credit -= size
        self._frames_out += data

    def _flush_pending(self) -> None:
        while self.pending and self.pending[0][0] <= self.send_conn_credit:
            size, data = self.pending.pop(0)
            self.send_conn_credit -= size
            self._frames_out += data

    def _reset_stream(self, stream_id: int, code: ErrorCode) -> None:
        self.streams.pop(stream_id, None)
        self._send(FrameType.RESET, stream_id, int(code), "")

    def _grant(self, n: int) -> None:
        if n:
            self.recv_conn_left += n
            self._send(FrameType.CREDIT, 0, n)

    def _goaway(self, code: ErrorCode) -> None:
        if self.send_cs is not None and self.f.goaway_on_error:
            self._send(FrameType.GOAWAY, self.their_highest, int(code), "")

    def _send(self, kind: FrameType, *fields: object) -> None:
        self._frames_out += encode_frame(kind, *fields)

    def _seal(self) -> None:
        if not self._frames_out or self.send_cs is None:
            return
        plain = bytes(self._frames_out)
        self._frames_out.clear()
        for i in range(0, len(plain), MAX_PLAINTEXT_LEN):
            sealed = self.send_cs.encrypt_with_ad(b"", plain[i : i + MAX_PLAINTEXT_LEN])
            self.out += _U16.pack(len(sealed)) + sealed


async def serve_broken(
    faults: Faults, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on loopback and run a ``BrokenResponder`` per connection, until cancelled."""
    identity = Identity.from_seed(os.urandom(32))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        remote = list(stream.socket.getpeername()[:2])
        peer = BrokenResponder(faults, identity, remote)
        timeout = faults.handshake_timeout
        handshake_end = trio.current_time() + (timeout if timeout is not None else 1e9)
        async with stream:
            while not peer.closed:
                deadline = handshake_end if peer.state in ("msg1", "msg3") else float("inf")
                data = None
                with trio.move_on_at(deadline):
                    try:
                        data = await stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                if data is None:
                    return  # handshake timeout
                peer.receive(data)
                if peer.out:
                    out = bytes(peer.out)
                    peer.out.clear()
                    try:
                        await stream.send_all(out)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                if not data and peer.state == "silent":
                    return

    task_status.started(Address(identity.peer_id, "127.0.0.1", port))
    await trio.serve_listeners(handle, listeners)
