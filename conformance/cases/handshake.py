"""The Noise handshake: suite, prologue, message lengths, payloads, timeout (SPEC.md §6).

Our client is the initiator, so the target is checked as a responder.  Faults that only a
responder can commit (a tampered message 2, a bad responder signature) need the target to
dial us; they belong to a client-role mode and are not in this list.
"""

from __future__ import annotations

import os

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petalproto.core import ErrorCode
from petalproto.core._errors import HandshakeFailed
from petalproto.core._frames import FrameType, encode_frame
from petalproto.core._handshake import SIG_PREFIX
from petalproto.core._msgpack import decode_strict, encode

from .._ed25519 import (
    SMALL_ORDER_POINTS,
    forge_small_order,
    identity_r_signature,
    non_canonical_s,
)
from .._expect import END, handshake_abort, roundtrip
from .._harness import QUOTE_GAP, CaseContext, Level, Outcome, Verdict, case
from .._wire import Observation, Session, TargetViolation, fresh_ephemeral, raw_frame
from ._noise_common import (
    ABORT,
    B_DECRYPT,
    B_SHAPE,
    B_SIG,
    R_3_3_VALID_KEY,
    R_3_3_VALID_SIG,
    R_6_1,
    R_6_1_STATIC,
    R_6_2,
    R_6_3,
    R_6_3_EARLY,
    R_6_3_FRAMING,
    R_6_3_MSG2,
    R_6_4_DEFAULTS,
    R_6_4_ORDER,
    R_6_4_RANGE,
    R_6_6,
    R_6_7,
    R_7_3_GOAWAY,
    R_9_2,
    U16,
    junk_msg3,
    msg3_accepted,
    msg3_fault_on,
    settings_map,
    to_msg3,
)

# -- §6.1, §6.2 -------------------------------------------------------------------------------


