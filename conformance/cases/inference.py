"""Inference: models and spans, tensors, ``peer.info``, ``inference.forward`` and
``inference.session`` (SPEC.md §13.1 to §13.5).

Every case first asks ``peer.info`` (``inference_case``); a target without it serves no
inference and gets UNIMPLEMENTED.  Requests are built from that answer: its model, its span
and its ``hidden_size``.  A case that expects a RESET also makes a good call on the same
connection afterwards, since §7.3 makes these stream errors, never connection errors.

Session openings that must be refused are sent with our direction already ended: a target
that accepted one has nothing to answer and ends its own direction, which is how a case
tells acceptance from a late refusal.  The session-limit and cache-budget cases run only
against a target whose ``peer.info`` announces that limit (``max_sessions``,
``cache_tokens_free``); otherwise they are INFORMATIONAL.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import trio

from petalproto.core import ErrorCode, PeerId
from petalproto.core.dht import RecordRejected, parse_record, validate_record

from .._harness import QUOTE_GAP, CaseContext, Outcome
from ._inference_common import (
    FLOAT_DTYPES,
    MAX_LENGTH,
    Capacity,
    InferenceClient,
    Info,
    Reply,
    cache_capacity,
    decode_floats,
    expect_reset,
    fill,
    forward_body,
    hidden,
    inference_case,
    info_problem,
    int_tensor,
    precision_problem,
    relative_error,
    session_capacity,
    span_of,
    step_body,
    wire_tensor,
)

R_13_1 = (
    "a server MUST answer a request that names another model with RESET of code "
    "UNKNOWN_MODEL, and a request that names another span with RESET of code WRONG_SPAN."
)
R_13_2_CODEC = (
    "A receiver MUST reject, with RESET of code BAD_TENSOR, a tensor whose dtype is not in "
    "this list, whose shape has a negative entry or more than 4 entries, or whose `data` "
    "length is not the product of the shape times the dtype's size."
)
R_13_2_SHAPES = (
    "A request whose tensors have the wrong rank or shapes that do not agree MUST be answered "
    "with RESET of code BAD_TENSOR."
)
R_13_2_FLOATS = (
    "A hidden-state tensor of any float dtype is accepted; the server computes in its own "
    "dtype and answers in it."
)
R_13_2_IDS = (
    "`attention_mask` is an integer or bool tensor `[batch, length]` (1 for real tokens, 0 for "
    "padding) and `position_ids` an integer tensor `[batch, tokens]`."
)
R_13_3 = (
    "Response: a map with `model` (text), `start`, `end`, `num_blocks` (the model's block "
    "count), `hidden_size` (the width of the hidden states it takes), `dtype` and "
    "`quantization` (its precision, §13.8), `device` (text), `sessions` and `max_sessions` "
    "(ints; `max_sessions` may be nil), `cache_tokens_free` (int or nil), `throughput` "
    "(tokens per second through the span, float) and `version` (text)."
)
R_13_8_INFO = (
    "A server MUST answer `peer.info` with these two keys and values from these lists, and "
    "MUST answer every step and `inference.forward` in the dtype it names (§13.2)."
)
R_13_8_ANNOUNCED = "Its announcement (§13.7) MUST carry the same two values;"
R_10_1 = (
    "A callee MUST answer a request it cannot parse or that breaks the call's schema with "
    "RESET of code BAD_REQUEST (or the more specific code the call's section names)."
)
R_13_4 = (
    'Response: `{"hidden": tensor}`, the span\'s output for every token, computed without '
    "any cache."
)
R_13_5_OPEN = (
    'The client\'s first message opens the session: `{"model", "start", "end", "batch": int, '
    '"max_length": int}` with 1 ≤ batch ≤ 1024 and 1 ≤ max_length ≤ 65536.'
)
R_13_5_STEPS = (
    'the server answers each step, in order, with `{"hidden": tensor}` of shape `[batch, new, '
    "hidden_size]` and keeps the span's attention cache for the session."
)
R_13_5_END = (
    "The client ends the session by ending its direction; the server then frees the cache and "
    "ends its own direction."
)
R_13_5_TOO_LONG = (
    "MUST answer a step that would take the session beyond `max_length` tokens with RESET of "
    "code TOO_LONG;"
)
R_13_5_CACHE = (
    "MUST answer an opening it cannot fit in its attention-cache budget with RESET of code "
    "OUT_OF_CACHE"
)
R_13_5_SESSIONS = "and one beyond its session limit with RESET of code TOO_MANY_SESSIONS;"
R_13_5_SCHEMA = (
    "MUST answer an opening or step that breaks this schema with RESET of code BAD_REQUEST or "
    "BAD_TENSOR (§13.2)"
)
R_13_5_FREE = "and free the session's cache whenever the stream ends or is reset;"

R_13_4_MISSING = (
    "A server MUST answer a request (here and in the steps of §13.5) whose `hidden`, "
    "`attention_mask` or `position_ids` is missing or is not a map with RESET of code "
    "BAD_TENSOR, as for any other bad tensor (§13.2);"
)
R_13_5_AT_ONCE = (
    "MUST check an opening as soon as it arrives and send the RESET for a refused one at once, "
    "without waiting for a step or for the end of the client's direction."
)
BAD = (ErrorCode.BAD_REQUEST, ErrorCode.BAD_TENSOR)
#: Relative error allowed between two computations of the same tokens: identical requests
#: (13.4/2), and a session against a cache-free forward pass (13.5/2), where the kernels of
#: prefill and decode legitimately differ (about 1 % in bfloat16).  Leaving out the cache
#: changes every later token completely (a relative error near 1 on our tiny models).
SAME_REQUEST_TOLERANCE = 1e-3
CACHE_TOLERANCE = 5e-2
#: Seconds a target may take to free a session after its stream ended or was reset; SPEC.md
#: gives no figure, this only absorbs the scheduling of its handler.
FREE_GRACE = 1.0
#: Seconds added to a case's window for each session it opens to reach a limit.
PER_SESSION = 0.1
SESSION = "inference.session"
FORWARD = "inference.forward"
#: Where a refused request goes: the first message of a session, or its first step.
OPENING, STEP = "opening", "step"


Mutation = Callable[[Info, dict[str, Any]], Any]


def _opening(info: Info, batch: int = 1, max_length: int = 8, **changes: Any) -> dict[str, Any]:
    return {**span_of(info), "batch": batch, "max_length": max_length, **changes}


def _shape_problem(reply: Reply, shape: list[int], info: Info) -> str:
    """What is wrong with an answer that should be ``{"hidden": tensor of shape}``."""
    if reply.kind != "answer":
        return f"expected an answer, got {reply.describe()}"
    body = reply.body
    if not isinstance(body, dict) or "hidden" not in body:
        return f"answer {reply.describe()} has no hidden"
    values = decode_floats(body["hidden"])
    if isinstance(values, str):
        return f"hidden: {values}"
    got = body["hidden"]
    if got["shape"] != shape:
        return f"hidden has shape {got['shape']}, expected {shape}"
    if info.dtype in FLOAT_DTYPES and got["dtype"] != info.dtype:
        return f"hidden is {got['dtype']}, but peer.info says the span computes in {info.dtype}"
    return ""


def _values(reply: Reply) -> list[float]:
    out = decode_floats(reply.body["hidden"])
    assert not isinstance(out, str)
    return out


# Requests that must be refused ----------------------------------------------------------------
#
# Each starts from a well-formed request of batch 1 and 3 tokens, the same for a forward pass
# and for the first step of a session (max_length 8), and changes one thing.


def _put(**fields: Any) -> Mutation:
    return lambda info, body: {**body, **fields}


def _put_with(make: Callable[[Info], dict[str, Any]]) -> Mutation:
    return lambda info, body: {**body, **make(info)}


def _drop(key: str) -> Mutation:
    return lambda info, body: {k: v for k, v in body.items() if k != key}


def _whole(value: Any) -> Mutation:
    return lambda info, body: value


def _retype(key: str, dtype: str, size: int) -> Mutation:
    """``key`` with the same shape in ``dtype`` (elements of ``size`` bytes)."""

    def change(info: Info, body: dict[str, Any]) -> Any:
        shape = body[key]["shape"]
        return {**body, key: wire_tensor(dtype, shape, bytes(math.prod(shape) * size))}

    return change


def _reshape(key: str, shape: Callable[[int], list[int]]) -> Mutation:
    """``key`` with its data kept and its shape ``shape(hidden_size)``."""
    return lambda info, body: {**body, key: {**body[key], "shape": shape(info.hidden_size)}}


def _resize(key: str, delta: int) -> Mutation:
    """``key`` with ``delta`` bytes more (or fewer) data than its shape implies."""

    def change(info: Info, body: dict[str, Any]) -> Any:
        data = body[key]["data"]
        data = data + bytes(delta) if delta > 0 else data[:delta]
        return {**body, key: {**body[key], "data": data}}

    return change


_MASK_4 = {"attention_mask": int_tensor([[1, 1, 1, 1]])}
_TENSOR, _SPAN = (ErrorCode.BAD_TENSOR,), (ErrorCode.WRONG_SPAN,)
_OTHER_MODEL = "conformance/no-such-model"
_OPEN_SCHEMA = R_13_5_OPEN + QUOTE_GAP + R_13_5_SCHEMA


class _Refused(NamedTuple):
    case_id: str
    where: str  # FORWARD, OPENING, STEP or "peer.info"
    what: str
    mutate: Mutation
    requirement: str
    codes: tuple[ErrorCode, ...]


_REFUSED = [_Refused(*row) for row in [
    ("13.1/1", FORWARD, "naming another model", _put(model=_OTHER_MODEL), R_13_1,
     (ErrorCode.UNKNOWN_MODEL,)),
    ("13.1/2", FORWARD, "naming the target's span with one more block",
     _put_with(lambda i: {"end": i.end + 1}), R_13_1, _SPAN),
    ("13.1/3", FORWARD, "naming the span of the block after the target's",
     _put_with(lambda i: {"start": i.end, "end": i.end + 1}), R_13_1, _SPAN),
    ("13.1/4", OPENING, "naming another model", _put(model=_OTHER_MODEL), R_13_1,
     (ErrorCode.UNKNOWN_MODEL,)),
    ("13.1/5", OPENING, "naming the target's span with one more block",
     _put_with(lambda i: {"end": i.end + 1}), R_13_1, _SPAN),
    ("13.2/1", FORWARD, "with hidden of dtype complex64", _retype("hidden", "complex64", 8),
     R_13_2_CODEC, _TENSOR),
    ("13.2/2", FORWARD, "with hidden of dtype float64", _retype("hidden", "float64", 8),
     R_13_2_CODEC, _TENSOR),
    ("13.2/3", FORWARD, "with position_ids of dtype uint8", _retype("position_ids", "uint8", 1),
     R_13_2_CODEC, _TENSOR),
    ("13.2/4", FORWARD, "with hidden of shape [1, -1, hidden_size]",
     _reshape("hidden", lambda w: [1, -1, w]), R_13_2_CODEC, _TENSOR),
    ("13.2/5", FORWARD, "with hidden of rank 5, [1, 1, 1, 3, hidden_size]",
     _reshape("hidden", lambda w: [1, 1, 1, 3, w]), R_13_2_CODEC, _TENSOR),
    ("13.2/6", FORWARD, "with hidden data one element short", _resize("hidden", -4),
     R_13_2_CODEC, _TENSOR),
    ("13.2/7", FORWARD, "with attention_mask data one byte long", _resize("attention_mask", 1),
     R_13_2_CODEC, _TENSOR),
    ("13.2/8", STEP, "has hidden of dtype float64", _retype("hidden", "float64", 8),
     R_13_2_CODEC, _TENSOR),
    ("13.2/9", FORWARD, "with hidden of width hidden_size + 1",
     _put_with(lambda i: {"hidden": hidden(1, 3, i.hidden_size + 1)}), R_13_2_SHAPES, _TENSOR),
    ("13.2/10", FORWARD, "with hidden of rank 2, [3, hidden_size]",
     _reshape("hidden", lambda w: [3, w]), R_13_2_SHAPES, _TENSOR),
    ("13.2/11", FORWARD, "with an attention_mask of 4 tokens", _put(**_MASK_4), R_13_2_SHAPES,
     _TENSOR),
    ("13.2/12", FORWARD, "with position_ids of 2 tokens", _put(position_ids=int_tensor([[0, 1]])),
     R_13_2_SHAPES, _TENSOR),
    ("13.2/13", FORWARD, "with hidden of batch 2, the other tensors of batch 1",
     _put_with(lambda i: {"hidden": hidden(2, 3, i.hidden_size)}), R_13_2_SHAPES, _TENSOR),
    ("13.2/14", FORWARD, "with position_ids of rank 1, [3]",
     _reshape("position_ids", lambda w: [3]), R_13_2_SHAPES, _TENSOR),
    ("13.2/15", STEP, "has an attention_mask of past + new + 1 tokens", _put(**_MASK_4),
     R_13_2_SHAPES, _TENSOR),
    ("13.2/16", STEP, "has hidden of batch 2",
     _put_with(lambda i: {"hidden": hidden(2, 3, i.hidden_size)}), R_13_2_SHAPES, _TENSOR),
    ("13.3/2", "peer.info", "an array, not a map", _whole([1, 2]),
     "Request: any map." + QUOTE_GAP + R_10_1, (ErrorCode.BAD_REQUEST,)),
    ("13.5/5", OPENING, "with batch 0", _put(batch=0), _OPEN_SCHEMA, BAD),
    ("13.5/6", OPENING, "with batch 1025", _put(batch=1025), _OPEN_SCHEMA, BAD),
    ("13.5/7", OPENING, "with max_length 0", _put(max_length=0), _OPEN_SCHEMA, BAD),
    ("13.5/8", OPENING, "with max_length 65537", _put(max_length=65537), _OPEN_SCHEMA, BAD),
    ("13.5/9", OPENING, "with no max_length", _drop("max_length"), _OPEN_SCHEMA, BAD),
    ("13.5/10", OPENING, "that is an array, not a map",
     lambda i, body: list(body.values()), _OPEN_SCHEMA, BAD),
    ("13.5/11", OPENING, 'with batch "1", a text', _put(batch="1"), _OPEN_SCHEMA, BAD),
    ("13.5/12", STEP, "is an integer, not a map", _whole(7), R_13_5_SCHEMA, BAD),
    ("13.5/13", STEP, "has no position_ids", _drop("position_ids"), R_13_5_SCHEMA, BAD),
    ("13.4/3", FORWARD, "with no hidden", _drop("hidden"), R_13_4_MISSING, _TENSOR),
    ("13.4/4", FORWARD, "whose attention_mask is a list, not a tensor map",
     _put(attention_mask=[[1, 1, 1]]), R_13_4_MISSING, _TENSOR),
    ("13.4/5", STEP, "has no hidden", _drop("hidden"), R_13_4_MISSING, _TENSOR),
]]  # fmt: skip

_WHAT = {
    FORWARD: "inference.forward of 3 tokens",
    OPENING: "an inference.session opening",
    STEP: "an inference.session of batch 1 whose first step of 3 tokens",
    "peer.info": "peer.info whose request is",
}


def _register_refused(row: _Refused) -> None:
    where, mutate, codes = row.where, row.mutate, row.codes

    async def run(ctx: CaseContext, client: InferenceClient) -> Outcome:
        info = client.target
        if where in (FORWARD, "peer.info"):
            base = forward_body(info) if where == FORWARD else {}
            reply = await client.call(where, mutate(info, base))
        else:
            opening, step = _opening(info), step_body(info, new=3)
            messages = (
                [mutate(info, opening)] if where == OPENING else [opening, mutate(info, step)]
            )
            reply = await client.receive(await client.open_stream(SESSION, *messages, end=True))
        return await expect_reset(ctx, client, reply, *codes)

    names = "/".join(code.name for code in codes)
    then = ", then the end of our direction" if where in (OPENING, STEP) else ""
    inference_case(
        row.case_id,
        description=f"{_WHAT[where]} {row.what}{then}",
        requirement=row.requirement,
        expected=f"RESET({names}); the connection then still answers peer.info",
    )(run)


for _refused in _REFUSED:
    _register_refused(_refused)


# Requests that must be answered ---------------------------------------------------------------

_ACCEPTED: list[tuple[str, str, Callable[[Info], dict[str, Any]], int, str]] = [
    ("13.2/17", "float16 hidden states", lambda i: forward_body(i, dtype="float16"), 1,
     R_13_2_FLOATS),
    ("13.2/18", "bfloat16 hidden states", lambda i: forward_body(i, dtype="bfloat16"), 1,
     R_13_2_FLOATS),
    ("13.2/19", "a bool attention_mask and int32 position_ids",
     lambda i: forward_body(i, attention_mask=int_tensor([[1, 1, 1]], "bool"),
                            position_ids=int_tensor([[0, 1, 2]], "int32")), 1, R_13_2_IDS),
    ("13.4/1", "a batch of 2 sequences", lambda i: forward_body(i, batch=2), 2, R_13_4),
]  # fmt: skip


def _register_accepted(
    case_id: str, what: str, body: Callable[[Info], dict[str, Any]], batch: int, requirement: str
) -> None:
    async def run(ctx: CaseContext, client: InferenceClient) -> Outcome:
        reply = await client.call(FORWARD, body(client.target))
        if problem := _shape_problem(reply, [batch, 3, client.target.hidden_size], client.target):
            return ctx.violated(problem)
        return ctx.passed(f"hidden {reply.body['hidden']['shape']}")

    inference_case(
        case_id,
        description=f"inference.forward of 3 tokens with {what}",
        requirement=requirement,
        expected=f"an answer: hidden [{batch}, 3, hidden_size] in the dtype peer.info names",
    )(run)


for _accepted in _ACCEPTED:
    _register_accepted(*_accepted)


# §13.3 ----------------------------------------------------------------------------------------


@inference_case(
    "13.3/1",
    description="peer.info with a map (the suite's first call), then with a map of unknown keys",
    requirement=R_13_3,
    expected="both answers have every field of §13.3 with its type, and a span within num_blocks",
    needs_info=False,
)
async def info_fields(ctx: CaseContext, client: InferenceClient) -> Outcome:
    first = client.first_info
    assert first is not None
    second = await client.call("peer.info", {"conformance": [1, "x"]})
    for reply in (first, second):
        if reply.kind != "answer":
            return ctx.violated(f"peer.info: {reply.describe()}")
        if problem := info_problem(reply.body):
            return ctx.violated(f"peer.info: {problem}")
    return ctx.passed(f"peer.info {first.describe()}")


# §13.8 ----------------------------------------------------------------------------------------


@inference_case(
    "13.8/1",
    description="peer.info's precision, then inference.forward of float32 and of bfloat16 "
    "hidden states",
    requirement=R_13_8_INFO,
    expected="dtype float32, bfloat16 or float16 and quantization nil, int8 or nf4; both "
    "answers in that dtype",
)
async def precision_named_and_kept(ctx: CaseContext, client: InferenceClient) -> Outcome:
    first = client.first_info
    assert first is not None and isinstance(first.body, dict)
    if problem := precision_problem(first.body):
        return ctx.violated(f"peer.info: {problem}")
    info = client.target
    for dtype in ("float32", "bfloat16"):
        reply = await client.call(FORWARD, forward_body(info, dtype=dtype))
        if problem := _shape_problem(reply, [1, 3, info.hidden_size], info):
            return ctx.violated(f"forward of {dtype} hidden states: {problem}")
    quantization = first.body["quantization"]
    return ctx.passed(f"dtype {info.dtype}, quantization {quantization}; answers in {info.dtype}")


@inference_case(
    "13.8/2",
    description="dht.get of the model's announcement key (§13.7) on the target, for the "
    "target's own announcement",
    requirement=R_13_8_ANNOUNCED,
    expected="the target's own announcement, if it holds one, names peer.info's dtype and "
    "quantization (INFO when it holds none or serves no DHT)",
)
async def precision_announced(ctx: CaseContext, client: InferenceClient) -> Outcome:
    first = client.first_info
    assert first is not None and isinstance(first.body, dict)
    hello = client.session.hello
    assert hello is not None
    key = hashlib.sha256(b"petalproto/spans/v1:" + client.target.model.encode()).digest()
    reply = await client.call("dht.get", {"key": key})
    if reply.kind != "answer" or not isinstance(reply.body, dict):
        return ctx.info(f"dht.get: {reply.describe()} (no DHT to read the announcement from)")
    own = _own_announcement(reply.body.get("records"), hello.peer_id)
    if own is None:
        return ctx.info("the target holds no announcement of its own under the model's key")
    wanted = {k: first.body.get(k) for k in ("dtype", "quantization")}
    found = {k: own.get(k) for k in ("dtype", "quantization")}
    if found != wanted:
        return ctx.violated(f"the announcement names {found}, peer.info {wanted}")
    return ctx.passed(f"the announcement names {found}, as peer.info does")


def _own_announcement(records: Any, publisher: PeerId) -> dict[str, Any] | None:
    """The value of the valid record among ``records`` that ``publisher`` signed, if any."""
    if not isinstance(records, list):
        return None
    for wire in records:
        try:
            record = parse_record(wire)
            validate_record(record, time.time())
        except RecordRejected:
            continue
        if record.publisher == publisher and isinstance(record.value, dict):
            return record.value
    return None


# §13.4 ----------------------------------------------------------------------------------------


@inference_case(
    "13.4/2",
    description="inference.forward of prompt A, of another prompt B, then of A again",
    requirement=R_13_4,
    expected=f"both answers for A agree (relative error at most {SAME_REQUEST_TOLERANCE:g})",
)
async def forward_without_cache(ctx: CaseContext, client: InferenceClient) -> Outcome:
    info = client.target
    other = hidden(1, 2, info.hidden_size, past=7)
    bodies = [
        forward_body(info),
        forward_body(info, tokens=2, hidden=other),
        forward_body(info),
    ]
    replies = [await client.call(FORWARD, body) for body in bodies]
    for reply, shape in zip(replies, ([1, 3], [1, 2], [1, 3]), strict=True):
        if problem := _shape_problem(reply, [*shape, info.hidden_size], info):
            return ctx.violated(problem)
    error = relative_error(_values(replies[2]), _values(replies[0]))
    if error > SAME_REQUEST_TOLERANCE:
        return ctx.violated(f"the same request gave another answer (relative error {error:.3g})")
    return ctx.passed(f"the same request gave the same answer (relative error {error:.3g})")


# §13.5: steps ---------------------------------------------------------------------------------


@inference_case(
    "13.5/1",
    description="opening (batch 1, max_length 8), a step of 3 tokens, a step of 1 token and the "
    "end of our direction, back to back",
    requirement=R_13_5_STEPS + QUOTE_GAP + R_13_5_END,
    expected="hidden [1, 3, hidden_size], then hidden [1, 1, hidden_size], then the end of "
    "the target's direction",
)
async def session_steps(ctx: CaseContext, client: InferenceClient) -> Outcome:
    info = client.target
    steps = (step_body(info, new=3), step_body(info, new=1, past=3))
    stream = await client.open_stream(SESSION, _opening(info), *steps, end=True)
    for new in (3, 1):
        reply = await client.receive(stream)
        if problem := _shape_problem(reply, [1, new, info.hidden_size], info):
            return ctx.violated(f"step of {new}: {problem}")
    last = await client.receive(stream)
    if last.kind != "end":
        return ctx.violated(
            f"after both answers, expected the end of the stream, got {last.describe()}"
        )
    return ctx.passed("two answers of 3 and 1 tokens, then the end of the stream")


@inference_case(
    "13.5/2",
    description="a session of a step of 3 tokens then a step of 1 token, against "
    "inference.forward of the same 4 tokens",
    requirement=R_13_5_STEPS + QUOTE_GAP + R_13_4,
    expected="the second step's answer, computed from the cache of the first, agrees with the "
    f"forward pass's last token (relative error at most {CACHE_TOLERANCE:g})",
)
async def session_keeps_cache(ctx: CaseContext, client: InferenceClient) -> Outcome:
    # Only the last token is judged: with bidirectional attention (an encoder's span) the
    # forward pass's first tokens also see the last one, which the first step cannot.
    info, width = client.target, client.target.hidden_size
    whole = await client.call(FORWARD, forward_body(info, tokens=4))
    if problem := _shape_problem(whole, [1, 4, width], info):
        return ctx.violated(f"forward: {problem}")
    steps = (step_body(info, new=3), step_body(info, new=1, past=3))
    stream = await client.open_stream(SESSION, _opening(info), *steps)
    ours: list[float] = []
    for new in (3, 1):
        reply = await client.receive(stream)
        if problem := _shape_problem(reply, [1, new, width], info):
            return ctx.violated(f"step of {new}: {problem}")
        ours += _values(reply)
    reference = _values(whole)
    first = relative_error(ours[: 3 * width], reference[: 3 * width])
    last = relative_error(ours[3 * width :], reference[3 * width :])
    seen = f"relative error {last:.3g} for the second step ({first:.3g} for the first)"
    if last > CACHE_TOLERANCE:
        return ctx.violated(f"the session disagrees with the forward pass: {seen}")
    return ctx.passed(seen)


@inference_case(
    "13.5/3",
    description="a session of max_length 4: a step of 3 tokens, a step of 1 (exactly 4), then "
    "a step of 1 more",
    requirement=R_13_5_TOO_LONG,
    expected="two answers, then RESET(TOO_LONG); the connection then still answers peer.info",
)
async def too_long_after_steps(ctx: CaseContext, client: InferenceClient) -> Outcome:
    info = client.target
    steps = [step_body(info, new=3), step_body(info, new=1, past=3), step_body(info, new=1, past=4)]
    stream = await client.open_stream(SESSION, _opening(info, max_length=4), *steps)
    for past, new in ((0, 3), (3, 1)):
        reply = await client.receive(stream)
        if problem := _shape_problem(reply, [1, new, info.hidden_size], info):
            return ctx.violated(f"a step to {past + new} of 4 tokens: {problem}")
    return await expect_reset(ctx, client, await client.receive(stream), ErrorCode.TOO_LONG)


@inference_case(
    "13.5/4",
    description="a session of max_length 2 whose first step has 3 tokens",
    requirement=R_13_5_TOO_LONG,
    expected="RESET(TOO_LONG); the connection then still answers peer.info",
)
async def too_long_first_step(ctx: CaseContext, client: InferenceClient) -> Outcome:
    messages = (_opening(client.target, max_length=2), step_body(client.target, new=3))
    stream = await client.open_stream(SESSION, *messages)
    return await expect_reset(ctx, client, await client.receive(stream), ErrorCode.TOO_LONG)


@inference_case(
    "13.5/19",
    description="an inference.session opening with batch 0, our direction left open and no step",
    requirement="A server:" + QUOTE_GAP + R_13_5_AT_ONCE,
    expected="RESET(BAD_REQUEST or BAD_TENSOR) without a step; the connection then still "
    "answers peer.info",
)
async def refused_opening_at_once(ctx: CaseContext, client: InferenceClient) -> Outcome:
    stream = await client.open_stream(SESSION, _opening(client.target, batch=0))
    return await expect_reset(ctx, client, await client.receive(stream), *BAD)


# §13.5: limits and freeing --------------------------------------------------------------------


@inference_case(
    "13.5/14",
    description="an opening of more tokens (batch times max_length) than peer.info's "
    "cache_tokens_free, then the end of our direction",
    requirement="A server:" + QUOTE_GAP + R_13_5_CACHE,
    expected="RESET(OUT_OF_CACHE); INFORMATIONAL when no budget is announced or none can be "
    "exceeded within the limits of an opening",
)
async def out_of_cache(ctx: CaseContext, client: InferenceClient) -> Outcome:
    info = await client.settle()
    if isinstance(info, str):
        return ctx.violated(info)
    if info.cache_tokens_free is None:
        return ctx.info("peer.info announces no cache budget (cache_tokens_free is nil)")
    want = info.cache_tokens_free + 1
    max_length = min(want, MAX_LENGTH)
    batch = -(-want // max_length)
    if batch > 1024:
        return ctx.info(f"cache_tokens_free {info.cache_tokens_free} exceeds any opening")
    stream = await client.open_stream(SESSION, _opening(info, batch, max_length), end=True)
    return await expect_reset(ctx, client, await client.receive(stream), ErrorCode.OUT_OF_CACHE)


async def _filled(
    ctx: CaseContext, client: InferenceClient, plan: Capacity, streams: list[int], bad: Reply
) -> Outcome:
    """Judge a session refused before the target's announced room was taken."""
    if bad.kind == "reset" and bad.code == plan.code:
        now = await client.fresh_info()
        if not isinstance(now, str) and now.sessions > len(streams):
            return ctx.info(f"other clients took sessions meanwhile: {bad.seen}")
        return ctx.violated(
            f"session {len(streams) + 1} of the {len(plan.lengths)} that {plan.limit} leaves "
            f"room for was refused: {bad.seen}"
        )
    return ctx.violated(f"session {len(streams) + 1} of {len(plan.lengths)}: {bad.describe()}")


