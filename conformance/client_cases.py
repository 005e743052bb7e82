"""The client role's cases: what a dialler must do (SPEC.md §4.2, §6.6, §8.5, §8.6).

Their ids name the section of the requirement with ordinals from 101, so that a report
never confuses them with the responder cases of the same section.  Each case starts the
client under test against a fresh listener of ours (``ClientCaseContext.start_client``) and
plays the responder: well-formed, or with one fault in message 2, or with a flow-control
trap after the handshake.  The client's calls are ``ping`` (§10.3), which every peer serves;
we answer them as a conforming peer would.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from petalproto.core import ErrorCode, Identity, Settings
from petalproto.core._frames import DataFlags, FrameType, encode_frame
from petalproto.core._handshake import SIG_PREFIX
from petalproto.core._msgpack import decode_strict, encode

from ._client import (
    ClientCaseContext,
    ResponderSession,
    client_case,
    closes_without_msg3,
    forged_static_signature,
    peer_id_text,
)
from ._ed25519 import SMALL_ORDER_POINTS, forge_small_order
from ._harness import QUOTE_GAP, Outcome
from ._wire import WireTimeout, describe_frame
from .cases._noise_common import (
    B_DECRYPT,
    B_DH,
    B_PEER,
    B_SIG,
    MUST_ABORT,
    ORDER8_KEY,
    R_3_3_VALID_KEY,
    R_4_2,
    R_6_1,
    ZERO_KEY,
)

R_8_5_SEND = "A sender MUST NOT send DATA beyond either credit"
R_8_6 = "after sending or receiving RESET a peer MUST NOT send anything more on that stream."

ABORT = "the client closes the connection after our message 2, without message 3"
#: The windows of the flow-control cases: the smallest §6.4 allows.
WINDOW = 1 << 16
SMALL = Settings(stream_window=WINDOW, connection_window=WINDOW, agent="petal-conformance")
END = DataFlags.END_MESSAGE | DataFlags.END_STREAM


async def _bad_msg2(ctx: ClientCaseContext, build: Any, **start: Any) -> Outcome:
    """Start the client, read its message 1, send the message 2 ``build`` makes."""
    await ctx.start_client(**start)
    session = await ctx.responder()
    if not await session.read_msg1(ctx.deadline):
        return ctx.violated(f"the client closed before message 1 ({ctx.client_says()})")
    await session.send_noise(build(session), note="msg2 (faulty)")
    return await closes_without_msg3(ctx, session)


# -- the handshake -----------------------------------------------------------------------------


@client_case(
    "6.1/101",
    description="a well-formed responder: the client's handshake and ping calls",
    requirement=R_6_1,
    expected="message 3 authenticates with a valid identity proof; the client's calls follow "
    "on odd stream ids and are answered",
)
async def good_responder(ctx: ClientCaseContext) -> Outcome:
    await ctx.start_client()
    session = await ctx.responder()
    await session.handshake_as_responder(ctx)
    calls = Calls(session)
    answered = await calls.serve(ctx.deadline, want=1)
    if answered == 0:
        return ctx.violated(f"no call after the handshake: {calls.seen}")
    if calls.even_ids:
        return ctx.violated(f"the client opened even stream ids: {calls.even_ids}")
    return ctx.passed(f"handshake completed; {answered} ping call(s) answered")


@client_case(
    "4.2/101",
    description="the address names another peer id than the identity we prove",
    requirement=R_4_2 + QUOTE_GAP + MUST_ABORT + B_PEER,
    expected=ABORT,
)
async def wrong_peer_id(ctx: ClientCaseContext) -> Outcome:
    someone = Identity.from_seed(os.urandom(32)).peer_id
    return await _bad_msg2(ctx, lambda s: s.msg2(), peer_id=someone)


@client_case(
    "6.6/101",
    description="message 2's identity_sig covers another Noise static key than ours",
    requirement=MUST_ABORT + B_SIG,
    expected=ABORT,
)
async def forged_signature(ctx: ClientCaseContext) -> Outcome:
    def build(session: ResponderSession) -> bytes:
        return session.msg2(session.payload(signature=forged_static_signature(ctx.identity)))

    return await _bad_msg2(ctx, build)


@client_case(
    "6.6/102",
    description="message 2 with one byte flipped in its encrypted static key",
    requirement=MUST_ABORT + B_DECRYPT,
    expected=ABORT,
)
async def tampered_msg2(ctx: ClientCaseContext) -> Outcome:
    def build(session: ResponderSession) -> bytes:
        message = bytearray(session.msg2())
        message[40] ^= 0x01
        return bytes(message)

    return await _bad_msg2(ctx, build)


def _register_low_order(ordinal: int, what: str, point: bytes) -> None:
    async def run(ctx: ClientCaseContext) -> Outcome:
        return await _bad_msg2(ctx, lambda s: s.low_order_msg2(point))

    client_case(
        f"6.6/{ordinal}",
        description=f"message 2 carries a low-order e ({what}), the rest consistent with an "
        "all-zero ee",
        requirement=MUST_ABORT + B_DH,
        expected=ABORT,
    )(run)


for _ordinal, _what, _point in ((103, "a point of order 8", ORDER8_KEY), (104, "zero", ZERO_KEY)):
    _register_low_order(_ordinal, _what, _point)


@client_case(
    "3.3/101",
    description="the address names the identity point (small order) as peer id, and message 2 "
    "proves it with R = identity, S = 0, which the RFC 8032 equation accepts for any message",
    requirement=R_3_3_VALID_KEY,
    expected="the client refuses the address without dialling, or aborts after message 2",
)
async def small_order_identity(ctx: ClientCaseContext) -> Outcome:
    key = SMALL_ORDER_POINTS[0]
    await ctx.start_client(peer_id=peer_id_text(key))
    wire = await ctx.accept(required=False)
    if wire is None:
        return ctx.passed(f"no connection: the address was refused ({ctx.client_says()})")
    session = ResponderSession(wire, identity=ctx.identity)
    if not await session.read_msg1(ctx.deadline):
        return ctx.passed(f"closed before message 1 ({ctx.client_says()})")
    signature = forge_small_order(key, SIG_PREFIX + session.static_public)
    assert signature is not None  # R = identity fits every message under the identity key
    payload = session.payload(identity_key=key, signature=signature)
    await session.send_noise(session.msg2(payload), note="msg2 (small-order identity)")
    return await closes_without_msg3(ctx, session)


# -- after the handshake -----------------------------------------------------------------------


class Calls:
    """The client's calls as we read them: requests reassembled, DATA counted per stream."""

    def __init__(self, session: ResponderSession) -> None:
        self.session = session
        self.data: dict[int, int] = {}  # stream id -> DATA bytes received
        self.partial: dict[int, bytearray] = {}
        self.methods: dict[int, str] = {}
        self.ended: list[int] = []  # streams whose request is complete, in order
        self.even_ids: list[int] = []
        self.frames: list[tuple[Any, ...]] = []
        self.closed = False

    @property
    def total(self) -> int:
        return sum(self.data.values())

    @property
    def seen(self) -> str:
        shown = [describe_frame(f) for f in self.frames[-6:]]
        return ", then ".join(shown) + (", then close" if self.closed else "") or "nothing"

    async def next(self, deadline: float) -> tuple[Any, ...] | None:
        """The client's next frame, bookkept; None once it closed.

        Raises:
            WireTimeout: nothing by ``deadline``.
        """
        frame = await self.session.next_frame(deadline)
        if frame is None:
            self.closed = True
            return None
        self.frames.append(frame)
        if frame[0] is FrameType.OPEN:
            self.methods[frame[1]] = frame[2]
            if frame[1] % 2 == 0:
                self.even_ids.append(frame[1])
        elif frame[0] is FrameType.DATA:
            stream_id, flags, chunk = frame[1], frame[2], frame[3]
            self.data[stream_id] = self.data.get(stream_id, 0) + len(chunk)
            self.partial.setdefault(stream_id, bytearray()).extend(chunk)
            if flags & DataFlags.END_STREAM:
                self.ended.append(stream_id)
        elif frame[0] is FrameType.PING:
            await self.session.send_frame(FrameType.PONG, frame[1], note="PONG")
        return frame

    async def answer(self, stream_id: int) -> None:
        """Answer a complete ``ping`` request as a conforming callee would (§10.3)."""
        body = bytes(self.partial.pop(stream_id, b""))
        try:
            decode_strict(body)
        except Exception:
            await self.reset(stream_id, ErrorCode.BAD_REQUEST)
            return
        reply = encode({"agent": "petal-conformance", "observed": None})
        await self.session.send_frame(FrameType.DATA, stream_id, END, reply, note="ping answer")

    async def reset(self, stream_id: int, code: ErrorCode) -> None:
        await self.session.send_frame(
            FrameType.RESET, stream_id, int(code), "conformance", note=f"RESET {stream_id}"
        )

    async def serve(self, deadline: float, *, want: int) -> int:
        """Answer complete requests until ``want`` were answered, the client closed or
        ``deadline`` passed.  Returns: how many were answered."""
        answered = 0
        while answered < want:
            try:
                frame = await self.next(deadline)
            except WireTimeout:
                break
            if frame is None:
                break
            if frame[0] is FrameType.DATA and frame[2] & DataFlags.END_STREAM:
                await self.answer(frame[1])
                answered += 1
        return answered

    async def quiet(self, deadline: float) -> None:
        """Read (and bookkeep) whatever the client sends until ``deadline``."""
        try:
            while await self.next(deadline) is not None:
                pass
        except WireTimeout:
            pass


