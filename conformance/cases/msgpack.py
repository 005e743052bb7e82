"""The strict msgpack profile (SPEC.md §5.1), in messages and in frames.

Message cases send a ``ping`` request (any map is a valid one, §10.3) whose bytes break
one rule of the profile.  A lenient decoder answers the call; a strict one resets the
stream with MALFORMED and keeps the connection (§5.1, §8.4).  Frame cases break the profile
inside a frame, which is a connection error of code MALFORMED.

The byte strings are written out by hand: our own encoder cannot produce most of them.
"""

from __future__ import annotations

from petalproto.core import ErrorCode
from petalproto.core._frames import FrameType, encode_frame
from petalproto.core._msgpack import encode

from .._expect import answered, call_frames, connection_error, ping_frame, stream_error
from .._harness import QUOTE_GAP, CaseContext, Outcome, case
from .._wire import raw_frame

R_5_1 = (
    "A receiver decodes each object from exactly the bytes that its enclosing length "
    "prefix delimits, and MUST reject the object when any of these holds:"
)
B_COMPLETE = "- the bytes are not one complete msgpack object, or bytes follow it (trailing data);"
B_C1 = "- it uses the never-used byte `0xc1`;"
B_EXT = "- it contains an extension type of any kind, the timestamp type (−1) included;"  # noqa: RUF001
B_KEYS = "- a map has a key that is not a `str`, or the same key twice;"
B_UTF8 = "- a `str` is not valid UTF-8;"
B_DEPTH = (
    "- nesting of arrays and maps is deeper than 32 levels (the outermost container is level 0)."
)
R_5_1_ERRORS = (
    "A rejected frame is a connection error of code MALFORMED (§7.3); a rejected "
    "message inside a valid frame is a stream error of code MALFORMED (§8.4)."
)
R_10_3 = "Every peer MUST serve the unary method `ping`: any map as request"


def _nested(levels: int) -> bytes:
    """A ping request whose innermost container is at level ``levels``, holding 1."""
    return b"\x81\xa1a" + b"\x91" * (levels - 1) + b"\x91\x01"


# ordinal -> (description, request bytes, the bullet it breaks).  The request is sent
# in one DATA frame with END_MESSAGE and END_STREAM.
_MESSAGES: dict[int, tuple[str, bytes, str]] = {
    1: ("a valid map followed by a trailing nil", encode({}) + b"\xc0", B_COMPLETE),
    2: ("a map announcing 2 pairs that holds 1", b"\x82\xa1a\x01", B_COMPLETE),
    3: ("the byte 0xc1 alone", b"\xc1", B_C1),
    4: ("0xc1 as a map value", b"\x81\xa1a\xc1", B_C1),
    5: ("an ext type 5 value (fixext 1)", b"\x81\xa1a\xd4\x05\x00", B_EXT),
    6: ("a 32-bit timestamp (ext -1)", b"\x81\xa1a\xd6\xff\x00\x00\x00\x00", B_EXT),
    7: ("a 96-bit timestamp (ext 8, type -1)", b"\x81\xa1a\xc7\x0c\xff" + bytes(12), B_EXT),
    8: ("an int map key", b"\x81\x01\x01", B_KEYS),
    9: ("a bin map key (msgpack-python's strict_map_key allows it)", b"\x81\xc4\x01a\x01", B_KEYS),
    10: ("the same key twice", b"\x82\xa1a\x01\xa1a\x02", B_KEYS),
    11: ("a str value holding the byte 0xff", b"\x81\xa1a\xa1\xff", B_UTF8),
    12: ("a str key holding an invalid sequence (c3 28)", b"\x81\xa2\xc3\x28\x01", B_UTF8),
    13: ("a str holding a UTF-16 surrogate (ed a0 80)", b"\x81\xa1a\xa3\xed\xa0\x80", B_UTF8),
    14: ("a str holding an overlong encoding of '/' (c0 af)", b"\x81\xa1a\xa2\xc0\xaf", B_UTF8),
    15: ("nesting down to level 33", _nested(33), B_DEPTH),
    16: ("a nil map key", b"\x81\xc0\x01", B_KEYS),
}


def _register_message(ordinal: int, what: str, raw: bytes, bullet: str) -> None:
    async def run(ctx: CaseContext) -> Outcome:
        session = await ctx.open_session()
        await session.send_plain(call_frames(1, raw_body=raw), f"ping request: {what}")
        return await stream_error(ctx, session, 1, {ErrorCode.MALFORMED})

    case(
        f"5.1/{ordinal}",
        description=f"ping request: {what}",
        requirement=R_5_1 + QUOTE_GAP + bullet + QUOTE_GAP + R_5_1_ERRORS,
        expected="RESET(MALFORMED) on the stream; the connection stays open",
    )(run)


for _ordinal, (_what, _raw, _bullet) in _MESSAGES.items():
    _register_message(_ordinal, _what, _raw, _bullet)


@case(
    "5.1/17",
    description="a ping request nested exactly 32 levels deep (a scalar inside a "
    "container at level 32)",
    requirement=R_10_3 + QUOTE_GAP + B_DEPTH,
    expected="the call is answered: 32 levels are within the profile",
)
async def deepest_allowed(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    await session.send_plain(call_frames(1, raw_body=_nested(32)), "ping request, 32 levels")
    return await answered(ctx, session, 1)


@case(
    "5.1/18",
    description='a ping request using non-shortest encodings (int 1 as d0 01, "a" as d9 01 61)',
    requirement=R_10_3,
    expected="the call is answered: only signed structures must be canonical (§5.3)",
)
async def non_canonical(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    await session.send_plain(
        call_frames(1, raw_body=b"\x81\xd9\x01a\xd0\x01"), "ping request, long forms"
    )
    return await answered(ctx, session, 1)


# ordinal -> (description, bytes of the frame stream).  Each is followed by a PING.
_OPEN_1 = encode_frame(FrameType.OPEN, 1, "ping")
_FRAMES: dict[int, tuple[str, bytes, str]] = {
    19: (
        "a PING frame with a trailing nil inside its length",
        raw_frame(encode([5, bytes(8)]) + b"\xc0"),
        B_COMPLETE,
    ),
    20: ("a frame body that is the byte 0xc1", raw_frame(b"\xc1"), B_C1),
    21: ("a frame body that is a truncated array (92 05)", raw_frame(b"\x92\x05"), B_COMPLETE),
    22: (
        "a RESET on an open stream whose reason is invalid UTF-8",
        _OPEN_1 + raw_frame(b"\x94\x04\x01\x09\xa2\xc3\x28"),
        B_UTF8,
    ),
    23: (
        "a PING whose opaque is an ext type of 8 bytes",
        raw_frame(b"\x92\x05\xd7\x05" + bytes(8)),
        B_EXT,
    ),
}


def _register_frame(ordinal: int, what: str, bad: bytes, bullet: str) -> None:
    async def run(ctx: CaseContext) -> Outcome:
        session = await ctx.open_session()
        frame, opaque = ping_frame()
        await session.send_plain(bad + frame, f"{what}, then PING")
        return await connection_error(ctx, session, {ErrorCode.MALFORMED}, probes=[opaque])

    case(
        f"5.1/{ordinal}",
        description=f"{what}, then a PING",
        requirement=R_5_1 + QUOTE_GAP + bullet + QUOTE_GAP + R_5_1_ERRORS,
        expected="GOAWAY(MALFORMED) and/or close; the PING is not answered",
    )(run)


for _ordinal, (_what, _bad, _bullet) in _FRAMES.items():
    _register_frame(_ordinal, _what, _bad, _bullet)
