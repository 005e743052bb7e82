"""Push: sessions that take steps from the server before them on a chain (SPEC.md §13.9).

The conformance client plays both the client and the server before the target: it opens a
session with a push id, then hands it steps on ``inference.push`` streams of its own
connection (§13.9 takes them "from any sender"). It never listens, so the target's own pushes
are judged only where they must fail (case 13.9/5: an unreachable next server). A target that
answers ``inference.push`` with UNKNOWN_METHOD, or a pushing step without ``pushed``, does not
implement push: those cases are UNIMPLEMENTED.
"""

from __future__ import annotations

import os
from typing import Any

from petalproto.core import Address, ErrorCode, Identity

from .._harness import QUOTE_GAP, CaseContext, Outcome
from ._inference_common import (
    InferenceClient,
    Info,
    Reply,
    decode_floats,
    expect_reset,
    inference_case,
    relative_error,
    span_of,
    step_body,
)

SESSION = "inference.session"
PUSH = "inference.push"
#: Seconds §13.9 lets a target wait for the opening a pushed step names.
OPENING_WAIT = 5.0
#: Seconds a target may take to find that it cannot push (a refused dial), beyond the
#: case's own timeout.
PUSH_GRACE = 8.0
#: Relative error allowed between a pushed step and the same step sent by the client: the
#: same computation, so only the order of kernels may differ.
SAME_STEP_TOLERANCE = 1e-3

R_TAKE = (
    "A server that took an opening with a push id MUST take a message on an `inference.push` "
    "stream whose `session` is that id as the session's next step, from any sender, exactly as "
    "if the client had sent it (the answer, and any RESET, goes to the client's stream)"
)
R_UNKNOWN = (
    "It MUST reset an `inference.push` stream with UNKNOWN_SESSION when a message names no "
    "session it holds (it MAY first wait up to 5 s for an opening that has not arrived yet)"
)
R_BAD = "and with BAD_REQUEST when a message is not a map with a 16-byte `session`."
R_HELD = "A push id already held is refused at the opening with BAD_REQUEST."
R_PUSHED = (
    'then answers the client as in §13.5 with one more key, `"pushed": bool`: true when the '
    "message went out, false when it could not dial or send it within its push timeout"
)
R_DISCARD = (
    "In a session opened with a push id a server MUST discard, without answering, a step whose "
    "tokens the session has already taken"
)


def _push_id() -> bytes:
    return os.urandom(16)


def _opening(info: Info, push_id: bytes, max_length: int = 8) -> dict[str, Any]:
    return {**span_of(info), "batch": 1, "max_length": max_length, "session": push_id}


def _pushed(push_id: bytes, step: dict[str, Any]) -> dict[str, Any]:
    return {"session": push_id, **step, "push": []}


def _hidden_problem(reply: Reply, new: int, info: Info) -> str:
    """What is wrong with an answer that should carry ``hidden`` of ``[1, new, width]``."""
    if reply.kind != "answer":
        return f"expected an answer, got {reply.describe()}"
    body = reply.body
    if not isinstance(body, dict) or not isinstance(body.get("hidden"), dict):
        return f"the answer carries no 'hidden' map: {reply.describe()}"
    shape = body["hidden"].get("shape")
    if shape != [1, new, info.hidden_size]:
        return f"hidden has shape {shape}, expected {[1, new, info.hidden_size]}"
    values = decode_floats(body["hidden"])
    return values if isinstance(values, str) else ""


def _values(reply: Reply) -> list[float]:
    values = decode_floats(reply.body["hidden"])
    assert not isinstance(values, str)
    return values


async def _push_refused(ctx: CaseContext, client: InferenceClient, stream: int) -> Outcome | None:
    """UNIMPLEMENTED when the target does not serve ``inference.push``; None otherwise."""
    reply = await client.receive(stream)
    if reply.kind == "reset" and reply.code == ErrorCode.UNKNOWN_METHOD:
        return ctx.unimplemented("the target does not serve inference.push (UNKNOWN_METHOD)")
    if reply.kind != "end":
        return ctx.violated(
            f"the push stream, after one good message and our end, got {reply.describe()} "
            "instead of its end"
        )
    return None


async def _push_reset(
    ctx: CaseContext, client: InferenceClient, message: dict[str, Any], code: ErrorCode
) -> Outcome:
    """``message`` alone on an ``inference.push`` stream must be reset with ``code``."""
    reply = await client.receive(await client.open_stream(PUSH, message, end=True))
    if reply.kind == "reset" and reply.code == ErrorCode.UNKNOWN_METHOD:
        return ctx.unimplemented("the target does not serve inference.push (UNKNOWN_METHOD)")
    return await expect_reset(ctx, client, reply, code)