async def _small_windows(ctx: ClientCaseContext) -> tuple[ResponderSession, Calls] | Outcome:
    """The handshake with our 64 KiB windows and the client's first call, answered but
    never credited.  Returns: the session, or the outcome when the case cannot go on."""
    await ctx.start_client()
    session = await ctx.responder(settings=SMALL)
    await session.handshake_as_responder(ctx)
    calls = Calls(session)
    if await calls.serve(ctx.deadline, want=1) == 0:
        return ctx.violated(f"no complete call after the handshake: {calls.seen}")
    if calls.total > WINDOW:
        return ctx.violated(f"{calls.total} bytes of DATA on a {WINDOW}-byte window")
    if calls.total <= WINDOW // 2:
        return ctx.info(
            f"the client's first call has {calls.total} bytes, too few to reach our window; "
            "run it with larger calls (petal ping --payload-bytes 60000)"
        )
    return session, calls


def _consumed_credit(calls: Calls) -> bytes:
    """A connection CREDIT giving back everything the client sent so far."""
    return encode_frame(FrameType.CREDIT, 0, calls.total)


@client_case(
    "8.5/101",
    description=f"we announce windows of {WINDOW} bytes, answer the first call and grant no "
    "credit for a while, then all of it",
    requirement=R_8_5_SEND,
    expected=f"at most {WINDOW} bytes of DATA before our CREDIT; afterwards the stalled call "
    "completes",
)
async def honours_credit(ctx: ClientCaseContext) -> Outcome:
    setup = await _small_windows(ctx)
    if not isinstance(setup, tuple):
        return setup
    session, calls = setup
    waiting = len(calls.ended)
    await calls.quiet(min(ctx.deadline, trio.current_time() + 1.0))
    if calls.total > WINDOW:
        return ctx.violated(f"{calls.total} bytes of DATA on a {WINDOW}-byte window")
    before = calls.total
    await session.send_frames(_consumed_credit(calls), note="CREDIT for all consumed")
    ctx.set_window(ctx.timeout)
    if len(calls.ended) > waiting or await calls.serve(ctx.deadline, want=1):
        return ctx.passed(f"{before} of {WINDOW} bytes before our CREDIT; then the call ended")
    return ctx.violated(f"the stalled call did not go on after our CREDIT: {calls.seen}")


