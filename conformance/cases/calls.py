"""Calls: unary requests, the ping method and unknown methods (SPEC.md §1.3, §10)."""

from __future__ import annotations

from typing import Any

from petalproto.core import ErrorCode
from petalproto.core._frames import DataFlags, FrameType, encode_frame

from .._expect import answered, call_frames, roundtrip, stream_error
from .._harness import QUOTE_GAP, CaseContext, Outcome, Verdict, case
from .._wire import Session, describe_frame

R_1_3 = (
    "A receiver MUST ignore map keys it does not know in the handshake settings (§6.4) "
    "and in call bodies (§10), unless a section says otherwise."
)
R_10_1 = (
    "The caller opens a stream whose method names the call, sends one request message "
    "with END_STREAM, and the callee answers with one response message with END_STREAM. "
    "Requests and responses are msgpack maps."
)
R_10_1_BAD = (
    "A callee MUST answer a request it cannot parse or that breaks the call's schema "
    "with RESET of code BAD_REQUEST (or the more specific code the call's section "
    "names)."
)
R_10_3 = (
    "Every peer MUST serve the unary method `ping`: any map as request; the response is "
    "a map with `agent` (text) and `observed` (the caller's address as seen by the "
    "callee, `[host, port]`, or nil)."
)
R_10_4 = (
    "A peer MUST answer an OPEN of a method it does not serve with RESET of code "
    "UNKNOWN_METHOD, and keep the connection open."
)
R_8_6 = "after sending or receiving RESET a peer MUST NOT send anything more on that stream."

BAD_REQUEST = {ErrorCode.BAD_REQUEST}
UNKNOWN = "conformance.no-such-method"


def _is_map(body: Any) -> str:
    return "" if isinstance(body, dict) else "the response is not a map"


def _ping_response(body: Any) -> str:
    if not isinstance(body, dict):
        return "the response is not a map"
    if not isinstance(body.get("agent"), str):
        return "agent is missing or not text"
    observed = body.get("observed", "missing")
    if observed is None:
        return ""
    if (
        not isinstance(observed, list)
        or len(observed) != 2
        or not isinstance(observed[0], str)
        or type(observed[1]) is not int
        or not 0 < observed[1] < 65536
    ):
        return f"observed is {observed!r}, not [host, port] or nil"
    return ""


@case(
    "10.1/1",
    description="a ping call",
    requirement=R_10_1,
    expected="one response message, a map, with END_STREAM",
)
async def unary_call(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    await session.send_plain(call_frames(1), "ping call")
    return await answered(ctx, session, 1, _is_map)


def _register_bad_request(ordinal: int, what: str, frames: bytes) -> None:
    async def run(ctx: CaseContext) -> Outcome:
        session = await ctx.open_session()
        await session.send_plain(frames, f"ping call: {what}")
        return await stream_error(ctx, session, 1, BAD_REQUEST)

    case(
        f"10.1/{ordinal}",
        description=f"a ping call whose request is {what}",
        requirement=R_10_1_BAD + QUOTE_GAP + R_10_3,
        expected="RESET(BAD_REQUEST) on the stream; the connection stays open",
    )(run)


_OPEN_1 = encode_frame(FrameType.OPEN, 1, "ping")
for _ordinal, _what, _frames in (
    (2, "an array, not a map", call_frames(1, body=[1, 2])),
    (3, "nil", call_frames(1, raw_body=b"\xc0")),
    (4, "an integer", call_frames(1, body=7)),
    (
        5,
        "missing: END_STREAM without a message",
        _OPEN_1 + encode_frame(FrameType.DATA, 1, DataFlags.END_STREAM, b""),
    ),
):
    _register_bad_request(_ordinal, _what, _frames)


@case(
    "10.3/1",
    description="a ping call with an empty map",
    requirement=R_10_3,
    expected="a map with agent (text) and observed ([host, port] or nil)",
)
async def ping_call(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    await session.send_plain(call_frames(1), "ping call")
    return await answered(ctx, session, 1, _ping_response)


@case(
    "10.3/2",
    description="ten ping calls on streams 1..19 in one write",
    requirement=R_10_3,
    expected="ten responses",
)
async def concurrent_pings(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    ids = list(range(1, 20, 2))
    await session.send_plain(b"".join(call_frames(i) for i in ids), "ten ping calls")
    ended: set[int] = set()
    while len(ended) < len(ids):
        frame = await session.next_frame(ctx.deadline)
        if frame is None:
            return ctx.violated(f"closed after {len(ended)} responses")
        if frame[0] is FrameType.DATA and frame[2] & DataFlags.END_STREAM:
            ended.add(frame[1])
        elif frame[0] in (FrameType.RESET, FrameType.GOAWAY):
            return ctx.violated(f"{describe_frame(frame)} after {len(ended)} responses")
    return ctx.passed("ten responses")


@case(
    "1.3/2",
    description="a ping request carrying keys the target does not know",
    requirement=R_1_3,
    expected="the call is answered",
)
async def unknown_request_keys(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    body = {"future": 1, "nested": {"x": [1, 2.5, None, True, b"\x00"]}}
    await session.send_plain(call_frames(1, body=body), "ping call with unknown keys")
    return await answered(ctx, session, 1, _ping_response)


@case(
    "10.4/1",
    description=f"a call of the unknown method {UNKNOWN!r}, then a PING",
    requirement=R_10_4 + QUOTE_GAP + R_8_6,
    expected="RESET(UNKNOWN_METHOD) on the stream and nothing more on it; PONG",
)
async def unknown_method(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    await session.send_plain(call_frames(1, UNKNOWN), "call of an unknown method")
    return await _expect_unknown(ctx, session)


@case(
    "10.4/2",
    description=f"OPEN of the unknown method {UNKNOWN!r} without a request",
    requirement=R_10_4,
    expected="RESET(UNKNOWN_METHOD) on the stream; PONG",
)
async def unknown_method_open_only(ctx: CaseContext) -> Outcome:
    session = await ctx.open_session()
    await session.send_plain(encode_frame(FrameType.OPEN, 1, UNKNOWN), "OPEN only")
    return await _expect_unknown(ctx, session)


async def _expect_unknown(ctx: CaseContext, session: Session) -> Outcome:
    outcome = await stream_error(ctx, session, 1, {ErrorCode.UNKNOWN_METHOD})
    if outcome.verdict is not Verdict.PASS:
        return outcome
    ok, seen = await roundtrip(session, ctx.deadline)
    after = [f for f in seen.frames if f[0] in (FrameType.DATA, FrameType.RESET) and f[1] == 1]
    if after or not ok:
        return ctx.violated(f"after the RESET: {seen.summary()}")
    return outcome