@inference_case(
    "13.9/1",
    description="an opening with a push id, then a step of 3 tokens on an inference.push "
    "stream naming it (and our end of that stream); the same step in a plain session",
    requirement=R_TAKE,
    expected="the session's stream answers hidden [1, 3, hidden_size], equal to the plain "
    f"session's answer (relative error at most {SAME_STEP_TOLERANCE:g}); the push stream ends",
)
async def pushed_step_answered(ctx: CaseContext, client: InferenceClient) -> Outcome:
    info, push_id = client.target, _push_id()
    step = step_body(info, new=3)
    session = await client.open_stream(SESSION, _opening(info, push_id))
    push = await client.open_stream(PUSH, _pushed(push_id, step), end=True)
    if (refused := await _push_refused(ctx, client, push)) is not None:
        return refused
    reply = await client.receive(session)
    if problem := _hidden_problem(reply, 3, info):
        return ctx.violated(f"the pushed step: {problem}")
    plain = await client.open_stream(
        SESSION, {**span_of(info), "batch": 1, "max_length": 8}, step, end=True
    )
    direct = await client.receive(plain)
    if problem := _hidden_problem(direct, 3, info):
        return ctx.violated(f"the same step in a plain session: {problem}")
    error = relative_error(_values(reply), _values(direct))
    if error > SAME_STEP_TOLERANCE:
        return ctx.violated(
            f"the pushed step differs from the plain one: relative error {error:.3g}"
        )
    return ctx.passed(f"answered on the session's stream (relative error {error:.3g})")


@inference_case(
    "13.9/2",
    description="an inference.push stream whose message names a push id no session holds",
    requirement=R_UNKNOWN,
    expected="RESET(UNKNOWN_SESSION), within 5 s plus the case's timeout; the connection then "
    "still answers peer.info",
    timeout=OPENING_WAIT + 2.0,
)
async def unknown_session(ctx: CaseContext, client: InferenceClient) -> Outcome:
    message = _pushed(_push_id(), step_body(client.target, new=1))
    return await _push_reset(ctx, client, message, ErrorCode.UNKNOWN_SESSION)


@inference_case(
    "13.9/3",
    description="an inference.push stream whose message has a 3-byte session",
    requirement=R_UNKNOWN + QUOTE_GAP + R_BAD,
    expected="RESET(BAD_REQUEST); the connection then still answers peer.info",
)
async def malformed_push(ctx: CaseContext, client: InferenceClient) -> Outcome:
    message = {**step_body(client.target, new=1), "session": b"abc"}
    return await _push_reset(ctx, client, message, ErrorCode.BAD_REQUEST)


@inference_case(
    "13.9/4",
    description="a session with a push id that answered a step, then a second opening with "
    "the same push id",
    requirement=R_HELD,
    expected="RESET(BAD_REQUEST) of the second session; the connection then still answers "
    "peer.info",
)
async def push_id_held(ctx: CaseContext, client: InferenceClient) -> Outcome:
    info, push_id = client.target, _push_id()
    first = await client.open_stream(SESSION, _opening(info, push_id), step_body(info, new=1))
    if problem := _hidden_problem(await client.receive(first), 1, info):
        return ctx.violated(f"the first session's step: {problem}")
    second = await client.open_stream(SESSION, _opening(info, push_id), end=True)
    return await expect_reset(ctx, client, await client.receive(second), ErrorCode.BAD_REQUEST)


@inference_case(
    "13.9/5",
    description="a session with a push id; a step whose push names a server that is not there "
    "(port 1 of 127.0.0.1), then a step of 1 token without push",
    requirement=R_PUSHED,
    expected="the first answer has hidden [1, 2, hidden_size] and pushed false; the second is "
    "answered too",
    timeout=PUSH_GRACE,
)
async def cannot_push(ctx: CaseContext, client: InferenceClient) -> Outcome:
    info, push_id = client.target, _push_id()
    nowhere = Address(Identity.from_seed(os.urandom(32)).peer_id, "127.0.0.1", 1)
    targets = [{"addr": str(nowhere), "session": _push_id()}]
    steps = (step_body(info, new=2, push=targets), step_body(info, new=1, past=2))
    stream = await client.open_stream(SESSION, _opening(info, push_id), *steps, end=True)
    reply = await client.receive(stream)
    if problem := _hidden_problem(reply, 2, info):
        return ctx.violated(f"the step with push: {problem}")
    pushed = reply.body.get("pushed")
    if pushed is None:
        return ctx.unimplemented("the answer carries no 'pushed': the target does not push")
    if pushed is not False:
        return ctx.violated(f"pushed is {pushed!r} for a server nobody listens for")
    if problem := _hidden_problem(await client.receive(stream), 1, info):
        return ctx.violated(f"the step after it: {problem}")
    return ctx.passed("pushed false, and the session went on")


@inference_case(
    "13.9/6",
    description="a session with a push id: a step of 3 tokens, the same step again, a step of "
    "1 token after them, and our end",
    requirement=R_DISCARD,
    expected="hidden [1, 3, hidden_size], then hidden [1, 1, hidden_size], then the end of "
    "the target's direction: the repeated step is not answered",
)
async def repeated_step_discarded(ctx: CaseContext, client: InferenceClient) -> Outcome:
    info, push_id = client.target, _push_id()
    first = step_body(info, new=3)
    steps = (first, first, step_body(info, new=1, past=3))
    stream = await client.open_stream(SESSION, _opening(info, push_id), *steps, end=True)
    for new in (3, 1):
        if problem := _hidden_problem(await client.receive(stream), new, info):
            return ctx.violated(f"answer for the step of {new}: {problem}")
    last = await client.receive(stream)
    if last.kind != "end":
        return ctx.violated(f"after two answers, expected the end, got {last.describe()}")
    return ctx.passed("the repeated step was discarded; the next one was answered")
