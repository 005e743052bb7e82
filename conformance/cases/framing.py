"""Transport messages, frames and connection errors (SPEC.md §7, §8.1).

Every case completes a well-formed handshake first, then breaks one rule.  Where the bad
input leaves the stream parsable, a PING follows it in the same write: a PONG for it means
the target went on processing (SPEC.md §7.3), a FAIL found without waiting for a timeout.
"""

from __future__ import annotations

import os
import struct

from petalproto.core import ErrorCode
from petalproto.core._frames import FrameType, encode_frame
from petalproto.core._msgpack import encode

from .._expect import END, answered, connection_error, ping_frame
from .._harness import CaseContext, Level, Outcome, case
from .._wire import raw_frame

R_7_1 = (
    "A receiver MUST close the connection when a transport message fails to "
    "authenticate, including a replayed or reordered message (the nonces are implicit "
    "and sequential)."
)
R_7_1_LEN = (
    "A ciphertext is at least 16 bytes (the tag) and at most 65535 bytes, so it "
    "carries at most 65519 bytes of plaintext."
)
R_7_2_MAX = (
    "A receiver MUST treat a frame whose length exceeds its announced `max_frame` as "
    "a connection error of code FRAME_TOO_LARGE, as soon as the four length bytes "
    "have arrived and before buffering any of the frame's body."
)
R_7_2_ZERO = "A receiver MUST treat a frame of length 0 as a connection error of code MALFORMED."
R_7_2_SPAN = (
    "Frames are independent of Noise message boundaries: a frame may span several "
    "transport messages, and one transport message may hold several frames."
)
R_7_2_FRAME = (
    "A frame is a 4-byte big-endian length L followed by L bytes holding exactly "
    "one msgpack array (§5, §8.1)."
)
R_7_3_GOAWAY = (
    "On a connection error a peer SHOULD send a GOAWAY frame (§9.2) carrying the error code"
)
R_7_3_CLOSE = (
    "and then MUST close the TCP connection; it MUST NOT process any further frames "
    "from that connection."
)
R_8_1 = (
    "A receiver MUST treat a frame of an unknown type as a connection error of code "
    "PROTOCOL_ERROR, and a frame of a known type with a different number or type of "
    "elements as a connection error of code MALFORMED."
)

CLOSES = (
    "the target closes the connection (a GOAWAY before is allowed); the PING after it "
    "is not answered"
)
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
MALFORMED = {ErrorCode.MALFORMED}
PROTOCOL = {ErrorCode.PROTOCOL_ERROR}


# -- §7.1 transport messages ----------------------------------------------------------------


