"""The frame codec (SPEC.md §7.2, §8.1)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from petalproto.core import ErrorCode, MalformedMessage, RemoteProtocolError, decode_strict
from petalproto.core._frames import (
    FrameType,
    decode_frame,
    encode_data_frame,
    encode_frame,
    to_error_code,
)
from petalproto.testing._pairs import frame_bytes

U32 = 2**32 - 1
MAX_CREDIT = 2**31 - 1

# One valid frame of each type at the edges of every field (SPEC.md §8.1).
VALID: list[tuple[Any, ...]] = [
    (FrameType.OPEN, 1, "m"),
    (FrameType.OPEN, U32, "é" * 32),
    (FrameType.DATA, 1, 0, b""),
    (FrameType.DATA, U32, 3, b"x" * 70_000),
    (FrameType.CREDIT, 0, 1),
    (FrameType.CREDIT, U32, MAX_CREDIT),
    (FrameType.RESET, 1, 0, ""),
    (FrameType.RESET, U32, U32, "r" * 256),
    (FrameType.PING, b"\x00" * 8),
    (FrameType.PONG, b"\xff" * 8),
    (FrameType.GOAWAY, 0, 0, ""),
    (FrameType.GOAWAY, U32, U32, "é" * 128),
]

# Frames of a known type whose shape is wrong: a connection error of code MALFORMED.
MALFORMED: list[tuple[Any, ...]] = [
    # arity
    (1,),
    (1, 1),
    (1, 1, "m", 0),
    (2, 1, 0),
    (2, 1, 0, b"", b""),
    (3, 0),
    (4, 1, 0),
    (5,),
    (5, b"12345678", b""),
    (6,),
    (7, 0, 0),
    (7, 0, 0, "", ""),
    # stream ids
    (1, 0, "m"),
    (1, U32 + 1, "m"),
    (1, -1, "m"),
    (1, True, "m"),
    (1, 1.0, "m"),
    (2, 0, 0, b""),
    (3, -1, 1),
    (3, U32 + 1, 1),
    (4, 0, 0, ""),
    (7, -1, 0, ""),
    # methods
    (1, 1, ""),
    (1, 1, "m" * 65),
    (1, 1, "é" * 33),
    (1, 1, b"m"),
    # flags and chunks
    (2, 1, 4, b""),
    (2, 1, -1, b""),
    (2, 1, False, b""),
    (2, 1, 0, "text"),
    (2, 1, 0, None),
    # credit
    (3, 1, 0),
    (3, 1, MAX_CREDIT + 1),
    (3, 1, True),
    # codes and reasons
    (4, 1, U32 + 1, ""),
    (4, 1, -1, ""),
    (4, 1, 0, "r" * 257),
    (4, 1, 0, b""),
    (7, 0, U32 + 1, ""),
    (7, 0, 0, "r" * 257),
    (7, 0, 0, None),
    # opaque data
    (5, b"1234567"),
    (5, b"123456789"),
    (5, "12345678"),
    (6, b""),
]


@pytest.mark.parametrize("frame", VALID, ids=lambda f: f[0].name if isinstance(f, tuple) else "")
def test_every_frame_type_round_trips(frame: tuple[Any, ...]) -> None:
    data = encode_frame(*frame)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    decoded = decode_frame(data[4:])
    assert decoded == frame
    assert type(decoded[0]) is FrameType


def test_every_frame_type_has_a_valid_case() -> None:
    assert {frame[0] for frame in VALID} == set(FrameType)


@pytest.mark.parametrize("frame", MALFORMED)
def test_wrong_arity_or_types_are_malformed(frame: tuple[Any, ...]) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_frame(frame_bytes(*frame)[4:])
    assert info.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize("kind", [0, 8, 9, 127, 255, 2**32, -1, -(2**63)])
def test_unknown_type_is_a_protocol_error(kind: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame(frame_bytes(kind, 1, 2)[4:])
    assert type(info.value) is RemoteProtocolError
    assert info.value.code is ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "body",
    [
        b"\x90",  # empty array
        b"\x01",  # not an array
        b"\x81\xa1a\x01",
        b"\x91\xa1a",  # type is not an int
        b"\x91\xc3",  # bool is not an int
        b"\x92\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\x01",  # float type
        b"\xc1",  # not msgpack at all
        b"\x91\x05\x00",  # trailing data
    ],
)
def test_bodies_that_are_not_frames(body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_frame(body)


@given(
    st.integers(1, U32),
    st.integers(0, 3),
    st.one_of(
        st.binary(max_size=600),
        st.sampled_from([0, 255, 256, 65_535, 65_536, 70_000]).map(lambda n: b"\xab" * n),
    ),
    st.sampled_from([bytes, memoryview]),
)
def test_data_frame_pieces_equal_encode_frame(
    stream_id: int, flags: int, chunk: bytes, wrap: type
) -> None:
    pieces = encode_data_frame(stream_id, flags, wrap(chunk))
    assert b"".join(pieces) == encode_frame(FrameType.DATA, stream_id, flags, chunk)
    assert pieces[-1] is not None and len(pieces[-1]) == len(chunk)


def test_unknown_error_codes_read_as_internal_error() -> None:
    assert to_error_code(0) is ErrorCode.NO_ERROR
    assert to_error_code(36) is ErrorCode.UNKNOWN_SESSION
    assert to_error_code(15) is ErrorCode.INTERNAL_ERROR
    assert to_error_code(U32) is ErrorCode.INTERNAL_ERROR


@given(st.binary(max_size=128))
def test_garbage_raises_only_remote_protocol_error(body: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_frame(body)


# -- the DATA fast path -----------------------------------------------------------------------


def _reference_data(body: bytes) -> tuple[Any, ...] | None:
    """What the general msgpack path makes of a body that starts like a DATA frame."""
    try:
        obj = decode_strict(body)
    except MalformedMessage:
        return None
    if (
        isinstance(obj, list)
        and len(obj) == 4
        and type(obj[1]) is int
        and 1 <= obj[1] <= U32
        and type(obj[2]) is int
        and 0 <= obj[2] <= 3
        and isinstance(obj[3], bytes)
    ):
        return (FrameType.DATA, *obj[1:])
    return None


def _decoded(body: bytes) -> tuple[Any, ...] | None:
    try:
        frame = decode_frame(body)
    except MalformedMessage:
        return None
    return (*frame[:3], bytes(frame[3]))


# msgpack forms of the same values that the fast path does not read itself.
UINT_FORMS: dict[str, Callable[[int], bytes | None]] = {
    "fixint": lambda n: bytes([n]) if n < 0x80 else None,
    "uint8": lambda n: b"\xcc" + n.to_bytes(1, "big") if n < 1 << 8 else None,
    "uint16": lambda n: b"\xcd" + n.to_bytes(2, "big") if n < 1 << 16 else None,
    "uint32": lambda n: b"\xce" + n.to_bytes(4, "big") if n < 1 << 32 else None,
    "uint64": lambda n: b"\xcf" + n.to_bytes(8, "big"),
    "int8": lambda n: b"\xd0" + n.to_bytes(1, "big") if n < 1 << 7 else None,
    "int64": lambda n: b"\xd3" + n.to_bytes(8, "big"),
}
BIN_FORMS: dict[str, Callable[[int], bytes | None]] = {
    "bin8": lambda n: b"\xc4" + n.to_bytes(1, "big") if n < 1 << 8 else None,
    "bin16": lambda n: b"\xc5" + n.to_bytes(2, "big"),
    "bin32": lambda n: b"\xc6" + n.to_bytes(4, "big"),
    "str8": lambda n: b"\xd9" + n.to_bytes(1, "big") if n < 1 << 8 else None,
}


forms = st.tuples(
    st.sampled_from(sorted(UINT_FORMS)),
    st.sampled_from(sorted(UINT_FORMS)),
    st.sampled_from(sorted(BIN_FORMS)),
)


@given(
    st.integers(0, U32 + 1),
    st.integers(0, 5),
    st.binary(max_size=300),
    forms,
    st.tuples(st.integers(-2, 2), st.binary(max_size=2)),
)
def test_data_fast_path_agrees_with_the_general_path(
    stream_id: int,
    flags: int,
    chunk: bytes,
    form: tuple[str, str, str],
    damage: tuple[int, bytes],
) -> None:
    id_form, flags_form, bin_form = form
    length_error, tail = damage
    sid, fl = UINT_FORMS[id_form](stream_id), UINT_FORMS[flags_form](flags)
    head = BIN_FORMS[bin_form](max(len(chunk) + length_error, 0))
    if sid is None or fl is None or head is None:
        return
    body = b"\x94\x02" + sid + fl + head + chunk + tail
    assert _decoded(body) == _reference_data(body)
    for cut in (3, 5, 7, len(body) - 1):
        assert _decoded(body[:cut]) == _reference_data(body[:cut])


@given(st.binary(max_size=40))
def test_data_fast_path_agrees_on_garbage(rest: bytes) -> None:
    body = b"\x94\x02" + rest
    assert _decoded(body) == _reference_data(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\x94\x02\xd0\x01\x00\xc4\x00", (FrameType.DATA, 1, 0, b"")),  # int8 stream id
        (b"\x94\x02\x01\xcc\x01\xc4\x00", (FrameType.DATA, 1, 1, b"")),  # uint8 flags
        (b"\x94\x02\x01\x00\xc4\x02ab", (FrameType.DATA, 1, 0, b"ab")),
        (b"\x94\x02\xce\x00\x00\x01", None),  # the stream id runs past the end
        (b"\x94\x02\xcd\x00\x01\x00", None),  # no room for flags and a bin header
        (b"\x94\x02\x01\x00\xc4\x02abc", None),  # bytes after the chunk
        (b"\x94\x02\x01\x00\xc4\x03ab", None),  # a chunk shorter than announced
        (b"\x94\x02\x00\x00\xc4\x00", None),  # stream id 0
        (b"\x94\x02\x01\x04\xc4\x00", None),  # flags 4
    ],
)
def test_data_fast_path_edges(body: bytes, expected: tuple[Any, ...] | None) -> None:
    assert _decoded(body) == expected == _reference_data(body)
