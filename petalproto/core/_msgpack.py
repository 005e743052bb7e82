"""The strict msgpack profile (SPEC.md §5).

Every msgpack object we receive is decoded with ``unpackb`` over exactly its own bytes, so
msgpack-python caps every container length at the input length and nothing is allocated
beyond what arrived.  On top of that we reject what the profile forbids: ext types (the
timestamp type -1 bypasses ``ext_hook``, hence the tree walk), duplicate map keys, non-str
map keys, invalid UTF-8, nesting deeper than ``MAX_DEPTH`` and trailing bytes.

The canonical encoding (used for everything that is signed, SPEC.md §5.3) sorts map keys
bytewise and forbids floats; msgpack-python already emits the shortest form of every int and
length.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ._errors import LocalProtocolError, MalformedMessage

__all__ = [
    "MAX_DEPTH",
    "bin_header",
    "decode_strict",
    "encode",
    "encode_canonical",
    "encode_pieces",
]

#: Deepest nesting a received object may have (SPEC.md §5.1).  Our own messages need 6;
#: msgpack-python's own recursion limit is 1024.
MAX_DEPTH = 32

_ALLOWED = (type(None), bool, int, float, str, bytes, list, dict)


def _reject_duplicates(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise MalformedMessage("duplicate map key")
    return out


def _reject_ext(code: int, data: bytes) -> Any:
    raise MalformedMessage(f"ext type {code} is not allowed")


def _check_tree(obj: object, depth: int) -> None:
    """Walk what msgpack-python returned; ``depth`` is the level of ``obj`` if it is a
    container (SPEC.md §5.1: the outermost container is level 0, level 32 is the last
    allowed, and a scalar inside it is fine)."""
    if type(obj) not in _ALLOWED:
        raise MalformedMessage(f"type {type(obj).__name__} is not allowed")
    if isinstance(obj, (list, dict)) and depth > MAX_DEPTH:
        raise MalformedMessage(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(obj, list):
        for item in obj:
            _check_tree(item, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if type(key) is not str:
                raise MalformedMessage("map keys must be strings")
            _check_tree(value, depth + 1)


def decode_strict(data: bytes | bytearray | memoryview) -> Any:
    """Decode one msgpack object under the strict profile.

    Args:
        data: exactly the bytes of one object.

    Returns:
        The decoded object (``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``,
        ``list`` or ``dict`` with ``str`` keys).

    Raises:
        MalformedMessage: the bytes are not one object of the profile.
    """
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_pairs_hook=_reject_duplicates,
            ext_hook=_reject_ext,
        )
    except MalformedMessage:
        raise
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        RecursionError,
    ) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedMessage(f"invalid msgpack: {exc}") from exc
    _check_tree(obj, 0)
    return obj


def encode(obj: object) -> bytes:
    """Encode ``obj`` for the wire.

    Raises:
        LocalProtocolError: ``obj`` holds something msgpack cannot carry.
    """
    try:
        return msgpack.packb(obj, use_bin_type=True, strict_types=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode: {exc}") from exc


#: Byte strings at least this long are passed through by ``encode_pieces``, not copied.
BIG_BYTES = 1 << 16
#: How deep ``encode_pieces`` looks for large byte strings (tensors sit at depth 2).
_PIECES_DEPTH = 4


def _header(small: int, mark16: int, mark32: int, n: int) -> bytes:
    if n < 16:
        return bytes((small | n,))
    if n < 0x10000:
        return bytes((mark16,)) + n.to_bytes(2, "big")
    return bytes((mark32,)) + n.to_bytes(4, "big")


def bin_header(n: int) -> bytes:
    """The msgpack header of a ``bin`` of ``n`` bytes."""
    if n < 0x100:
        return b"\xc4" + bytes((n,))
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _has_big(obj: object, depth: int) -> bool:
    if type(obj) is bytes:
        return len(obj) >= BIG_BYTES
    if depth >= _PIECES_DEPTH:
        return False
    if type(obj) is dict:
        return any(_has_big(value, depth + 1) for value in obj.values())
    if type(obj) in (list, tuple):
        return any(_has_big(value, depth + 1) for value in obj)  # type: ignore[attr-defined]
    return False


def _emit(obj: object, small: list[bytes], out: list[bytes | memoryview], depth: int) -> None:
    kind = type(obj)
    if kind is bytes and len(obj) >= BIG_BYTES:  # type: ignore[arg-type]
        small.append(bin_header(len(obj)))  # type: ignore[arg-type]
        out.append(b"".join(small))
        small.clear()
        out.append(memoryview(obj))  # type: ignore[arg-type]
    elif kind is dict and depth < _PIECES_DEPTH:
        items = obj.items()  # type: ignore[attr-defined]
        small.append(_header(0x80, 0xDE, 0xDF, len(items)))
        for key, value in items:
            small.append(encode(key))
            _emit(value, small, out, depth + 1)
    elif kind in (list, tuple) and depth < _PIECES_DEPTH:
        small.append(_header(0x90, 0xDC, 0xDD, len(obj)))  # type: ignore[arg-type]
        for value in obj:  # type: ignore[attr-defined]
            _emit(value, small, out, depth + 1)
    else:
        small.append(encode(obj))


def encode_pieces(obj: object) -> list[bytes | memoryview]:
    """``encode(obj)`` as pieces whose concatenation is the same bytes, with large byte
    strings (tensors) referenced rather than copied.

    Raises:
        LocalProtocolError: ``obj`` holds something msgpack cannot carry.
    """
    if not _has_big(obj, 0):
        return [encode(obj)]
    small: list[bytes] = []
    out: list[bytes | memoryview] = []
    _emit(obj, small, out, 0)
    if small:
        out.append(b"".join(small))
    return out


def _canonical(obj: object) -> object:
    if isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: _key_bytes(kv[0]))
        return {k: _canonical(v) for k, v in items}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        raise LocalProtocolError("floats are not allowed in canonical encodings")
    return obj


def _key_bytes(key: object) -> bytes:
    if not isinstance(key, str):
        raise LocalProtocolError("canonical maps need str keys")
    return key.encode()


def encode_canonical(obj: object) -> bytes:
    """Encode ``obj`` canonically: keys sorted bytewise, no floats (SPEC.md §5.3).

    Raises:
        LocalProtocolError: ``obj`` holds floats, non-str keys or unencodable values.
    """
    return encode(_canonical(obj))
