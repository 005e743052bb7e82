"""The strict msgpack profile (SPEC.md §5), with byte-level inputs."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from petalproto.core import (
    MAX_DEPTH,
    LocalProtocolError,
    MalformedMessage,
    decode_strict,
    encode,
    encode_canonical,
)

# Every type of the profile (SPEC.md §5.2); floats without NaN so that == works.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
objects = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _nested(levels: int, inner: bytes = b"\x01", container: bytes = b"\x91") -> bytes:
    """``levels`` containers, each holding the next, around ``inner``.

    ``container`` is a one-element array (0x91) or a one-key map (0x81 with key "k").
    """
    head = container + (b"\xa1k" if container == b"\x81" else b"")
    return head * levels + inner


@given(objects)
def test_round_trip(obj: Any) -> None:
    assert decode_strict(encode(obj)) == obj


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_accepts_bytes_like_input(wrap: type) -> None:
    assert decode_strict(wrap(b"\x82\xa1a\x01\xa1b\xc4\x01x")) == {"a": 1, "b": b"x"}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        # the never-used byte
        (b"\xc1", "invalid msgpack"),
        (b"\x92\x01\xc1", "invalid msgpack"),
        # ext types of every size, application and timestamp (-1) alike
        (b"\xd4\x01\x00", "ext type 1"),
        (b"\xd5\x7f\x00\x00", "ext type 127"),
        (b"\xc7\x00\x05", "ext type 5"),
        (b"\xd4\x80\x00", "ext type -128"),
        (b"\xd6\xff\x00\x00\x00\x00", "Timestamp"),  # timestamp 32
        (b"\xd7\xff" + bytes(8), "Timestamp"),  # timestamp 64
        (b"\xc7\x0c\xff" + bytes(12), "Timestamp"),  # timestamp 96
        (b"\x81\xa1t\xd6\xff\x00\x00\x00\x00", "Timestamp"),  # nested in a map
        (b"\x91\xd4\x01\x00", "ext type 1"),
        # duplicate keys
        (b"\x82\xa1a\x01\xa1a\x02", "duplicate"),
        (b"\x82\xa1a\x01\xa1a\x01", "duplicate"),
        # keys that are not str
        (b"\x81\x01\x01", "invalid msgpack"),  # int
        (b"\x81\xc0\x01", "invalid msgpack"),  # nil
        (b"\x81\x90\x01", "invalid msgpack"),  # array
        (b"\x81\xc4\x01k\x01", "map keys must be strings"),  # bin
        (b"\x91\x81\xc4\x01k\x01", "map keys must be strings"),
        # invalid UTF-8, in values and in keys
        (b"\xa2\xc3\x28", "invalid msgpack"),
        (b"\xa1\xff", "invalid msgpack"),
        (b"\xa3\xed\xa0\x80", "invalid msgpack"),  # an encoded surrogate
        (b"\x81\xa1\xff\x01", "invalid msgpack"),
        # trailing bytes
        (b"\x01\x02", "invalid msgpack"),
        (b"\x90\x90", "invalid msgpack"),
        (b"\xa1a\x00", "invalid msgpack"),
        # truncated
        (b"", "invalid msgpack"),
        (b"\x92\x01", "invalid msgpack"),
        (b"\xa5abc", "invalid msgpack"),
        (b"\xc4\x05ab", "invalid msgpack"),
        (b"\xcd\x01", "invalid msgpack"),
        (b"\x81\xa1a", "invalid msgpack"),
        # lengths far beyond the input allocate nothing and fail
        (b"\xdd\xff\xff\xff\xff", "invalid msgpack"),
        (b"\xdf\xff\xff\xff\xff", "invalid msgpack"),
        (b"\xc6\xff\xff\xff\xff", "invalid msgpack"),
        (b"\xdb\xff\xff\xff\xff", "invalid msgpack"),
    ],
)
def test_rejects(data: bytes, why: str) -> None:
    with pytest.raises(MalformedMessage, match=why):
        decode_strict(data)


@pytest.mark.parametrize("container", [b"\x91", b"\x81"])
def test_depth_limit(container: bytes) -> None:
    # SPEC.md §5.1: the outermost container is level 0, so levels 0..32 are allowed.
    assert MAX_DEPTH == 32
    # 33 containers: the innermost is at level 32 and may hold anything but a container.
    assert decode_strict(_nested(MAX_DEPTH + 1, b"\x01", container)) is not None
    assert decode_strict(_nested(MAX_DEPTH, b"\x90", container)) is not None
    assert decode_strict(_nested(MAX_DEPTH, b"\x80", container)) is not None
    # 34 containers: level 33 exists.
    for inner in (b"\x90", b"\x80", b"\x91\x01"):
        with pytest.raises(MalformedMessage, match="nesting deeper than 32"):
            decode_strict(_nested(MAX_DEPTH + 1, inner, container))
    with pytest.raises(MalformedMessage):
        decode_strict(_nested(2000, b"\x01", container))  # msgpack-python's own limit


def test_depth_counts_mixed_containers() -> None:
    mixed = b"\x91\x81\xa1k" * 16 + b"\x91\x01"  # 33 containers, alternating
    assert decode_strict(mixed) is not None
    with pytest.raises(MalformedMessage, match="nesting"):
        decode_strict(b"\x91" + mixed)


def test_width_is_not_depth() -> None:
    wide = b"\xdc\x01\x00" + b"\x90" * 256
    assert decode_strict(wide) == [[]] * 256


def test_decodes_every_allowed_type() -> None:
    data = encode([None, True, False, -1, 2**64 - 1, 1.5, "é", b"\x00", [], {}])
    assert decode_strict(data) == [None, True, False, -1, 2**64 - 1, 1.5, "é", b"\x00", [], {}]
    assert decode_strict(b"\xca\x3f\xc0\x00\x00") == 1.5  # float 32
    assert math.isnan(decode_strict(b"\xcb\x7f\xf8" + bytes(6)))


@given(st.binary(max_size=64))
def test_garbage_raises_only_malformed_message(data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        decode_strict(data)


@given(st.binary(max_size=64), st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_always_rejected(prefix: bytes, tail: bytes) -> None:
    try:
        decode_strict(prefix)
    except MalformedMessage:
        return
    with pytest.raises(MalformedMessage):
        decode_strict(prefix + tail)


# -- encoding ---------------------------------------------------------------------------------


def test_encode_uses_bin_for_bytes_and_arrays_for_tuples() -> None:
    assert encode(b"ab") == b"\xc4\x02ab"
    assert encode("ab") == b"\xa2ab"
    assert encode((1, 2)) == b"\x92\x01\x02"
    assert encode(bytearray(b"a")) == b"\xc4\x01a"


@pytest.mark.parametrize("obj", [object(), {1j: 1}, 2**64, -(2**63) - 1, "\udc80", {"a": {1, 2}}])
def test_encode_rejects_what_msgpack_cannot_carry(obj: object) -> None:
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode(obj)


def test_canonical_sorts_keys_bytewise() -> None:
    obj = {"b": 1, "a": 2, "B": 3, "é": 4, "z": 5, "aa": 6}
    data = encode_canonical(obj)
    assert list(msgpack.unpackb(data)) == ["B", "a", "aa", "b", "z", "é"]
    assert data == encode_canonical(dict(reversed(list(obj.items()))))
    assert decode_strict(data) == obj


def test_canonical_sorts_nested_maps_and_arrays() -> None:
    obj = {"z": [{"y": 1, "x": (2, {"d": 0, "c": 0})}], "a": None}
    data = encode_canonical(obj)
    assert data == (b"\x82\xa1a\xc0\xa1z\x91\x82\xa1x\x92\x02\x82\xa1c\x00\xa1d\x00\xa1y\x01")


def test_canonical_uses_shortest_forms() -> None:
    assert encode_canonical([0, 127, 128, 255, 256, -1, -32, -33, 2**32]) == (
        b"\x99\x00\x7f\xcc\x80\xcc\xff\xcd\x01\x00\xff\xe0\xd0\xdf\xcf\x00\x00\x00\x01\x00\x00\x00\x00"
    )
    assert encode_canonical("a" * 31)[:1] == b"\xbf"
    assert encode_canonical("a" * 32)[:2] == b"\xd9\x20"
    assert encode_canonical(b"a" * 256)[:3] == b"\xc5\x01\x00"


@pytest.mark.parametrize("obj", [1.0, [0.5], {"a": {"b": -0.0}}, (1, 2.0)])
def test_canonical_rejects_floats(obj: object) -> None:
    with pytest.raises(LocalProtocolError, match="floats"):
        encode_canonical(obj)


@pytest.mark.parametrize("obj", [{1: 1}, {b"a": 1}, {"a": {None: 1}}, {"a": 1, 2: 2}])
def test_canonical_rejects_non_str_keys(obj: object) -> None:
    with pytest.raises(LocalProtocolError, match="str keys"):
        encode_canonical(obj)


@given(objects.filter(lambda o: "float" not in repr(type(o))))
def test_canonical_is_decodable_and_stable(obj: Any) -> None:
    try:
        data = encode_canonical(obj)
    except LocalProtocolError:
        return  # a float somewhere inside
    assert decode_strict(data) == obj
    assert encode_canonical(decode_strict(data)) == data


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=20)
        | st.binary(max_size=20)
        | st.sampled_from([b"x" * 70_000, b"\x00" * 65_536]),
        lambda children: (
            st.lists(children, max_size=20)
            | st.dictionaries(st.text(max_size=5), children, max_size=20)
        ),
        max_leaves=40,
    )
)
def test_encode_pieces_concatenate_to_encode(obj: object) -> None:
    from petalproto.core._msgpack import encode_pieces

    pieces = encode_pieces(obj)
    assert b"".join(pieces) == encode(obj)
    big = [p for p in pieces if isinstance(p, memoryview)]
    assert all(len(p) >= 65_536 for p in big)


def test_encode_pieces_headers_of_every_size() -> None:
    from petalproto.core._msgpack import bin_header, encode_pieces

    big = b"y" * 70_000
    for n in (0, 15, 16, 65_535, 65_536):
        as_list = [big] + [0] * (n - 1) if n else []
        assert b"".join(encode_pieces(as_list)) == encode(as_list)
        as_map = {str(i): (big if i == 0 else i) for i in range(n)}
        assert b"".join(encode_pieces(as_map)) == encode(as_map)
    assert bin_header(5) == b"\xc4\x05"
    deep = [[[[[big]]]]]  # beyond the depth that is searched: encoded whole
    assert encode_pieces(deep) == [encode(deep)]
    assert encode_pieces(({"t": big},))[0][:1] == b"\x91"
