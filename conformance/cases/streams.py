"""Streams, flow control, ping and goaway (SPEC.md §8.2 to §8.6, §9).

The target's only method we rely on is ``ping`` (§10.3).  Our client is the initiator, so
our stream ids are odd and the target's are even.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import trio

from petalproto.core import ErrorCode, Settings
from petalproto.core._frames import DataFlags, FrameType, encode_frame
from petalproto.core._msgpack import encode

from .._expect import (
    END,
    answered,
    call_frames,
    connection_error,
    ping_frame,
    roundtrip,
    stream_error,
)
from .._harness import QUOTE_GAP, CaseContext, Level, Outcome, Verdict, case
from .._wire import Session, WireTimeout

R_8_2_OPEN = (
    "A receiver MUST treat an OPEN whose id has the receiver's own parity, or is not "
    "greater than every id the sender opened before, as a connection error of code "
    "PROTOCOL_ERROR."
)
R_8_2_IDLE = (
    "a receiver MUST treat a DATA, CREDIT or RESET frame on an idle stream as a "
    "connection error of code PROTOCOL_ERROR."
)
R_8_2_CLOSED = (
    "A receiver MUST ignore frames on a stream that was open earlier and is now closed (their "
    "DATA still counts against the connection window, §8.5)."
)
R_8_2_ORDER = (
    "The initiator opens streams with odd ids, the responder with even ids, each "
    "side in strictly increasing order."
)
R_8_2_REFUSE = (
    "A peer MAY refuse an OPEN beyond its `max_streams` concurrent streams, or "
    "after it sent GOAWAY, with RESET of code REFUSED_STREAM."
)
R_8_3_DISCARD = (
    "A receiver MUST discard DATA that arrives on a direction after its sender ended that "
    "direction, whether the stream is still open or already closed (its credit comes back as "
    "for any discarded DATA, §8.5); it neither resets the stream for it nor treats it as a "
    "message, so the call's outcome never depends on whether such DATA was read before or "
    "after the call was answered."
)
R_8_3_END = (
    "(a DATA frame with an empty chunk and only END_STREAM ends a direction without a message)"
)
R_8_4_CHUNKS = (
    "A message is one msgpack object (§5), encoded and cut into the chunks of "
    "consecutive DATA frames of one stream; the frame with the last chunk carries "
    "END_MESSAGE."
)
R_8_4_INCOMPLETE = (
    "A receiver MUST treat END_STREAM on a frame that leaves a message incomplete as a "
    "stream error of code PROTOCOL_ERROR."
)
R_8_5_RECV = (
    "a receiver MUST treat DATA beyond the credit it granted as a connection error "
    "of code FLOW_CONTROL_ERROR."
)
R_8_5_SEND = "A sender MUST NOT send DATA beyond either credit"
R_8_5_OVERFLOW = (
    "A CREDIT that would raise a credit above 2^31−1 is a connection error of "  # noqa: RUF001
    "code FLOW_CONTROL_ERROR."
)
R_8_5_DISCARD = (
    "A receiver SHOULD grant credit for DATA it discards (closed streams, reset "
    "streams, malformed messages) at once."
)
R_8_5_GRANT = (
    "it MUST grant all consumed credit once the sender has less than half of that window left."
)
R_8_6 = (
    "RESET abandons a stream in both directions with an error code (§11) and a reason; "
    "after sending or receiving RESET a peer MUST NOT send anything more on that stream."
)
R_9_1 = "A peer MUST answer every PING with a PONG carrying the same 8 bytes."
R_9_2 = (
    "A peer that received GOAWAY MUST close the TCP connection once none of its streams "
    "on that connection remain open."
)
R_9_2_ERROR = (
    "GOAWAY with any other code announces a connection error (§7.3): its receiver MUST NOT "
    "open or answer streams on that connection any more and closes it."
)

PROTOCOL = {ErrorCode.PROTOCOL_ERROR}
FLOW = {ErrorCode.FLOW_CONTROL_ERROR}
PROTOCOL_CLOSE = "GOAWAY(PROTOCOL_ERROR) and/or close; the PING after it is not answered"


async def _after(ctx: CaseContext, frames: bytes, note: str, codes: set[ErrorCode]) -> Outcome:
    """Send ``frames`` then a PING; expect a connection error with a code in ``codes``."""
    session = await ctx.open_session()
    frame, opaque = ping_frame()
    await session.send_plain(frames + frame, note)
    return await connection_error(ctx, session, codes, probes=[opaque])


def _open(stream_id: int, method: str = "ping") -> bytes:
    return encode_frame(FrameType.OPEN, stream_id, method)


def _data(stream_id: int, flags: int, chunk: bytes) -> bytes:
    return encode_frame(FrameType.DATA, stream_id, flags, chunk)


# -- §8.2 stream ids ----------------------------------------------------------------------------

# ordinal -> (description, frames, requirement)
_ID_MISUSE: dict[int, tuple[str, bytes, str]] = {
    1: ("OPEN with the responder's parity (id 2)", _open(2), R_8_2_OPEN),
    2: ("OPEN 3, then OPEN 1", _open(3) + _open(1), R_8_2_OPEN),
    3: ("OPEN 1 twice", _open(1) + _open(1), R_8_2_OPEN),
    4: ("DATA on idle stream 5", _data(5, END, encode({})), R_8_2_IDLE),
    5: ("CREDIT on idle stream 7", encode_frame(FrameType.CREDIT, 7, 1000), R_8_2_IDLE),
    6: ("RESET on idle stream 9", encode_frame(FrameType.RESET, 9, 9, ""), R_8_2_IDLE),
    7: ("DATA on the responder's idle stream 2", _data(2, END, encode({})), R_8_2_IDLE),
    8: (
        "CREDIT on the responder's idle stream 2",
        encode_frame(FrameType.CREDIT, 2, 1000),
        R_8_2_IDLE,
    ),
}


def _register_id_misuse(ordinal: int, what: str, frames: bytes, requirement: str) -> None:
    async def run(ctx: CaseContext) -> Outcome:
        return await _after(ctx, frames, what, PROTOCOL)

    case(
        f"8.2/{ordinal}",
        description=f"{what}, then a PING",
        requirement=requirement,
        expected=PROTOCOL_CLOSE,
    )(run)


for _ordinal, (_what, _frames, _req) in _ID_MISUSE.items():
    _register_id_misuse(_ordinal, _what, _frames, _req)


async def _ping_call(ctx: CaseContext, session: Session, stream_id: int) -> Outcome:
    await session.send_plain(call_frames(stream_id), f"ping call on stream {stream_id}")
    return await answered(ctx, session, stream_id)


@case(
    "8.2/9",
    description="after a completed ping call on stream 1: DATA, CREDIT and RESET "
    "on stream 1, then a PING",
    requirement=R_8_2_CLOSED,
    expected="the frames are ignored: PONG, no GOAWAY, the connection stays open",
)
async def closed_stream_frames(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    first = await _ping_call(ctx, session, 1)
    if first.verdict is not Verdict.PASS:
        return first
    late = (
        _data(1, END, encode({}))
        + encode_frame(FrameType.CREDIT, 1, 100)
        + encode_frame(FrameType.RESET, 1, int(ErrorCode.CANCEL), "")
    )
    await session.send_plain(late, "DATA, CREDIT, RESET on closed stream 1")
    ok, seen = await roundtrip(session, ctx.deadline)
    if not ok or seen.goaway is not None:
        return ctx.violated(f"frames on a closed stream were not ignored: {seen.summary()}")
    return ctx.passed(f"ignored: {seen.summary()}")


@case(
    "8.2/10",
    description="ping calls on streams 1 and 7 (ids may skip)",
    requirement=R_8_2_ORDER,
    expected="both calls are answered",
)
async def skipped_ids(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    first = await _ping_call(ctx, session, 1)
    if first.verdict is not Verdict.PASS:
        return first
    return await _ping_call(ctx, session, 7)


@case(
    "8.2/11",
    description="one OPEN more than the target's max_streams, without requests",
    requirement=R_8_2_REFUSE,
    level=Level.MAY,
    expected="informational: what the target does with the extra stream (REFUSED_STREAM is "
    "one allowed answer)",
)
async def beyond_max_streams(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    n = session.theirs.max_streams
    if n > 1024:
        return ctx.info(f"max_streams is {n}; not probed")
    last = 2 * n + 1
    await session.send_plain(b"".join(_open(i) for i in range(1, last + 1, 2)), f"{n + 1} OPENs")
    seen = await session.watch(
        ctx.deadline, until=lambda f: f[0] is FrameType.RESET and f[1] == last
    )
    return ctx.info(f"stream {last}: {seen.summary()}")


# -- §8.3 lifecycle, §8.4 messages --------------------------------------------------------------


@case(
    "8.3/1",
    description="a ping request with END_STREAM and, in the same transport "
    "message, one more DATA frame on the stream, then a PING",
    requirement=R_8_3_DISCARD,
    expected="the call is answered, then a PONG and no GOAWAY",
)
async def data_after_end(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    extra = encode({"extra": bytes(3000)})
    await session.send_plain(
        call_frames(1) + _data(1, END, extra), "ping request with END_STREAM, then more DATA"
    )
    outcome = await answered(ctx, session, 1)
    if outcome.verdict is not Verdict.PASS:
        return outcome
    ok, seen = await roundtrip(session, ctx.deadline)
    if not ok or seen.goaway is not None:
        return ctx.violated(f"the extra DATA broke the connection: {seen.summary()}")
    return ctx.passed(f"answered; then {seen.summary()}")


@case(
    "8.3/2",
    description="a ping request with END_MESSAGE only, then an empty DATA frame "
    "with only END_STREAM",
    requirement=R_8_3_END,
    expected="the call is answered",
)
async def separate_end_stream(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    frames = (
        _open(1) + _data(1, DataFlags.END_MESSAGE, encode({})) + _data(1, DataFlags.END_STREAM, b"")
    )
    await session.send_plain(frames, "request, then an empty END_STREAM")
    return await answered(ctx, session, 1)


@case(
    "8.4/1",
    description="a ping request cut into three DATA chunks, the first empty",
    requirement=R_8_4_CHUNKS,
    expected="the call is answered",
)
async def chunked_request(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    body = encode({"k": "chunked request"})
    frames = _open(1) + _data(1, 0, b"") + _data(1, 0, body[:5]) + _data(1, END, body[5:])
    await session.send_plain(frames, "request in three chunks")
    return await answered(ctx, session, 1)


@case(
    "8.4/2",
    description="END_STREAM on a DATA frame that leaves the request incomplete",
    requirement=R_8_4_INCOMPLETE,
    expected="RESET(PROTOCOL_ERROR) on the stream; the connection stays open",
)
async def end_stream_mid_message(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    body = encode({"k": "v"})
    frames = _open(1) + _data(1, 0, body[:3]) + _data(1, DataFlags.END_STREAM, body[3:])
    await session.send_plain(frames, "request cut short by END_STREAM")
    return await stream_error(ctx, session, 1, PROTOCOL)


# -- §8.5 flow control --------------------------------------------------------------------------


@case(
    "8.5/1",
    description="DATA on one stream: the target's whole stream_window, then one "
    "byte more (after counting any CREDIT it granted)",
    requirement=R_8_5_RECV,
    expected="GOAWAY(FLOW_CONTROL_ERROR) and/or close within T",
)
async def beyond_stream_window(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    theirs = session.theirs
    window = theirs.stream_window
    chunk = min(theirs.max_frame - 16, 65_488)
    await session.send_plain(_open(1), "OPEN 1 (ping), no request yet")
    frames = bytearray()
    sent = 0
    while sent < window:
        n = min(chunk, window - sent)
        frames += _data(1, 0, bytes(n))
        sent += n
    await session.send_plain(bytes(frames), f"{window} bytes of DATA, no END_MESSAGE")
    ctx.set_window(ctx.timeout)
    ok, seen = await roundtrip(session, ctx.deadline)
    if not ok:
        return ctx.violated(f"the target failed within its window: {seen.summary()}")
    granted = sum(f[2] for f in seen.of(FrameType.CREDIT, 1))
    await session.send_plain(
        _data(1, 0, bytes(granted + 1)), f"{granted + 1} bytes beyond the credit"
    )
    return await connection_error(ctx, session, FLOW)


@case(
    "8.5/2",
    description="CREDIT on the connection raising its credit above 2^31 - 1",
    requirement=R_8_5_OVERFLOW,
    expected="GOAWAY(FLOW_CONTROL_ERROR) and/or close",
)
async def connection_credit_overflow(ctx: CaseContext) -> Outcome:
    return await _after(
        ctx, encode_frame(FrameType.CREDIT, 0, (1 << 31) - 1), "CREDIT(0, 2^31 - 1)", FLOW
    )


@case(
    "8.5/3",
    description="CREDIT on an open stream raising its credit above 2^31 - 1",
    requirement=R_8_5_OVERFLOW,
    expected="GOAWAY(FLOW_CONTROL_ERROR) and/or close",
)
async def stream_credit_overflow(ctx: CaseContext) -> Outcome:
    return await _after(
        ctx,
        _open(1) + encode_frame(FrameType.CREDIT, 1, (1 << 31) - 1),
        "OPEN 1, CREDIT(1, 2^31 - 1)",
        FLOW,
    )


@case(
    "8.5/4",
    description="we announce connection_window 65536, make ping calls and never grant credit",
    requirement=R_8_5_SEND,
    expected="the target's DATA on the connection never exceeds 65536 bytes",
    # Its own time, whatever the run's: a target that ignores credit needs a few hundred
    # answers to show it, and a busy machine sends them slowly.
    timeout=3.0,
)
async def target_respects_credit(ctx: CaseContext) -> Outcome:
    window = 1 << 16
    settings = Settings(stream_window=window, connection_window=window, agent="conformance")
    session = await ctx.session(settings=settings)
    await session.handshake(ctx.deadline)
    batch = min(session.theirs.max_streams, 64)
    received, next_id, outstanding = 0, 1, 0
    while True:
        fresh = batch - outstanding
        await session.send_plain(
            b"".join(call_frames(next_id + 2 * i) for i in range(fresh)), f"{fresh} ping calls"
        )
        next_id += 2 * fresh
        outstanding = batch
        done, got, closed = await _count_data(
            session, outstanding, min(ctx.deadline, trio.current_time() + 0.3)
        )
        received += got
        outstanding -= done
        if received > window:
            return ctx.violated(
                f"the target sent {received} bytes of DATA on a {window}-byte window"
            )
        if closed or done == 0:
            break
    if received == 0:
        return ctx.violated("no ping call was answered")
    return ctx.passed(f"the target stopped at {received} of {window} bytes")


async def _count_data(session: Session, calls: int, until: float) -> tuple[int, int, bool]:
    """Until ``calls`` responses ended or ``until``: (responses ended, DATA bytes, closed)."""
    done = got = 0
    while done < calls:
        try:
            frame = await session.next_frame(until)
        except WireTimeout:
            break
        if frame is None:
            return done, got, True
        if frame[0] is FrameType.DATA:
            got += len(frame[3])
            done += bool(frame[2] & DataFlags.END_STREAM)
    return done, got, False


@case(
    "8.5/5",
    description="DATA for a stream that is already closed, then a PING",
    requirement=R_8_5_DISCARD,
    level=Level.SHOULD,
    expected="CREDIT on the connection for those bytes arrives before the PONG",
)
async def credit_for_discarded(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    first = await _ping_call(ctx, session, 1)
    if first.verdict is not Verdict.PASS:
        return first
    n = 4000
    await session.send_plain(_data(1, 0, bytes(n)), f"{n} bytes of DATA on closed stream 1")
    ok, seen = await roundtrip(session, ctx.deadline)
    credit = sum(f[2] for f in seen.of(FrameType.CREDIT, 0))
    if ok and credit >= n:
        return ctx.passed(f"CREDIT(0) of {credit} bytes before the PONG")
    return ctx.violated(f"{credit} bytes of connection credit before the PONG: {seen.summary()}")


def _ends_all(pending: set[int], frame: tuple[Any, ...]) -> bool:
    """Strike ``frame``'s stream off ``pending`` if the frame ends it; True when none is left."""
    if frame[0] is FrameType.DATA and frame[2] & DataFlags.END_STREAM:
        pending.discard(frame[1])
    return not pending


