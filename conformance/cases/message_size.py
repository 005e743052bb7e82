"""A response larger than the caller's ``stream_window`` (SPEC.md §8.4).

A message can be at most the receiver's ``stream_window`` bytes, because credit comes back
only for whole messages.  To make the target hold a response over our window we need a
method whose answer we can grow: ``dht.get`` returns every live record under a key
(§12.3.3), so we store records of about 4 KB under one key in separate slots, then ask for
them over a second connection on which we announced a 64 KiB window.  A target without a
DHT makes the case UNIMPLEMENTED (§12.2 item 8).
"""

from __future__ import annotations

import os

from petalproto.core import ErrorCode, Settings
from petalproto.core._frames import DataFlags, FrameType

from .._expect import call_frames
from .._harness import CaseContext, Outcome
from .._wire import WireTimeout, describe_frame
from ._dht_common import DhtClient, dht_case, dictionary, expect_answer

R_8_4_TOO_LARGE = (
    "A sender MUST NOT send any DATA of a message larger than the receiver's `stream_window`. "
    "A callee whose response would be larger MUST reset the stream with MESSAGE_TOO_LARGE "
    "instead of sending any part of it;"
)

#: Our announced window on the reading connection: the smallest §6.4 allows.
WINDOW = 1 << 16
#: Records of about 4 KB each; 18 of them encode to more than WINDOW bytes.
RECORDS, VALUE_BYTES = 18, 3900


@dht_case(
    "8.4/3",
    description=f"{RECORDS} records of {VALUE_BYTES}-byte values under one key, then dht.get "
    f"on a connection whose stream_window is {WINDOW}",
    requirement=R_8_4_TOO_LARGE,
    expected="RESET(MESSAGE_TOO_LARGE) on the get, with no DATA before it",
)
async def response_over_our_window(ctx: CaseContext, writer: DhtClient) -> Outcome:
    ctx.set_window(max(ctx.timeout, 0.2 * RECORDS))
    key = os.urandom(32)
    for i in range(RECORDS):
        reply = await writer.put(dictionary(key=key, value=bytes(VALUE_BYTES)))
        if (problem := expect_answer(ctx, reply, f"dht.put of record {i + 1}")) is not None:
            return problem
    settings = Settings(stream_window=WINDOW, connection_window=WINDOW, agent="conformance")
    session = await ctx.session(settings=settings)
    await session.handshake(ctx.deadline)
    await session.send_plain(call_frames(1, "dht.get", {"key": key}), "dht.get call")
    sent = 0
    while True:
        try:
            frame = await session.next_frame(ctx.deadline)
        except WireTimeout:
            return ctx.violated(f"no RESET: the answer stalled after {sent} bytes of DATA")
        if frame is None or frame[0] is FrameType.GOAWAY:
            return ctx.violated(f"the connection ended after {sent} bytes of DATA")
        if frame[0] is FrameType.RESET and frame[1] == 1:
            if frame[2] != ErrorCode.MESSAGE_TOO_LARGE:
                return ctx.violated(f"{describe_frame(frame)}, not MESSAGE_TOO_LARGE")
            if sent:
                return ctx.violated(f"{sent} bytes of DATA before {describe_frame(frame)}")
            return ctx.passed(describe_frame(frame))
        if frame[0] is FrameType.DATA and frame[1] == 1:
            sent += len(frame[3])
            if frame[2] & DataFlags.END_MESSAGE:
                return ctx.violated(
                    f"a whole answer of {sent} bytes within our {WINDOW}-byte window: "
                    "records are missing from it (§12.3.3)"
                )