@inference_case(
    "13.5/15",
    description="as many sessions as max_sessions allows (each answering a step), then one more",
    requirement="A server:" + QUOTE_GAP + R_13_5_SESSIONS,
    expected="RESET(TOO_MANY_SESSIONS) for the one more; INFORMATIONAL when max_sessions is nil",
)
async def too_many_sessions(ctx: CaseContext, client: InferenceClient) -> Outcome:
    info = await client.settle()
    if isinstance(info, str):
        return ctx.violated(info)
    plan = session_capacity(info)
    if isinstance(plan, str):
        return ctx.info(plan)
    ctx.set_window(ctx.timeout + PER_SESSION * len(plan.lengths))
    streams, bad = await fill(client, plan.lengths)
    if bad is not None:
        return await _filled(ctx, client, plan, streams, bad)
    _, extra = await fill(client, [plan.extra])
    if extra is None:
        return ctx.violated(f"a session beyond {plan.limit} opened and answered its step")
    return await expect_reset(ctx, client, extra, plan.code)


async def _release_by_reset(client: InferenceClient, streams: list[int]) -> str:
    for stream in streams:
        await client.reset(stream)
    return ""


async def _release_by_end(client: InferenceClient, streams: list[int]) -> str:
    for stream in streams:
        await client.send(stream, end=True)
    for stream in streams:
        reply = await client.receive(stream)
        if reply.kind != "end":
            return (
                f"after we ended a session, expected the end of the stream, got {reply.describe()}"
            )
    return ""