@client_case(
    "8.6/101",
    description="as in 8.5/101, and while the client's second call waits for credit we reset "
    "its stream, then grant the credit",
    requirement=R_8_6,
    expected="no DATA on the reset stream afterwards; the client's later calls go on",
)
async def honours_reset(ctx: ClientCaseContext) -> Outcome:
    setup = await _small_windows(ctx)
    if not isinstance(setup, tuple):
        return setup
    session, calls = setup
    await calls.quiet(min(ctx.deadline, trio.current_time() + 0.5))
    stalled = [s for s in calls.methods if s not in calls.ended and s % 2 == 1]
    if not stalled:
        return ctx.info(f"no call waits for credit; the client sent: {calls.seen}")
    target = stalled[0]
    sent_before = calls.data.get(target, 0)
    await calls.reset(target, ErrorCode.CANCEL)
    await session.send_frames(_consumed_credit(calls), note="CREDIT after the RESET")
    ctx.set_window(ctx.timeout)
    await calls.quiet(min(ctx.deadline, trio.current_time() + 1.0))
    after = calls.data.get(target, 0) - sent_before
    if after:
        return ctx.violated(f"{after} bytes of DATA on stream {target} after our RESET")
    later = [s for s in calls.methods if s > target]
    note = f"; later calls on streams {later}" if later else "; no later call"
    return ctx.passed(f"nothing more on stream {target} after our RESET{note}")
