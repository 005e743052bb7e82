"""Expected-outcome sets, as h2spec's verifiers define them.

Each verifier watches the target after a case's input and rules on what it saw:

* ``connection_error``: the target sends GOAWAY with a code in S and/or closes the
  connection within T (h2spec's ``VerifyConnectionError``).  Answering a probe sent after
  the bad input, or any other sign that it went on processing, is a FAIL; so is hanging.
* ``stream_error``: the target resets the one stream with a code in S and keeps the
  connection (SPEC.md §7.3: "Stream errors reset one stream only").
* ``handshake_abort``: the target closes the TCP connection without sending anything
  further (SPEC.md §6.6).
* ``answered``: a well-formed call gets its response.

A verifier returns the case's ``Outcome``; the level of the case decides whether a
violation is a FAIL or a NON-STRICT.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import Any

from petalproto.core import ErrorCode
from petalproto.core._errors import ProtocolError
from petalproto.core._frames import DataFlags, FrameType, encode_frame
from petalproto.core._msgpack import decode_strict, encode

from ._harness import CaseContext, Outcome
from ._wire import Observation, Session, TargetViolation, WireTimeout, describe_frame

__all__ = [
    "PING_CALL",
    "answered",
    "call_frames",
    "connection_error",
    "handshake_abort",
    "ping_frame",
    "roundtrip",
    "stream_error",
]

PING_CALL = "ping"
END = DataFlags.END_MESSAGE | DataFlags.END_STREAM


def ping_frame() -> tuple[bytes, bytes]:
    """A PING frame with fresh opaque bytes: (frame, opaque)."""
    opaque = os.urandom(8)
    return encode_frame(FrameType.PING, opaque), opaque


def call_frames(
    stream_id: int,
    method: str = PING_CALL,
    body: Any = None,
    *,
    raw_body: bytes | None = None,
    flags: int = END,
) -> bytes:
    """OPEN plus one DATA frame carrying a request (encoded ``body`` or ``raw_body``)."""
    data = raw_body if raw_body is not None else encode({} if body is None else body)
    return encode_frame(FrameType.OPEN, stream_id, method) + encode_frame(
        FrameType.DATA, stream_id, flags, data
    )


def _names(codes: Collection[ErrorCode]) -> str:
    return "/".join(code.name for code in codes)


def _code(value: int) -> str:
    try:
        return ErrorCode(value).name
    except ValueError:
        return f"unknown code {value}"


async def connection_error(
    ctx: CaseContext,
    session: Session,
    codes: Collection[ErrorCode] | None,
    *,
    probes: Collection[bytes] = (),
    stream_id: int | None = None,
) -> Outcome:
    """The target sends GOAWAY with a code in ``codes`` and/or closes within T.

    Args:
        codes: the acceptable GOAWAY codes; None accepts any code (SPEC.md names none).
        probes: opaque bytes of PINGs sent after the bad input; a PONG for one means the
            target went on processing frames (SPEC.md §7.3).
        stream_id: a stream whose answer would likewise show the input was accepted.
    """

    def acted(frame: tuple[Any, ...]) -> bool:
        if frame[0] is FrameType.PONG and frame[1] in probes:
            return True
        return stream_id is not None and frame[0] is FrameType.DATA and frame[1] == stream_id

    seen = await session.watch(ctx.deadline, until=acted)
    if seen.frames and acted(seen.frames[-1]):
        return ctx.violated(f"the target went on processing after the bad input: {seen.summary()}")
    goaway = seen.goaway
    if goaway is not None and codes is not None and goaway[2] not in codes:
        return ctx.violated(
            f"GOAWAY carried {_code(goaway[2])}, expected {_names(codes)}: {seen.summary()}"
        )
    if seen.timed_out:
        return ctx.violated(
            f"the connection was still open after {ctx.timeout:g} s: {seen.summary()}"
        )
    return ctx.passed(seen.summary())


async def roundtrip(session: Session, deadline: float) -> tuple[bool, Observation]:
    """Send a PING and wait for its PONG. Returns: (answered, what was seen meanwhile)."""
    frame, opaque = ping_frame()
    await session.send_frames(frame, note="PING probe")
    seen = await session.watch(deadline, until=lambda f: f[0] is FrameType.PONG and f[1] == opaque)
    answered_ = (
        bool(seen.frames) and seen.frames[-1][0] is FrameType.PONG and seen.frames[-1][1] == opaque
    )
    return answered_, seen


async def stream_error(
    ctx: CaseContext,
    session: Session,
    stream_id: int,
    codes: Collection[ErrorCode],
) -> Outcome:
    """The target resets ``stream_id`` with a code in ``codes`` and keeps the connection."""

    def decided(frame: tuple[Any, ...]) -> bool:
        return frame[0] is FrameType.GOAWAY or (
            frame[0] in (FrameType.RESET, FrameType.DATA) and frame[1] == stream_id
        )

    seen = await session.watch(ctx.deadline, until=decided)
    last = seen.frames[-1] if seen.frames and decided(seen.frames[-1]) else None
    if last is None:
        if seen.timed_out:
            return ctx.violated(f"no RESET within {ctx.timeout:g} s: {seen.summary()}")
        return ctx.violated(
            f"the target closed the connection instead of resetting the stream: {seen.summary()}"
        )
    if last[0] is FrameType.GOAWAY:
        return ctx.violated(f"a stream error was treated as a connection error: {seen.summary()}")
    if last[0] is FrameType.DATA:
        return ctx.violated(
            f"the target answered instead of resetting the stream: {seen.summary()}"
        )
    if last[2] not in codes:
        return ctx.violated(f"RESET carried {_code(last[2])}, expected {_names(codes)}")
    alive, after = await roundtrip(session, ctx.deadline)
    if not alive:
        return ctx.violated(
            f"{describe_frame(last)}, but then the connection ended: {after.summary()}"
        )
    return ctx.passed(f"{describe_frame(last)}; the connection stayed open")


async def handshake_abort(ctx: CaseContext, session: Session, *, probe: bool = True) -> Outcome:
    """The target closes the TCP connection without sending anything further (§6.6).

    When our side of the handshake completed (the target may believe it did too), a PING
    goes out first, unless ``probe`` is False: a PONG proves the target accepted the
    handshake.
    """
    if probe and session.established:
        frame, _ = ping_frame()
        await session.wire.send(session.seal(frame), "PING probe")
    try:
        data = await session.wire.read_any(ctx.deadline, "the target to close")
    except WireTimeout:
        return ctx.violated(f"the connection was still open after {ctx.timeout:g} s")
    if not data:
        return ctx.passed(
            "closed without sending anything"
            + (" (connection reset)" if session.wire.reset else "")
        )
    if session.established:
        completed = _try_transport(session, data)
        if completed:
            return ctx.violated(f"the target completed the handshake and answered: {completed}")
    return ctx.violated(f"the target sent {len(data)} bytes after the failed handshake")


def _try_transport(session: Session, data: bytes) -> str:
    """Decrypt ``data`` as the target's first transport messages, if it can be."""
    assert session.recv_cs is not None
    try:
        length = int.from_bytes(data[:2], "big")
        plain = session.recv_cs.decrypt_with_ad(b"", data[2 : 2 + length])
    except (ProtocolError, ValueError):
        return ""
    return plain[:64].hex()