async def _refill(ctx: CaseContext, client: InferenceClient, plan: Capacity) -> Outcome:
    """Open the sessions again; a refusal with the limit's code is retried for FREE_GRACE."""
    give_up = trio.current_time() + FREE_GRACE
    retries = 0
    for i, length in enumerate(plan.lengths):
        while True:
            _, bad = await fill(client, [length])
            if bad is None:
                break
            if bad.kind != "reset" or bad.code != plan.code:
                return ctx.violated(f"reopening session {i + 1}: {bad.describe()}")
            if trio.current_time() >= give_up:
                return ctx.violated(
                    f"session {i + 1} was still refused {FREE_GRACE:g} s after the first "
                    f"sessions ended ({plan.limit}): {bad.seen}"
                )
            retries += 1
            await trio.sleep(0.05)
    return ctx.passed(
        f"{len(plan.lengths)} sessions ({plan.limit}), released, then opened again "
        f"({retries} refused while the target freed them)"
    )


def _register_free(ordinal: int, how: str) -> None:
    async def run(ctx: CaseContext, client: InferenceClient) -> Outcome:
        info = await client.settle()
        if isinstance(info, str):
            return ctx.violated(info)
        plan = session_capacity(info)
        if isinstance(plan, str):
            plan = cache_capacity(info)
        if isinstance(plan, str):
            return ctx.info(f"no limit to fill: {plan}")
        ctx.set_window(ctx.timeout + 2 * PER_SESSION * len(plan.lengths) + FREE_GRACE)
        holder = await InferenceClient.open(ctx) if how == "close" else client
        holder.info = info
        streams, bad = await fill(holder, plan.lengths)
        if bad is not None:
            return await _filled(ctx, client, plan, streams, bad)
        if how == "close":
            await holder.session.wire.aclose()
        else:
            release = _release_by_reset if how == "reset" else _release_by_end
            if problem := await release(holder, streams):
                return ctx.violated(problem)
        return await _refill(ctx, client, plan)

    texts = {
        "reset": "we reset every session",
        "end": "we end every session (and the target ends its direction)",
        "close": "the connection holding them closes",
    }
    inference_case(
        f"13.5/{ordinal}",
        description=f"sessions up to the target's announced limit; {texts[how]}; then the "
        "same sessions again",
        requirement="A server:"
        + QUOTE_GAP
        + R_13_5_FREE
        + (QUOTE_GAP + R_13_5_END if how == "end" else ""),
        expected=f"every session opens again within {FREE_GRACE:g} s; INFORMATIONAL when "
        "neither max_sessions nor cache_tokens_free is announced",
    )(run)


_register_free(16, "reset")
_register_free(17, "end")
_register_free(18, "close")