@case(
    "7.1/1",
    description="a transport message with one ciphertext byte flipped, then the "
    "same message intact",
    requirement=R_7_1,
    expected=CLOSES,
)
async def tampered_ciphertext(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    frame, opaque = ping_frame()
    sealed = session.seal(frame)
    bad = bytearray(sealed)
    bad[6] ^= 0x01
    await session.wire.send(bytes(bad) + sealed, "tampered PING, then the original")
    return await connection_error(ctx, session, None, probes=[opaque])


@case(
    "7.1/2",
    description="a transport message sent twice (a replay)",
    requirement=R_7_1,
    expected="the first PING is answered; the replay closes the connection",
)
async def replayed_message(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    frame, opaque = ping_frame()
    sealed = session.seal(frame)
    await session.wire.send(sealed, "PING")
    seen = await session.watch(ctx.deadline, until=lambda f: f[0] is FrameType.PONG)
    if not seen.of(FrameType.PONG):
        return ctx.violated(f"the first PING was not answered: {seen.summary()}")
    await session.wire.send(sealed, "the same PING message again")
    return await connection_error(ctx, session, None, probes=[opaque])


@case(
    "7.1/3",
    description="two transport messages in swapped order",
    requirement=R_7_1,
    expected=CLOSES,
)
async def reordered_messages(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    (first, a), (second, b) = ping_frame(), ping_frame()
    sealed_a, sealed_b = session.seal(first), session.seal(second)
    await session.wire.send(sealed_b + sealed_a, "message n+1 before message n")
    return await connection_error(ctx, session, None, probes=[a, b])


@case(
    "7.1/4",
    description="a transport message of 15 bytes, shorter than the tag, then a valid PING",
    requirement=R_7_1_LEN + " " + R_7_1,
    expected=CLOSES,
)
async def short_message(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    frame, opaque = ping_frame()
    await session.wire.send(
        _U16.pack(15) + os.urandom(15) + session.seal(frame), "15-byte message, then PING"
    )
    return await connection_error(ctx, session, None, probes=[opaque])


@case(
    "7.1/5",
    description="a 65551-byte transport message, as noiseprotocol 0.3.1 writes for "
    "65535 bytes of plaintext; its 16-bit length field wraps to 15",
    requirement=R_7_1_LEN + " " + R_7_1,
    expected="the target closes the connection",
)
async def oversized_message(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    size = 65535 + 16
    await session.wire.send(
        _U16.pack(size & 0xFFFF) + os.urandom(size), "65551-byte message, length field 15"
    )
    return await connection_error(ctx, session, None)


# -- §7.2 frames --------------------------------------------------------------------------------


async def _too_large(ctx: CaseContext, length_of: str, split: bool) -> Outcome:
    session = await ctx.open_session()
    limit = session.theirs.max_frame
    length = limit + 1 if length_of == "max_frame + 1" else 0xFFFFFFFF
    header = _U32.pack(length)
    pieces = (header[:2], header[2:]) if split else (header,)
    wire = b"".join(session.seal(piece) for piece in pieces)
    session.wire.log.add("send", "plain", header, f"frame length {length}, no body")
    await session.wire.send(wire, f"length {length} ({length_of}); no body follows")
    return await connection_error(ctx, session, {ErrorCode.FRAME_TOO_LARGE})


@case(
    "7.2/1",
    description="a frame length of max_frame + 1; no body follows",
    requirement=R_7_2_MAX,
    expected="GOAWAY(FRAME_TOO_LARGE) and/or close within T, without the body",
)
async def frame_over_limit(ctx: CaseContext) -> Outcome:
    return await _too_large(ctx, "max_frame + 1", split=False)


@case(
    "7.2/2",
    description="a frame length of 2^32 - 1; no body follows",
    requirement=R_7_2_MAX,
    expected="GOAWAY(FRAME_TOO_LARGE) and/or close within T, without the body",
)
async def frame_length_max(ctx: CaseContext) -> Outcome:
    return await _too_large(ctx, "2^32 - 1", split=False)


@case(
    "7.2/3",
    description="a frame length of max_frame + 1 whose four bytes come in two transport messages",
    requirement=R_7_2_MAX,
    expected="GOAWAY(FRAME_TOO_LARGE) and/or close within T, without the body",
)
async def frame_over_limit_split(ctx: CaseContext) -> Outcome:
    return await _too_large(ctx, "max_frame + 1", split=True)


@case(
    "7.2/4",
    description="a frame of length 0, then a PING",
    requirement=R_7_2_ZERO,
    expected="GOAWAY(MALFORMED) and/or close; the PING is not answered",
)
async def empty_frame(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    frame, opaque = ping_frame()
    await session.send_plain(_U32.pack(0) + frame, "zero-length frame, then PING")
    return await connection_error(ctx, session, MALFORMED, probes=[opaque])


@case(
    "7.2/5",
    description="a PING frame cut over three transport messages, inside its "
    "length field and its body",
    requirement=R_7_2_SPAN,
    expected="a PONG with the same bytes",
)
async def frame_across_messages(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    frame, opaque = ping_frame()
    pieces = (frame[:2], frame[2:7], frame[7:])
    for piece in pieces:
        session.wire.log.add("send", "plain", piece, "PING piece")
    await session.wire.send(b"".join(session.seal(p) for p in pieces), "PING in 3 messages")
    seen = await session.watch(ctx.deadline, until=lambda f: f[0] is FrameType.PONG)
    pongs = seen.of(FrameType.PONG)
    if pongs and pongs[0][1] == opaque:
        return ctx.passed("PONG")
    return ctx.violated(f"expected PONG({opaque.hex()}): {seen.summary()}")


@case(
    "7.2/6",
    description="three PING frames in one transport message",
    requirement=R_7_2_SPAN,
    expected="three PONGs with the same bytes, in order",
)
async def frames_in_one_message(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    pings = [ping_frame() for _ in range(3)]
    await session.send_plain(b"".join(f for f, _ in pings), "three PINGs, one message")
    want = [o for _, o in pings]
    seen = await session.watch(
        ctx.deadline, until=lambda f: f[0] is FrameType.PONG and f[1] == want[-1]
    )
    got = [f[1] for f in seen.of(FrameType.PONG)]
    if got == want:
        return ctx.passed("three PONGs in order")
    return ctx.violated(f"expected PONGs {[o.hex() for o in want]}: {seen.summary()}")


@case(
    "7.2/7",
    description="a PING frame whose length field claims one byte more than the "
    "complete PING body that follows; then EOF",
    requirement=R_7_2_FRAME,
    expected="no PONG: the frame never completed",
)
async def truncated_frame(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    frame, _ = ping_frame()
    body = frame[4:]
    await session.send_plain(_U32.pack(len(body) + 1) + body, "PING, length one too long")
    await session.wire.send_eof()
    seen = await session.watch(ctx.deadline, until=lambda f: f[0] is FrameType.PONG)
    if seen.of(FrameType.PONG):
        return ctx.violated(f"the target acted on an incomplete frame: {seen.summary()}")
    return ctx.passed(seen.summary())


@case(
    "7.2/8",
    description="a DATA frame of exactly max_frame bytes carrying a ping request",
    requirement=R_7_2_MAX,
    expected="the call is answered",
)
async def frame_at_limit(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    settings = session.theirs
    filling = _frame_filling(settings.max_frame)
    if filling is None or len(filling[1]) > min(settings.stream_window, settings.connection_window):
        return ctx.unimplemented("max_frame exceeds the windows; no DATA frame can fill it")
    stream_id, chunk = filling
    frame = encode_frame(FrameType.DATA, stream_id, END, chunk)
    if len(frame) - 4 != settings.max_frame:  # pragma: no cover - _frame_filling's promise
        raise AssertionError("frame size arithmetic")
    await session.send_plain(
        encode_frame(FrameType.OPEN, stream_id, "ping") + frame,
        f"ping call, DATA frame of {settings.max_frame} bytes",
    )
    ctx.set_window(ctx.timeout)
    return await answered(ctx, session, stream_id)


def _bin_header(n: int) -> int:
    return 2 if n < 0x100 else 3 if n < 0x10000 else 5


def _frame_filling(max_frame: int) -> tuple[int, bytes] | None:
    """A stream id and a request ``{key: bin}`` whose DATA frame is exactly ``max_frame``
    bytes.

    The frame body is ``94 02`` + stream id + ``03`` + bin header + chunk; the chunk is
    ``81`` + fixstr key + bin header + padding.  Header sizes jump at 256 and 65536, which
    some lengths cannot straddle, so the stream id's width (1, 2 or 3 bytes) and the key
    vary too.
    """
    for stream_id, id_len in ((1, 1), (201, 2), (301, 3)):
        for key in ("p", "pa", "pad", "padd"):
            for pad in range(max_frame - 24, max_frame - 8):
                chunk_len = 2 + len(key) + _bin_header(pad) + pad
                if 3 + id_len + _bin_header(chunk_len) + chunk_len == max_frame:
                    return stream_id, encode({key: bytes(pad)})
    return None  # pragma: no cover - some combination always fits


# -- §7.3 connection errors ---------------------------------------------------------------------


async def _goaway_code(ctx: CaseContext, bad: bytes, code: ErrorCode, note: str) -> Outcome:
    session = await ctx.open_session(synced=True)
    await session.send_plain(bad, note)
    seen = await session.watch(ctx.deadline)
    goaway = seen.goaway
    if goaway is None:
        return ctx.violated(f"no GOAWAY: {seen.summary()}")
    if goaway[2] != code:
        return ctx.violated(f"GOAWAY without {code.name}: {seen.summary()}")
    return ctx.passed(seen.summary())


@case(
    "7.3/1",
    description="an unknown frame type: is GOAWAY(PROTOCOL_ERROR) sent before the close?",
    requirement=R_7_3_GOAWAY,
    level=Level.SHOULD,
    expected="GOAWAY(PROTOCOL_ERROR), then close",
)
async def goaway_on_protocol_error(ctx: CaseContext) -> Outcome:
    return await _goaway_code(
        ctx, raw_frame(encode([99])), ErrorCode.PROTOCOL_ERROR, "frame type 99"
    )


@case(
    "7.3/2",
    description="a frame length over max_frame: is GOAWAY(FRAME_TOO_LARGE) sent before the close?",
    requirement=R_7_3_GOAWAY,
    level=Level.SHOULD,
    expected="GOAWAY(FRAME_TOO_LARGE), then close",
)
async def goaway_on_frame_too_large(ctx: CaseContext) -> Outcome:
    return await _goaway_code(
        ctx, _U32.pack(0xFFFFFFFF), ErrorCode.FRAME_TOO_LARGE, "frame length 2^32 - 1"
    )


@case(
    "7.3/3",
    description="a connection error (OPEN with an even id) followed, in the same "
    "transport message, by a ping call and a PING",
    requirement=R_7_3_CLOSE,
    expected="close; neither the call nor the PING is answered",
)
async def nothing_after_error(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    frame, opaque = ping_frame()
    call = encode_frame(FrameType.OPEN, 1, "ping") + encode_frame(
        FrameType.DATA, 1, END, encode({})
    )
    await session.send_plain(
        encode_frame(FrameType.OPEN, 2, "ping") + call + frame,
        "OPEN 2, then a ping call and a PING",
    )
    return await connection_error(ctx, session, PROTOCOL, probes=[opaque], stream_id=1)


# -- §8.1 frame shapes --------------------------------------------------------------------------

_OPEN_1 = encode_frame(FrameType.OPEN, 1, "ping")

# ordinal -> (description, bytes of the frame stream, acceptable GOAWAY codes)
_SHAPES: dict[int, tuple[str, bytes, set[ErrorCode]]] = {
    1: ("frame type 99", raw_frame(encode([99, 1, 2])), PROTOCOL),
    2: ("frame type 0", raw_frame(encode([0])), PROTOCOL),
    3: ("PING with a 7-byte opaque", raw_frame(encode([5, bytes(7)])), MALFORMED),
    4: ("PING with an extra element", raw_frame(encode([5, bytes(8), 0])), MALFORMED),
    5: ("a map instead of an array", raw_frame(encode({"type": 5})), MALFORMED | PROTOCOL),
    6: ("an empty array", raw_frame(encode([])), MALFORMED | PROTOCOL),
    7: ("OPEN with a 65-byte method", raw_frame(encode([1, 1, "m" * 65])), MALFORMED),
    8: ("OPEN with stream id 0", raw_frame(encode([1, 0, "ping"])), MALFORMED),
    9: ("OPEN with an empty method", raw_frame(encode([1, 1, ""])), MALFORMED),
    10: (
        "DATA with flags 4, on an open stream",
        _OPEN_1 + raw_frame(encode([2, 1, 4, b""])),
        MALFORMED,
    ),
    11: (
        "DATA whose chunk is a str, on an open stream",
        _OPEN_1 + raw_frame(encode([2, 1, 0, "text"])),
        MALFORMED,
    ),
    12: ("CREDIT with increment 0", raw_frame(encode([3, 0, 0])), MALFORMED),
    13: (
        "RESET with a reason of 257 bytes, on an open stream",
        _OPEN_1 + raw_frame(encode([4, 1, 9, "r" * 257])),
        MALFORMED,
    ),
    14: ("PING whose opaque is a str", raw_frame(encode([5, "abcdefgh"])), MALFORMED),
    15: ("GOAWAY with error code -1", raw_frame(encode([7, 0, -1, ""])), MALFORMED),
    16: ("OPEN whose method is bin", raw_frame(encode([1, 1, b"ping"])), MALFORMED),
}


def _register_shape(ordinal: int, what: str, bad: bytes, codes: set[ErrorCode]) -> None:
    names = "/".join(sorted(c.name for c in codes))

    async def run(ctx: CaseContext) -> Outcome:
        session = await ctx.open_session()
        frame, opaque = ping_frame()
        await session.send_plain(bad + frame, f"{what}, then PING")
        return await connection_error(ctx, session, codes, probes=[opaque])

    case(
        f"8.1/{ordinal}",
        description=f"{what}, then a PING",
        requirement=R_8_1,
        expected=f"GOAWAY({names}) and/or close; the PING is not answered",
    )(run)


for _ordinal, (_what, _bad, _codes) in _SHAPES.items():
    _register_shape(_ordinal, _what, _bad, _codes)