@case(
    "6.1/1",
    description="a well-formed handshake completes and a PING is answered",
    requirement=R_6_1,
    expected="message 2 authenticates; after message 3 a PING gets its PONG",
)
async def handshake_completes(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    hello = await session.handshake(ctx.deadline)
    ok, seen = await roundtrip(session, ctx.deadline)
    if not ok:
        return ctx.violated(f"no PONG after the handshake: {seen.summary()}")
    return ctx.passed(f"message 2 of {len(hello.message)} bytes from {hello.peer_id}; PONG")


@case(
    "6.1/2",
    description="the target's Noise static key on two connections",
    requirement=R_6_1_STATIC,
    level=Level.SHOULD,
    expected="informational: whether the static key changes between connections",
)
async def static_key_freshness(ctx: CaseContext) -> Outcome:
    first = await ctx.session()
    one = await to_msg3(ctx, first)
    second = await ctx.session()
    two = await to_msg3(ctx, second)
    same = one.remote_static == two.remote_static
    return ctx.info(
        "the same static key on both connections (per process is allowed)"
        if same
        else "a fresh static key per connection"
    )


@case(
    "6.2/1",
    description="handshake under an empty prologue (libp2p's choice)",
    requirement=R_6_2 + QUOTE_GAP + R_6_6 + QUOTE_GAP + B_DECRYPT,
    expected="message 2 fails to authenticate for us; after a message 3 the target aborts",
)
async def empty_prologue(ctx: CaseContext) -> Outcome:
    return await _wrong_prologue(ctx, b"")


@case(
    "6.2/2",
    description="handshake under the prologue of another version, petalproto/0.1",
    requirement=R_6_2 + QUOTE_GAP + R_6_6 + QUOTE_GAP + B_DECRYPT,
    expected="message 2 fails to authenticate for us; after a message 3 the target aborts",
)
async def other_version_prologue(ctx: CaseContext) -> Outcome:
    return await _wrong_prologue(ctx, b"petalproto/0.1")


async def _wrong_prologue(ctx: CaseContext, prologue: bytes) -> Outcome:
    session = await ctx.session(prologue=prologue)
    await session.send_noise(session.msg1(), note="msg1")
    try:
        hello = await session.read_msg2(ctx.deadline)
    except HandshakeFailed:
        return await junk_msg3(ctx, session)
    if hello is None:
        return ctx.passed("the target closed before message 2")
    return ctx.violated(f"message 2 authenticated under the prologue {prologue!r}")


# -- §6.3 lengths -------------------------------------------------------------------------------


async def _msg1_raw(ctx: CaseContext, length: int, body: bytes, note: str) -> Outcome:
    session = await ctx.session()
    await session.wire.send(U16.pack(length) + body, note)
    return await handshake_abort(ctx, session)


@case(
    "6.3/1",
    description="message 1 whose length field says 33; only 32 bytes follow",
    requirement=R_6_3,
    expected=ABORT + ", without waiting for the 33rd byte",
)
async def msg1_length_33(ctx: CaseContext) -> Outcome:
    return await _msg1_raw(ctx, 33, fresh_ephemeral(), "msg1, length 33")


@case("6.3/2", description="message 1 of 31 bytes", requirement=R_6_3, expected=ABORT)
async def msg1_length_31(ctx: CaseContext) -> Outcome:
    return await _msg1_raw(ctx, 31, fresh_ephemeral()[:31], "msg1, length 31")


@case(
    "6.3/3",
    description="message 1 whose length field says 65535; only 32 bytes follow",
    requirement=R_6_3,
    expected=ABORT + ", without waiting for the body",
)
async def msg1_length_max(ctx: CaseContext) -> Outcome:
    return await _msg1_raw(ctx, 65535, fresh_ephemeral(), "msg1, length 65535")


@case("6.3/4", description="message 1 of length 0", requirement=R_6_3, expected=ABORT)
async def msg1_length_0(ctx: CaseContext) -> Outcome:
    return await _msg1_raw(ctx, 0, b"", "msg1, length 0")


@case(
    "6.3/5",
    description="message 3 whose length field says 64 + 1025; only 64 bytes follow",
    requirement=R_6_3,
    expected=ABORT + ", without waiting for the body",
)
async def msg3_length_over(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    await to_msg3(ctx, session)
    message = session.msg3()
    await session.send_noise(message[:64], length=64 + 1025, note="msg3 head, length 1089")
    return await handshake_abort(ctx, session, probe=False)


@case(
    "6.3/6",
    description="message 3 with an empty payload (64 bytes)",
    requirement=R_6_3,
    expected=ABORT,
)
async def msg3_empty_payload(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    await to_msg3(ctx, session)
    await session.send_noise(session.msg3(b""), note="msg3, P = 0")
    return await handshake_abort(ctx, session)


@case(
    "6.3/7",
    description="the target's message 2 lies in its length window",
    requirement=R_6_3_MSG2,
    expected="97 <= len(message 2) <= 1120",
)
async def msg2_length(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    hello = await to_msg3(ctx, session)
    n = len(hello.message)
    if not 97 <= n <= 96 + 1024:
        return ctx.violated(f"message 2 is {n} bytes")
    return ctx.passed(f"message 2 is {n} bytes (payload {n - 96})")


@case(
    "6.3/8",
    description="the handshake arrives in pieces, cut inside the length fields",
    requirement=R_6_3_FRAMING,
    expected="the handshake completes; a PING is answered",
)
async def handshake_in_pieces(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    msg1 = U16.pack(32) + session.msg1()
    for piece in (msg1[:1], msg1[1:3], msg1[3:]):
        await session.wire.send(piece, "msg1 piece")
        await trio.sleep(0.005)
    try:
        hello = await session.read_msg2(ctx.deadline)
    except HandshakeFailed as exc:
        raise TargetViolation(f"message 2 did not authenticate: {exc.msg}") from exc
    if hello is None:
        return ctx.violated("the target closed instead of reassembling message 1")
    msg3 = session.msg3()
    framed = U16.pack(len(msg3)) + msg3
    await session.wire.send(framed[:1], "msg3 piece")
    await trio.sleep(0.005)
    await session.wire.send(framed[1:], "msg3 piece")
    ok, seen = await roundtrip(session, ctx.deadline)
    return (
        ctx.passed("handshake completed from pieces")
        if ok
        else ctx.violated(f"no PONG: {seen.summary()}")
    )


@case(
    "6.3/9",
    description="message 3 and a PING in the same TCP write",
    requirement=R_6_3_EARLY,
    expected="the PING is answered",
)
async def early_transport(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    await to_msg3(ctx, session)
    msg3 = session.msg3()
    ok, seen = await _ping_with(session, ctx, U16.pack(len(msg3)) + msg3)
    return ctx.passed("PING answered") if ok else ctx.violated(f"no PONG: {seen.summary()}")


@case(
    "6.3/10",
    description="message 3 and a frame of unknown type in the same TCP write",
    requirement=R_6_3_EARLY + QUOTE_GAP + R_7_3_GOAWAY,
    level=Level.SHOULD,
    expected="GOAWAY(PROTOCOL_ERROR), then close",
)
async def early_error(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    await to_msg3(ctx, session)
    msg3 = session.msg3()
    bad = raw_frame(encode([99]))
    session.wire.log.add("send", "plain", bad, "frame type 99")
    await session.wire.send(U16.pack(len(msg3)) + msg3 + session.seal(bad), "msg3 + frame type 99")
    seen = await session.watch(ctx.deadline)
    goaway = seen.goaway
    if goaway is None or goaway[2] != ErrorCode.PROTOCOL_ERROR:
        return ctx.violated(f"no GOAWAY(PROTOCOL_ERROR): {seen.summary()}")
    if seen.timed_out:
        return ctx.violated(f"still open after {ctx.timeout:g} s: {seen.summary()}")
    return ctx.passed(seen.summary())


@case(
    "6.3/11",
    description="message 3, OPEN of a ping stream, GOAWAY(NO_ERROR) and the "
    "request, all in the same TCP write",
    requirement=R_6_3_EARLY + QUOTE_GAP + R_9_2,
    expected="the target closes the connection within T (answering the call first is allowed)",
)
async def early_goaway(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    await to_msg3(ctx, session)
    msg3 = session.msg3()
    frames = (
        encode_frame(FrameType.OPEN, 1, "ping")
        + encode_frame(FrameType.GOAWAY, 0, int(ErrorCode.NO_ERROR), "")
        + encode_frame(FrameType.DATA, 1, END, encode({}))
    )
    session.wire.log.add("send", "plain", frames, "OPEN 1, GOAWAY, request")
    await session.wire.send(
        U16.pack(len(msg3)) + msg3 + session.seal(frames),
        "msg3 + OPEN 1 + GOAWAY(NO_ERROR) + request",
    )
    seen = await session.watch(ctx.deadline)
    if seen.timed_out:
        return ctx.violated(f"still open after {ctx.timeout:g} s: {seen.summary()}")
    return ctx.passed(seen.summary())


async def _ping_with(session: Session, ctx: CaseContext, prefix: bytes) -> tuple[bool, Observation]:
    opaque = os.urandom(8)
    await session.wire.send(
        prefix + session.seal(encode_frame(FrameType.PING, opaque)), "msg3 + PING"
    )
    seen = await session.watch(
        ctx.deadline, until=lambda f: f[0] is FrameType.PONG and f[1] == opaque
    )
    ok = bool(seen.frames) and seen.frames[-1][0] is FrameType.PONG
    return ok, seen


# -- §6.4 payloads ------------------------------------------------------------------------------


@case(
    "6.3/12",
    description="message 1 carries a 1-byte payload (33 bytes in all)",
    requirement=R_6_3,
    expected=ABORT,
)
async def msg1_payload(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    await session.send_noise(session.msg1(b"\x80"), note="msg1 with payload")
    return await handshake_abort(ctx, session)


_BAD_SETTINGS = {
    2: ("max_frame 65535, below its range", settings_map(max_frame=65535)),
    3: ("max_frame 2^26 + 1, above its range", settings_map(max_frame=(1 << 26) + 1)),
    4: (
        "stream_window 2^31, above its range",
        settings_map(stream_window=1 << 31, connection_window=(1 << 31) - 1),
    ),
    5: ("connection_window below stream_window", settings_map(connection_window=(8 << 20) - 1)),
    6: ("max_streams 0", settings_map(max_streams=0)),
    7: ("max_frame as text", settings_map(max_frame="1048576")),
    8: ("agent of 65 bytes", settings_map(agent="a" * 65)),
}


def _register_badsettings_map(ordinal: int, what: str, settings: dict[str, object]) -> None:
    async def run(ctx: CaseContext) -> Outcome:
        session = await ctx.session()
        return await msg3_fault_on(ctx, session, session.payload(settings=settings))

    case(
        f"6.4/{ordinal}",
        description=f"message 3 settings: {what}",
        requirement=R_6_4_RANGE,
        expected=ABORT,
    )(run)


for _ordinal, (_what, _values) in _BAD_SETTINGS.items():
    _register_badsettings_map(_ordinal, _what, _values)


@case(
    "6.4/9",
    description="message 3 settings is an empty map: every default applies",
    requirement=R_6_4_DEFAULTS,
    expected="the handshake completes; a PING is answered",
)
async def defaultsettings_map(ctx: CaseContext) -> Outcome:
    return await msg3_accepted(ctx, lambda s: s.payload(settings={}))


@case(
    "6.4/11",
    description="message 3 payload keys in reverse order, settings keys in reverse order and "
    "max_streams left out",
    requirement=R_6_4_ORDER,
    expected="the handshake completes; a PING is answered",
)
async def reordered_payload(ctx: CaseContext) -> Outcome:
    def build(session: Session) -> bytes:
        settings = dict(reversed(list(settings_map(agent="conformance").items())))
        del settings["max_streams"]
        fields = decode_strict(session.payload(settings=settings))
        return encode(dict(reversed(list(fields.items()))))

    return await msg3_accepted(ctx, build)


@case(
    "6.4/10",
    description="the target's own payload and settings are within the profile",
    requirement=R_6_4_RANGE,
    expected="identity_key is 32 bytes, identity_sig 64, every known setting in its allowed range",
)
async def targetsettings_map(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    hello = await to_msg3(ctx, session)
    fields = hello.fields
    problems = [
        name
        for name, size in (("identity_key", 32), ("identity_sig", 64))
        if not isinstance(fields.get(name), bytes) or len(fields[name]) != size
    ]
    if not isinstance(fields.get("settings"), dict):
        problems.append("settings is not a map")
    if problems:
        return ctx.violated("; ".join(problems))
    s = hello.settings
    return ctx.passed(
        f"max_frame {s.max_frame}, stream_window {s.stream_window}, "
        f"connection_window {s.connection_window}, max_streams {s.max_streams}, "
        f"agent {s.agent!r}"
    )


# -- §6.7 ------------------------------------------------------------------------------------


@case(
    "6.7/1",
    description="message 1, then silence",
    requirement=R_6_7,
    level=Level.SHOULD,
    expected="the target closes the connection within 5 s of accepting it",
)
async def handshake_timeout(ctx: CaseContext) -> Outcome:
    ctx.set_window(ctx.options.handshake_timeout + ctx.options.timeout)
    start = trio.current_time()
    session = await ctx.session()
    await to_msg3(ctx, session)
    outcome = await handshake_abort(ctx, session)
    waited = trio.current_time() - start
    if outcome.verdict is not Verdict.PASS:
        return outcome
    if waited > ctx.options.handshake_timeout + 0.5:
        return ctx.violated(f"closed only after {waited:.1f} s")
    return ctx.passed(f"closed after {waited:.2f} s")


# -- §3.3: small-order keys and non-canonical signatures in the handshake -----------------------


def _forgeable(key: bytes) -> tuple[bytes, bytes]:
    """A Noise static private key whose identity message ``key`` has a forged signature
    for: (the static private key, the signature).  About two tries in three fit."""
    while True:
        private = os.urandom(32)
        public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
        signature = forge_small_order(key, SIG_PREFIX + public)
        if signature is not None:
            return private, signature


def _register_small_order_key(ordinal: int, key: bytes) -> None:
    async def run(ctx: CaseContext) -> Outcome:
        private, signature = _forgeable(key)
        session = await ctx.session(static_private=private)
        payload = session.payload(identity_key=key, signature=signature)
        return await msg3_fault_on(ctx, session, payload)

    case(
        f"3.3/{ordinal}",
        description=f"message 3: identity_key is the small-order point {key.hex()}, with "
        "a signature the RFC 8032 equation accepts (R of small order, S = 0)",
        requirement=R_3_3_VALID_KEY + QUOTE_GAP + R_6_6 + QUOTE_GAP + B_SHAPE,
        expected=ABORT,
    )(run)


for _i, _key in enumerate(SMALL_ORDER_POINTS):
    _register_small_order_key(3 + _i, _key)


@case(
    "3.3/11",
    description="message 3: identity_sig by our own key with R the identity point and "
    "S = k·a (the RFC 8032 equation holds; OpenSSL accepts it)",
    requirement=R_3_3_VALID_SIG + QUOTE_GAP + R_6_6 + QUOTE_GAP + B_SIG,
    expected=ABORT,
)
async def identity_r_in_handshake(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    signature = identity_r_signature(session.identity, SIG_PREFIX + session.static_public)
    return await msg3_fault_on(ctx, session, session.payload(signature=signature))


@case(
    "3.3/12",
    description="message 3: identity_sig by our own key with S + L in place of S",
    requirement=R_3_3_VALID_SIG + QUOTE_GAP + R_6_6 + QUOTE_GAP + B_SIG,
    expected=ABORT,
)
async def non_canonical_s_in_handshake(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    good = session.identity.sign(SIG_PREFIX + session.static_public)
    return await msg3_fault_on(ctx, session, session.payload(signature=non_canonical_s(good)))
