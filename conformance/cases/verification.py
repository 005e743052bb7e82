"""Identity binding and its verification (SPEC.md §1.3, §3.3, §4.2, §6.6).

The target, as responder, must abort every handshake whose message 1 or 3 fails the
checks of §6.6; two self-checks make sure our own client applies the same rules.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from petalproto.core import Connection, Identity, PeerId, PeerIdMismatch, Role
from petalproto.core._errors import HandshakeFailed
from petalproto.core._handshake import SIG_PREFIX
from petalproto.core._msgpack import encode

from .._expect import handshake_abort
from .._harness import QUOTE_GAP, CaseContext, Outcome, case
from .._wire import Session, TargetViolation
from ._noise_common import (
    ABORT,
    B_DECRYPT,
    B_DH,
    B_PEER,
    B_SHAPE,
    B_SIG,
    LIBP2P_PREFIX,
    MUST_ABORT,
    NOT_A_POINT,
    ONE_KEY,
    ORDER8_KEY,
    R_1_3,
    R_3_3_KEY,
    R_3_3_TEXT,
    R_4_2,
    R_6_6,
    U16,
    ZERO_KEY,
    junk_msg3,
    msg3_accepted,
    msg3_fault_on,
    settings_map,
    to_msg3,
)

# -- §1.3, §3, §4 ---------------------------------------------------------------------------


@case(
    "1.3/1",
    description="settings in message 3 carry keys the target does not know",
    requirement=R_1_3,
    expected="the handshake completes; a PING is answered",
)
async def unknown_settings_keys(ctx: CaseContext) -> Outcome:
    settings = {"max_frame": 1 << 20, "future_knob": 7, "future_map": {"x": [1, 2]}}
    return await msg3_accepted(ctx, lambda s: s.payload(settings=settings))


@case(
    "3.3/1",
    description="identity_key in message 3 is 32 bytes that are no Ed25519 point",
    requirement=R_3_3_KEY + QUOTE_GAP + R_6_6 + QUOTE_GAP + B_SHAPE,
    expected=ABORT,
)
async def identity_key_not_a_point(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    await to_msg3(ctx, session)
    await session.send_noise(session.msg3(session.payload(identity_key=NOT_A_POINT)))
    return await handshake_abort(ctx, session)


@case(
    "3.3/2",
    description="self-check: our peer id parser rejects malformed text and keys",
    requirement=R_3_3_TEXT + QUOTE_GAP + R_3_3_KEY,
    self_check=True,
    expected="every malformed form raises ValueError",
)
async def peer_id_parser_self_check(ctx: CaseContext) -> Outcome:
    good = Identity.from_seed(bytes(32)).peer_id.to_text()
    texts = {
        "51 characters": good[:-1],
        "53 characters": good + "a",
        "uppercase": good.upper(),
        "digit 1": "1" + good[1:],
        "digit 8": "8" + good[1:],
        "padding": good[:-1] + "=",
    }
    accepted = []
    for name, text in texts.items():
        try:
            PeerId.from_text(text)
        except ValueError:
            continue
        accepted.append(name)
    try:
        PeerId.from_bytes(NOT_A_POINT)
        accepted.append("32 bytes that are no point")
    except ValueError:
        pass
    if accepted:
        return ctx.violated(f"our parser accepted: {', '.join(accepted)}")
    return ctx.passed(f"rejected {len(texts) + 1} malformed forms")


@case(
    "4.2/1",
    description="the target authenticates as the peer id named in its address",
    requirement=R_4_2,
    expected="identity_key in message 2 equals the address's peer id",
)
async def peer_id_matches_address(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    hello = await to_msg3(ctx, session)
    if ctx.options.peer_id is None:
        return ctx.info(f"no peer id in --target; the target is {hello.peer_id}")
    if hello.peer_id != ctx.options.peer_id:
        return ctx.violated(f"the target authenticated as {hello.peer_id}")
    return ctx.passed(f"authenticated as {hello.peer_id}")


@case(
    "4.2/2",
    description="self-check: our initiator aborts when the target is not the peer it dialled",
    requirement=R_4_2 + QUOTE_GAP + R_6_6 + QUOTE_GAP + B_PEER,
    self_check=True,
    expected="our Connection raises PeerIdMismatch and sends nothing more",
)
async def wrong_peer_self_check(ctx: CaseContext) -> Outcome:
    wire = await ctx.dial()
    someone_else = Identity.from_seed(os.urandom(32)).peer_id
    conn = Connection(
        Role.INITIATOR,
        identity=Identity.from_seed(os.urandom(32)),
        random_bytes=os.urandom,
        expected_peer=someone_else,
    )
    conn.start(0.0)
    await wire.send(conn.data_to_send(), "msg1")
    message = await wire.read_noise(ctx.deadline, "handshake message 2")
    if message is None:
        raise TargetViolation("the target closed instead of sending message 2")
    try:
        conn.receive_data(U16.pack(len(message)) + message, 0.0)
    except PeerIdMismatch as exc:
        if leftover := conn.data_to_send():
            return ctx.violated(f"our initiator aborted but queued {len(leftover)} bytes")
        return ctx.passed(f"our initiator aborted: {exc.msg}")
    return ctx.violated("our initiator accepted a peer it did not dial")


# -- §6.6 verification --------------------------------------------------------------------------


@case(
    "6.6/1",
    description="message 3 with one byte of its encrypted payload flipped",
    requirement=MUST_ABORT + B_DECRYPT,
    expected=ABORT,
)
async def tampered_msg3_payload(ctx: CaseContext) -> Outcome:
    return await _tampered_msg3(ctx, -20)


@case(
    "6.6/2",
    description="message 3 with one byte of its encrypted static key flipped",
    requirement=MUST_ABORT + B_DECRYPT,
    expected=ABORT,
)
async def tampered_msg3_static(ctx: CaseContext) -> Outcome:
    return await _tampered_msg3(ctx, 5)


async def _tampered_msg3(ctx: CaseContext, index: int) -> Outcome:
    session = await ctx.session()
    await to_msg3(ctx, session)
    message = bytearray(session.msg3())
    message[index] ^= 0x01
    await session.send_noise(bytes(message), note="msg3, one byte flipped")
    return await handshake_abort(ctx, session)


@case(
    "6.6/3",
    description="message 1 altered in transit: the top bit of e flipped, which "
    "leaves every DH result unchanged so that only the transcript hash differs",
    requirement=MUST_ABORT + B_DECRYPT,
    expected="message 2 fails to authenticate for us; after a message 3 the target aborts",
)
async def tampered_msg1(ctx: CaseContext) -> Outcome:
    session = await ctx.session()
    message = bytearray(session.msg1())
    message[31] ^= 0x80
    await session.send_noise(bytes(message), note="msg1, top bit of e flipped")
    try:
        hello = await session.read_msg2(ctx.deadline)
    except HandshakeFailed:
        return await junk_msg3(ctx, session)
    if hello is None:
        return ctx.passed("the target closed before message 2")
    return ctx.violated("message 2 authenticated although message 1 was altered")


def _register_low_order(ordinal: int, what: str, key: bytes) -> None:
    async def run(ctx: CaseContext) -> Outcome:
        session = await ctx.session()
        await session.send_noise(key, note=f"msg1, e = {what}")
        return await handshake_abort(ctx, session)

    case(
        f"6.6/{ordinal}",
        description=f"message 1 carries a low-order e: {what}",
        requirement=MUST_ABORT + B_DH,
        expected=ABORT + "; no message 2",
    )(run)


for _ordinal, _what, _key in (
    (4, "all zeros", ZERO_KEY),
    (5, "u = 1", ONE_KEY),
    (6, "a point of order 8", ORDER8_KEY),
):
    _register_low_order(_ordinal, _what, _key)


def _sig(
    session: Session,
    prefix: bytes = SIG_PREFIX,
    static: bytes | None = None,
    identity: Identity | None = None,
) -> bytes:
    signer = identity or session.identity
    return signer.sign(prefix + (session.static_public if static is None else static))


def _twice(session: Session) -> bytes:
    """Our payload with identity_key written twice (first value valid, as is the last)."""
    good = session.payload()
    return b"\x84" + encode({"identity_key": session.identity.peer_id.raw})[1:] + good[1:]


# Faulty message 3 payloads: ordinal -> (what, the bullet of §6.6 it breaks, payload).
_PAYLOAD_FAULTS: dict[int, tuple[str, str, Callable[[Session], bytes]]] = {
    7: (
        "the payload is an array, not a map",
        B_SHAPE,
        lambda s: encode([s.identity.peer_id.raw, _sig(s), settings_map()]),
    ),
    8: ("the payload lacks identity_key", B_SHAPE, lambda s: s.payload(omit=("identity_key",))),
    9: (
        "identity_key is 31 bytes",
        B_SHAPE,
        lambda s: s.payload(identity_key=s.identity.peer_id.raw[:31]),
    ),
    10: ("identity_sig is 64 random bytes", B_SIG, lambda s: s.payload(signature=os.urandom(64))),
    11: (
        "identity_sig signs another Noise static key",
        B_SIG,
        lambda s: s.payload(signed_static=os.urandom(32)),
    ),
    12: (
        "identity_sig is made by another identity",
        B_SIG,
        lambda s: s.payload(signature=_sig(s, identity=Identity.from_seed(os.urandom(32)))),
    ),
    13: (
        "identity_sig uses libp2p's domain string",
        B_SIG,
        lambda s: s.payload(signature=_sig(s, LIBP2P_PREFIX)),
    ),
    14: ("the payload map has identity_key twice", B_SHAPE, _twice),
    15: ("the payload has a trailing byte", B_SHAPE, lambda s: s.payload() + b"\xc0"),
    16: ("the payload lacks identity_sig", B_SHAPE, lambda s: s.payload(omit=("identity_sig",))),
}


def _register_payload_fault(
    ordinal: int, what: str, bullet: str, build: Callable[[Session], bytes]
) -> None:
    async def run(ctx: CaseContext) -> Outcome:
        session = await ctx.session()
        return await msg3_fault_on(ctx, session, build(session))

    case(
        f"6.6/{ordinal}",
        description=f"message 3: {what}",
        requirement=MUST_ABORT + bullet,
        expected=ABORT,
    )(run)


for _ordinal, (_what, _bullet, _build) in _PAYLOAD_FAULTS.items():
    _register_payload_fault(_ordinal, _what, _bullet, _build)
