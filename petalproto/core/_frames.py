"""The frame codec (SPEC.md §7.2, §8.1).

Inside the decrypted byte stream every frame is a 4-byte big-endian length followed by
that many bytes holding exactly one msgpack array under the strict profile.  The array's
first element is the frame type; each type has a fixed shape, checked here from a table.

This module turns frame bodies into tuples and back; it keeps no state.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Any

from ._errors import ErrorCode, MalformedMessage, RemoteProtocolError
from ._msgpack import bin_header, decode_strict, encode

__all__ = ["DataFlags", "FrameType", "decode_frame", "encode_data_frame", "encode_frame"]

_U32 = 0xFFFFFFFF
_LEN = struct.Struct(">I")


class FrameType(enum.IntEnum):
    OPEN = 1
    DATA = 2
    CREDIT = 3
    RESET = 4
    PING = 5
    PONG = 6
    GOAWAY = 7


class DataFlags:
    """DATA frame flags (SPEC.md §8.1); plain ints, tested on the hot path."""

    END_MESSAGE = 1
    END_STREAM = 2


def _u32(value: object) -> bool:
    return type(value) is int and 0 <= value <= _U32


def _stream_id(value: object) -> bool:
    return type(value) is int and 1 <= value <= _U32


def _text(limit: int) -> Callable[[object], bool]:
    return lambda value: isinstance(value, str) and len(value.encode()) <= limit


def _method(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value.encode()) <= 64


def _flags(value: object) -> bool:
    return type(value) is int and 0 <= value <= 3


def _opaque(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 8


def _chunk(value: object) -> bool:
    return isinstance(value, (bytes, memoryview))


def _credit(value: object) -> bool:
    return type(value) is int and 1 <= value <= (1 << 31) - 1


# SPEC.md §8.1: the shape of each frame type, after the type itself.
_SHAPES: dict[FrameType, tuple[Callable[[object], bool], ...]] = {
    FrameType.OPEN: (_stream_id, _method),
    FrameType.DATA: (_stream_id, _flags, _chunk),
    FrameType.CREDIT: (_u32, _credit),
    FrameType.RESET: (_stream_id, _u32, _text(256)),
    FrameType.PING: (_opaque,),
    FrameType.PONG: (_opaque,),
    FrameType.GOAWAY: (_u32, _u32, _text(256)),
}


_INT_FORMS = {0xCC: 1, 0xCD: 2, 0xCE: 4}
_BIN_FORMS = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def _read_uint(body: memoryview, at: int) -> tuple[int, int] | None:
    """A msgpack unsigned int at ``at`` in its usual forms: (value, next offset)."""
    first = body[at]
    if first < 0x80:
        return first, at + 1
    size = _INT_FORMS.get(first)
    if size is None or at + 1 + size > len(body):
        return None
    return int.from_bytes(body[at + 1 : at + 1 + size], "big"), at + 1 + size


def _decode_data_fast(body: memoryview) -> tuple[Any, ...] | None:
    """DATA frames are most of the traffic: read their usual encodings without building
    a msgpack tree.  Anything unusual returns None and takes the general path, which
    accepts or rejects exactly the same frames."""
    sid = _read_uint(body, 2)
    if sid is None or sid[1] + 2 > len(body):
        return None
    flags, at = body[sid[1]], sid[1] + 1
    size = _BIN_FORMS.get(body[at])
    if size is None or flags > 3 or not 1 <= sid[0] <= _U32:
        return None
    start = at + 1 + size
    if int.from_bytes(body[at + 1 : start], "big") != len(body) - start:
        return None
    return (FrameType.DATA, sid[0], flags, body[start:])


def decode_frame(body: bytes | bytearray | memoryview) -> tuple[Any, ...]:
    """Decode one frame body into ``(FrameType, field, ...)``.

    A DATA chunk may come back as a ``memoryview`` into ``body``.

    Raises:
        MalformedMessage: the body is not a msgpack array of a known shape.
        RemoteProtocolError: the frame type is unknown (PROTOCOL_ERROR).
    """
    view = memoryview(body)
    if len(view) >= 6 and view[0] == 0x94 and view[1] == FrameType.DATA:
        fast = _decode_data_fast(view)
        if fast is not None:
            return fast
    frame = decode_strict(view)
    if not isinstance(frame, list) or not frame or type(frame[0]) is not int:
        raise MalformedMessage("a frame is an array starting with its type")
    try:
        kind = FrameType(frame[0])
    except ValueError:
        raise RemoteProtocolError(f"unknown frame type {frame[0]}") from None
    shape = _SHAPES[kind]
    if len(frame) != len(shape) + 1 or not all(
        check(value) for check, value in zip(shape, frame[1:], strict=True)
    ):
        raise MalformedMessage(f"malformed {kind.name} frame")
    return (kind, *frame[1:])


def to_error_code(value: int) -> ErrorCode:
    """Map a received code to the registry; unknown codes read as INTERNAL_ERROR (§11)."""
    try:
        return ErrorCode(value)
    except ValueError:
        return ErrorCode.INTERNAL_ERROR


def encode_frame(kind: FrameType, *fields: object) -> bytes:
    """Encode one frame, length prefix included."""
    body = encode([int(kind), *fields])
    return _LEN.pack(len(body)) + body


def encode_data_frame(
    stream_id: int, flags: int, chunk: bytes | memoryview | list[bytes | memoryview]
) -> list[bytes | memoryview]:
    """Encode a DATA frame as pieces, so that a large chunk is not copied (SPEC.md §8.4).

    ``chunk`` may itself come in pieces.  The result concatenates to exactly
    ``encode_frame(FrameType.DATA, stream_id, flags, b"".join(chunk))``.
    """
    parts = chunk if isinstance(chunk, list) else [chunk]
    size = sum(len(part) for part in parts)
    head = encode([int(FrameType.DATA), stream_id, flags])
    # Turn the 3-element array header into a 4-element one and append the bin header.
    head = b"\x94" + head[1:] + bin_header(size)
    return [_LEN.pack(len(head) + size) + head, *parts]