async def answered(
    ctx: CaseContext,
    session: Session,
    stream_id: int,
    check: Callable[[Any], str] | None = None,
) -> Outcome:
    """A call on ``stream_id`` gets one response message with END_STREAM.

    Args:
        check: inspects the decoded response; returns "" when it is right, otherwise
            what is wrong with it.
    """
    chunks: list[bytes] = []
    while True:
        frame = await session.next_frame(ctx.deadline)
        if frame is None:
            return ctx.violated(
                f"the connection closed before the response; got {len(chunks)} chunks"
            )
        if frame[0] is FrameType.GOAWAY or (frame[0] is FrameType.RESET and frame[1] == stream_id):
            return ctx.violated(f"no response: {describe_frame(frame)}")
        if frame[0] is not FrameType.DATA or frame[1] != stream_id:
            continue
        chunks.append(bytes(frame[3]))
        if frame[2] & DataFlags.END_MESSAGE:
            return _judge_response(ctx, b"".join(chunks), frame[2], check)


def _judge_response(
    ctx: CaseContext, raw: bytes, flags: int, check: Callable[[Any], str] | None
) -> Outcome:
    try:
        body = decode_strict(raw)
    except ProtocolError as exc:
        raise TargetViolation(f"response breaks the msgpack profile: {exc.msg}") from exc
    if not flags & DataFlags.END_STREAM:
        return ctx.violated(f"the response {body!r} did not end the stream")
    problem = check(body) if check is not None else ""
    if problem:
        return ctx.violated(f"response {body!r}: {problem}")
    return ctx.passed(f"response {body!r}")