#: Request size of the credit-return case: within one DATA chunk (SPEC.md §8.4).
_PADDED = encode({"pad": bytes(60_000)})


@case(
    "8.5/6",
    description="ping calls with 60,000-byte requests in batches, each batch answered before "
    "the next, sent only within the connection credit the target granted, until twice its "
    "connection_window (at most 64 MiB) went out",
    requirement=R_8_5_GRANT,
    expected="CREDIT(0) comes back whenever our credit runs low; every call is answered",
)
async def credit_comes_back(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    theirs = session.theirs
    credit = theirs.connection_window
    total = min(2 * credit, 64 << 20)
    batch = max(1, min(theirs.max_streams // 2, 32))
    sent, stream_id = 0, 1
    while sent < total:
        ids = []
        for _ in range(batch):
            if credit < len(_PADDED):
                break
            await session.send_plain(call_frames(stream_id, raw_body=_PADDED))
            ids.append(stream_id)
            credit -= len(_PADDED)
            sent += len(_PADDED)
            stream_id += 2
        if not ids:
            return ctx.violated(
                f"after {sent} bytes, all consumed, the target left us {credit} bytes of "
                "connection credit"
            )
        pending = set(ids)
        seen = await session.watch(ctx.deadline, until=functools.partial(_ends_all, pending))
        credit += sum(f[2] for f in seen.of(FrameType.CREDIT, 0))
        if pending:
            return ctx.violated(f"calls {sorted(pending)[:5]} unanswered: {seen.summary()}")
    return ctx.passed(f"{sent} bytes sent in {stream_id // 2} calls; credit kept coming")


# -- §8.6 reset ---------------------------------------------------------------------------------


@case(
    "8.6/1",
    description="OPEN a ping stream, RESET it before the request, then a PING",
    requirement=R_8_6,
    expected="nothing more on the stream; PONG",
)
async def reset_by_us(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    frames = _open(1) + encode_frame(FrameType.RESET, 1, int(ErrorCode.CANCEL), "changed mind")
    await session.send_plain(frames, "OPEN 1, RESET 1")
    ok, seen = await roundtrip(session, ctx.deadline)
    late = [f for f in seen.frames if f[0] in (FrameType.DATA, FrameType.RESET) and f[1] == 1]
    if late:
        return ctx.violated(f"the target sent on a reset stream: {seen.summary()}")
    if not ok:
        return ctx.violated(f"no PONG: {seen.summary()}")
    return ctx.passed(seen.summary())


# -- §9 ping and goaway -------------------------------------------------------------------------


@case("9.1/1", description="a PING", requirement=R_9_1, expected="a PONG with the same 8 bytes")
async def ping(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    frame, opaque = ping_frame()
    await session.send_frames(frame, note="PING")
    seen = await session.watch(ctx.deadline, until=lambda f: f[0] is FrameType.PONG)
    pongs = seen.of(FrameType.PONG)
    if not pongs:
        return ctx.violated(f"no PONG: {seen.summary()}")
    if pongs[0][1] != opaque:
        return ctx.violated(f"PONG carried {pongs[0][1].hex()}, not {opaque.hex()}")
    return ctx.passed(f"PONG({opaque.hex()})")


@case(
    "9.1/2",
    description="100 PINGs in one write",
    requirement=R_9_1,
    expected="100 PONGs with the same bytes, in order",
)
async def many_pings(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    opaques = [os.urandom(8) for _ in range(100)]
    await session.send_plain(
        b"".join(encode_frame(FrameType.PING, o) for o in opaques), "100 PINGs"
    )
    seen = await session.watch(
        ctx.deadline, until=lambda f: f[0] is FrameType.PONG and f[1] == opaques[-1]
    )
    got = [f[1] for f in seen.of(FrameType.PONG)]
    if got != opaques:
        return ctx.violated(
            f"{len(got)} PONGs, {sum(a == b for a, b in zip(got, opaques, strict=False))} "
            "matching in order"
        )
    return ctx.passed("100 PONGs in order")


@case(
    "9.2/1",
    description="GOAWAY(NO_ERROR) on a connection without streams",
    requirement=R_9_2,
    expected="the target closes the connection within T",
)
async def goaway_no_streams(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    await session.send_frame(
        FrameType.GOAWAY, 0, int(ErrorCode.NO_ERROR), "done", note="GOAWAY(NO_ERROR)"
    )
    return await _expect_close(ctx, session)


@case(
    "9.2/2",
    description="GOAWAY(PROTOCOL_ERROR)",
    requirement=R_9_2_ERROR + QUOTE_GAP + R_9_2,
    expected="the target closes the connection within T",
)
async def goaway_error(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    await session.send_frame(
        FrameType.GOAWAY, 0, int(ErrorCode.PROTOCOL_ERROR), "bad", note="GOAWAY(PROTOCOL_ERROR)"
    )
    return await _expect_close(ctx, session)


async def _expect_close(ctx: CaseContext, session: Session) -> Outcome:
    seen = await session.watch(ctx.deadline)
    if seen.timed_out:
        return ctx.violated(f"still open after {ctx.timeout:g} s: {seen.summary()}")
    return ctx.passed(seen.summary())


@case(
    "9.2/3",
    description="OPEN a ping stream, then GOAWAY(NO_ERROR, last 0) and the request",
    requirement=R_9_2,
    expected="the target closes the connection within T (answering the call first is "
    "allowed, and expected where it counts the stream as its own)",
)
async def goaway_with_call_in_flight(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session(synced=True)
    await session.send_plain(
        _open(1) + encode_frame(FrameType.GOAWAY, 0, int(ErrorCode.NO_ERROR), ""),
        "OPEN 1, GOAWAY(NO_ERROR)",
    )
    await session.send_plain(_data(1, END, encode({})), "the request")
    return await _expect_close(ctx, session)
