"""What the handshake case modules share: SPEC.md quotes, bad keys, message-3 helpers.

Private (the leading underscore keeps ``load_cases`` from treating it as a case module).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from petalproto.core._errors import HandshakeFailed

from .._expect import handshake_abort, roundtrip
from .._harness import QUOTE_GAP, CaseContext, Outcome
from .._wire import Hello, Session, TargetViolation

# -- SPEC.md sentences (verbatim, whitespace folded) --------------------------------------------

R_1_3 = (
    "A receiver MUST ignore map keys it does not know in the handshake settings (§6.4) "
    "and in call bodies (§10), unless a section says otherwise."
)
R_3_3_TEXT = "A parser MUST reject text of any other length or alphabet"
R_3_3_KEY = "MUST reject 32 bytes that are not a valid Ed25519 public key encoding"
R_3_3_VALID_KEY = (
    "A receiver MUST reject every other key wherever it reads one: the handshake payload "
    "(§6.6), a record's publisher (§12.5.1), a contact's peer id (§12.2) and the text form "
    "of a peer id."
)
R_3_3_VALID_SIG = (
    "A verifier MUST reject any other signature before it checks the equation, which is "
    "otherwise RFC 8032's cofactorless one (as OpenSSL checks it); this covers the "
    "handshake's `identity_sig` (§6.6) and a record's `sig` (§12.5.3 item 5)."
)
R_4_2 = (
    "A dialer that connects to an address MUST abort the connection when the peer "
    "authenticated by the handshake is not the peer id named in the address (§6.6)."
)
R_6_1 = "The cipher suite is `Noise_XX_25519_ChaChaPoly_SHA256`, with no negotiation."
R_6_1_STATIC = "it SHOULD be generated afresh for every connection or process and not stored."
R_6_2 = (
    "A peer MUST use exactly this prologue; a handshake between different prologues "
    "fails at the first encrypted field."
)
R_6_3 = (
    "A receiver MUST abort the handshake when a handshake message's length field is "
    "outside the range in this table, without waiting for the message body."
)
R_6_3_MSG2 = "| 2 | responder → initiator | `e, ee, s, es` + payload | 96 + P, 1 ≤ P ≤ 1024 |"
R_6_3_FRAMING = (
    "Every Noise message, handshake or transport, travels as a 2-byte big-endian "
    "length followed by that many bytes (Noise §13)."
)
R_6_3_EARLY = (
    "The initiator MAY send transport messages right after message 3, in the same TCP write or "
    "later;"
)
R_6_4_ORDER = "a receiver MUST accept the keys in any order."
R_6_4_RANGE = (
    "A receiver MUST abort the handshake when a setting it knows is outside its allowed range."
)
R_6_4_DEFAULTS = "Settings (all integers; a missing key takes the default):"
R_6_6 = (
    "Each side MUST abort the handshake, and close the TCP connection without sending "
    "anything further, when any of these holds:"
)
B_DECRYPT = (
    "- a handshake message fails to decrypt (a tampered byte, a different prologue, a "
    "different transcript);"
)
B_DH = "- a Diffie-Hellman result is all zeros, as for a low-order or zero public key;"
B_SHAPE = (
    "- the payload is not a map of the shape in §6.4, or `identity_key` is not a valid "
    "Ed25519 public key (§3.3: a small-order or non-canonical key is invalid);"
)
B_SIG = (
    "- `identity_sig` does not verify against `identity_key` over the Noise static key "
    "that the same handshake authenticated;"
)
B_PEER = "- for the initiator, the authenticated peer id is not the one it dialled (§4.2)."
R_6_7 = (
    "A responder SHOULD abort a handshake that has not completed within 5 seconds of "
    "accepting the TCP connection."
)

ABORT = "the target closes the TCP connection without sending anything further"
MUST_ABORT = R_6_6 + QUOTE_GAP

# X25519 public keys that give an all-zero DH result with every private key: 0, 1 and a
# point of order 8 (the same list as libsodium's blocklist).
ZERO_KEY = bytes(32)
ONE_KEY = (1).to_bytes(32, "little")
ORDER8_KEY = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
# y = 2 is not the y coordinate of any edwards25519 point: x^2 = (y^2-1)/(dy^2+1) has no
# root, so these 32 bytes are no Ed25519 public key (RFC 8032 §5.1.3).
NOT_A_POINT = (2).to_bytes(32, "little")
LIBP2P_PREFIX = b"noise-libp2p-static-key:"
U16 = struct.Struct(">H")


R_7_3_GOAWAY = (
    "On a connection error a peer SHOULD send a GOAWAY frame (§9.2) carrying the error code"
)
R_9_2 = (
    "A peer that received GOAWAY MUST close the TCP connection once none of its streams "
    "on that connection remain open."
)


async def to_msg3(ctx: CaseContext, session: Session) -> Hello:
    """Send a good message 1 and read the target's message 2."""
    await session.send_noise(session.msg1(), note="msg1")
    try:
        hello = await session.read_msg2(ctx.deadline)
    except HandshakeFailed as exc:
        raise TargetViolation(f"message 2 did not authenticate: {exc.msg}") from exc
    if hello is None:
        raise TargetViolation("the target closed instead of sending message 2")
    return hello


async def msg3_accepted(ctx: CaseContext, build: Callable[[Session], bytes]) -> Outcome:
    """Message 3 with the payload ``build`` makes must complete the handshake: a PING
    gets its PONG."""
    session = await ctx.session()
    await to_msg3(ctx, session)
    await session.send_noise(session.msg3(build(session)), note="msg3")
    ok, seen = await roundtrip(session, ctx.deadline)
    if not ok:
        return ctx.violated(f"the handshake did not complete: {seen.summary()}")
    return ctx.passed("handshake completed; PING answered")


async def junk_msg3(ctx: CaseContext, session: Session) -> Outcome:
    """Our transcript diverged from the target's, so no real message 3 exists: send one of
    the right length and expect the target to abort."""
    junk = os.urandom(64 + len(session.payload()))
    await session.send_noise(junk, note="msg3 (cannot authenticate)")
    return await handshake_abort(ctx, session)


async def msg3_fault_on(ctx: CaseContext, session: Session, payload: bytes) -> Outcome:
    await to_msg3(ctx, session)
    await session.send_noise(session.msg3(payload), note="msg3 (faulty payload)")
    return await handshake_abort(ctx, session)


def settings_map(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "max_frame": 1 << 20,
        "stream_window": 8 << 20,
        "connection_window": 32 << 20,
        "max_streams": 128,
        "agent": "x",
    }
    base.update(changes)
    return base
