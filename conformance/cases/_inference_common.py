"""Shared pieces of the inference cases (SPEC.md §13): wire tensors, ``peer.info``, and a
scripted caller that runs unary calls and sessions side by side on one connection.

Tensors are built by hand from ``struct``-packed bytes, never through torch: the suite
checks implementations in any language and must not need one itself.  Hidden states carry
a fixed, non-zero pattern (zeros pass through many blocks unchanged and would hide a wrong
computation), so that two ways of computing the same tokens can be compared.

``InferenceClient`` keeps the target's frames per stream, so a case may hold several
sessions open at once and read each one's replies in its own order.  Every reply is a
``Reply``: an answer, a RESET with its code, the end of the target's direction, or the
connection ending.  ``inference_case`` registers a case that first asks ``peer.info``: a
target that answers UNKNOWN_METHOD serves no inference, and its §13 cases are
UNIMPLEMENTED rather than failed.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import trio

from petalproto.core import ErrorCode
from petalproto.core._errors import ProtocolError
from petalproto.core._frames import DataFlags, FrameType, encode_frame
from petalproto.core._msgpack import decode_strict, encode

from .._harness import CaseContext, Level, Outcome, case
from .._wire import Session, TargetViolation, describe_frame

__all__ = [
    "DTYPE_SIZES",
    "FLOAT_DTYPES",
    "MAX_FILL",
    "MAX_LENGTH",
    "Capacity",
    "InferenceCase",
    "InferenceClient",
    "Info",
    "Reply",
    "cache_capacity",
    "decode_floats",
    "expect_reset",
    "fill",
    "floats",
    "forward_body",
    "hidden",
    "inference_case",
    "info_problem",
    "int_tensor",
    "parse_info",
    "relative_error",
    "session_capacity",
    "span_of",
    "step_body",
    "wire_tensor",
]

#: Element sizes of the dtypes of SPEC.md §13.2.
DTYPE_SIZES: Final = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1}
FLOAT_DTYPES: Final = ("float32", "float16", "bfloat16")
#: Senders SHOULD keep DATA chunks within one transport message (SPEC.md §8.4).
MAX_CHUNK = 65488
#: Connection credit is granted back in batches of this many bytes (SPEC.md §8.5); streams
#: are short, so their own windows are never used up.
CREDIT_BATCH = 1 << 20

InferenceCase = Callable[[CaseContext, "InferenceClient"], Awaitable[Outcome]]


# Tensors -------------------------------------------------------------------------------------


def wire_tensor(dtype: str, shape: Sequence[int], data: bytes) -> dict[str, Any]:
    """A tensor map exactly as given, valid or not."""
    return {"dtype": dtype, "shape": list(shape), "data": data}


def floats(count: int, offset: int = 0) -> list[float]:
    """``count`` values of a fixed pattern in [-0.5, 0.5]; element ``i`` of a prompt is the
    same whichever step carries it, given its ``offset``."""
    return [0.5 * math.sin(0.37 * (offset + i) + 0.1) for i in range(count)]


def _pack(dtype: str, values: Sequence[float]) -> bytes:
    if dtype == "float32":
        return struct.pack(f"<{len(values)}f", *values)
    if dtype == "float16":
        return struct.pack(f"<{len(values)}e", *values)
    if dtype == "bfloat16":  # the upper half of each float32
        words = struct.unpack(f"<{len(values)}I", struct.pack(f"<{len(values)}f", *values))
        return struct.pack(f"<{len(words)}H", *(w >> 16 for w in words))
    raise ValueError(f"not a float dtype: {dtype}")


def hidden(
    batch: int, tokens: int, width: int, *, past: int = 0, dtype: str = "float32"
) -> dict[str, Any]:
    """Hidden states ``[batch, tokens, width]`` of the pattern, from token ``past`` on."""
    values: list[float] = []
    for row in range(batch):
        start = (row * 4096 + past) * width
        values += floats(tokens * width, start)
    return wire_tensor(dtype, [batch, tokens, width], _pack(dtype, values))


def int_tensor(rows: Sequence[Sequence[int]], dtype: str = "int64") -> dict[str, Any]:
    """A 2-D integer tensor (``int64`` or ``int32``) or ``bool`` tensor from nested rows."""
    flat = [v for row in rows for v in row]
    fmt = {"int64": "q", "int32": "i", "bool": "B"}[dtype]
    data = struct.pack(f"<{len(flat)}{fmt}", *flat)
    return wire_tensor(dtype, [len(rows), len(rows[0]) if rows else 0], data)


def decode_floats(tensor: Any) -> list[float] | str:
    """The elements of a float tensor from the target, or what is wrong with it."""
    if (
        not isinstance(tensor, dict)
        or not all(isinstance(key, str) for key in tensor)
        or set(tensor) != {"dtype", "shape", "data"}
    ):
        return f"{_short(tensor)} is not a tensor map"
    dtype, shape, data = tensor["dtype"], tensor["shape"], tensor["data"]
    if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:
        return f"dtype {dtype!r} is not a float dtype"
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return f"shape {shape!r} is not a list of non-negative ints"
    count = math.prod(shape)
    if type(data) is not bytes or len(data) != count * DTYPE_SIZES[dtype]:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        return f"data of {size} bytes for {dtype} {shape}"
    if dtype == "bfloat16":
        words = struct.unpack(f"<{count}H", data)
        return list(
            struct.unpack(f"<{count}f", struct.pack(f"<{count}I", *(w << 16 for w in words)))
        )
    return list(struct.unpack(f"<{count}{'f' if dtype == 'float32' else 'e'}", data))


def relative_error(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """``norm(ours - theirs) / norm(theirs)``, Euclidean; infinite when the lengths differ."""
    if len(ours) != len(theirs):
        return math.inf
    diff = math.sqrt(sum((a - b) ** 2 for a, b in zip(ours, theirs, strict=True)))
    norm = math.sqrt(sum(b * b for b in theirs))
    return diff / norm if norm else diff


def _brief(value: Any) -> Any:
    """``value`` with byte strings shown by their length (tensor data is long and opaque)."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_brief(v) for v in value]
    return value


def _short(value: Any) -> str:
    text = repr(_brief(value))
    return text if len(text) <= 200 else text[:199] + "…"


# peer.info -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Info:
    """What the cases use of a ``peer.info`` answer."""

    model: str
    start: int
    end: int
    hidden_size: int
    dtype: str
    sessions: int
    max_sessions: int | None
    cache_tokens_free: int | None


def _int(value: Any) -> bool:
    return type(value) is int


#: SPEC.md §13.3: key -> (check, what the spec says it is).
_INFO_SCHEMA: Final[dict[str, tuple[Callable[[Any], bool], str]]] = {
    "model": (lambda v: isinstance(v, str), "text"),
    "start": (_int, "int"),
    "end": (_int, "int"),
    "num_blocks": (_int, "int"),
    "hidden_size": (_int, "int"),
    "dtype": (lambda v: isinstance(v, str), "text"),
    "quantization": (lambda v: v is None or isinstance(v, str), "text or nil"),
    "device": (lambda v: isinstance(v, str), "text"),
    "sessions": (_int, "int"),
    "max_sessions": (lambda v: v is None or _int(v), "int or nil"),
    "cache_tokens_free": (lambda v: v is None or _int(v), "int or nil"),
    "throughput": (lambda v: isinstance(v, float), "float"),
    "version": (lambda v: isinstance(v, str), "text"),
}


#: SPEC.md §13.8: what ``dtype`` and ``quantization`` may be.
INFO_DTYPES: Final = ("float32", "bfloat16", "float16")
INFO_QUANTIZATIONS: Final = (None, "int8", "nf4")


def precision_problem(body: dict[str, Any]) -> str:
    """What breaks SPEC.md §13.8 in a ``peer.info`` answer's precision ("" if nothing)."""
    if body.get("dtype") not in INFO_DTYPES:
        return f"dtype {_short(body.get('dtype'))} is not one of {', '.join(INFO_DTYPES)}"
    if "quantization" not in body:
        return "no 'quantization'"
    if body["quantization"] not in INFO_QUANTIZATIONS:
        return f"quantization {_short(body['quantization'])} is not nil, 'int8' or 'nf4'"
    return ""


def info_problem(body: Any) -> str:
    """What breaks SPEC.md §13.3 in a ``peer.info`` answer ("" if nothing)."""
    if not isinstance(body, dict):
        return f"{_short(body)} is not a map"
    for key, (check, what) in _INFO_SCHEMA.items():
        if key not in body:
            return f"no {key!r}"
        if not check(body[key]):
            return f"{key!r} is {_short(body[key])}, not {what}"
    if not 0 <= body["start"] < body["end"] <= body["num_blocks"]:
        return f"span [{body['start']}, {body['end']}) is not within {body['num_blocks']} blocks"
    if body["hidden_size"] <= 0:
        return f"hidden_size {body['hidden_size']} is not positive"
    return ""


def parse_info(body: Any) -> Info | str:
    """The fields the cases need, or why the answer does not give them."""
    problem = info_problem(body)
    if problem:
        return problem
    return Info(**{field.name: body[field.name] for field in fields(Info)})


def span_of(info: Info, **changes: Any) -> dict[str, Any]:
    """``model``, ``start`` and ``end`` of the target, with ``changes`` applied."""
    return {"model": info.model, "start": info.start, "end": info.end, **changes}


def forward_body(
    info: Info, *, batch: int = 1, tokens: int = 3, dtype: str = "float32", **changes: Any
) -> dict[str, Any]:
    """A well-formed ``inference.forward`` request, with ``changes`` applied."""
    return {
        **span_of(info),
        "hidden": hidden(batch, tokens, info.hidden_size, dtype=dtype),
        "attention_mask": int_tensor([[1] * tokens] * batch),
        "position_ids": int_tensor([list(range(tokens))] * batch),
        **changes,
    }


def step_body(info: Info, *, new: int, past: int = 0, batch: int = 1, **changes: Any) -> Any:
    """A well-formed session step of ``new`` tokens after ``past``, with ``changes``."""
    return {
        "hidden": hidden(batch, new, info.hidden_size, past=past),
        "attention_mask": int_tensor([[1] * (past + new)] * batch),
        "position_ids": int_tensor([list(range(past, past + new))] * batch),
        **changes,
    }


# The caller ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One thing the target did on a stream.

    Attributes:
        kind: ``"answer"`` (a message), ``"reset"``, ``"end"`` (it ended its direction)
            or ``"closed"`` (the connection ended).
        body: the decoded message (answers).
        code: the RESET code (resets).
        seen: a description for reports.
    """

    kind: str
    body: Any = None
    code: int | None = None
    seen: str = ""

    def describe(self) -> str:
        if self.kind == "answer":
            return "answer " + _short(self.body)
        if self.kind == "end":
            return "the end of its direction, without a RESET"
        return self.seen


class InferenceClient:
    """Calls and sessions over one connection to the target, on streams 1, 3, 5, …

    Attributes:
        info: the target's ``peer.info``, once ``inference_case`` has read it.
        first_info: how the target answered that first ``peer.info``.
    """

    def __init__(self, ctx: CaseContext, session: Session) -> None:
        self.ctx = ctx
        self.session = session
        self.info: Info | None = None
        self.first_info: Reply | None = None
        self._next_stream = 1
        self._queues: dict[int, deque[Reply]] = {}
        self._chunks: dict[int, list[bytes]] = {}
        self._closed: Reply | None = None
        self._owed = 0  # DATA bytes received and not yet granted back to the connection

    @classmethod
    async def open(cls, ctx: CaseContext) -> InferenceClient:
        return cls(ctx, await ctx.open_session())

    @property
    def target(self) -> Info:
        assert self.info is not None, "inference_case reads peer.info first"
        return self.info

    # -- sending ----------------------------------------------------------------------------

    async def open_stream(self, method: str, *messages: Any, end: bool = False) -> int:
        """OPEN a stream of ``method`` and send ``messages`` on it in the same write.

        Returns:
            The stream id.
        """
        stream_id = self._next_stream
        self._next_stream += 2
        self._queues[stream_id] = deque()
        opening = encode_frame(FrameType.OPEN, stream_id, method)
        await self.session.send_plain(
            opening + self._data(stream_id, messages, end), f"{method} on stream {stream_id}"
        )
        return stream_id

    async def send(self, stream_id: int, *messages: Any, end: bool = False) -> None:
        """Send ``messages`` on a stream; ``end`` ends our direction after them."""
        await self.session.send_plain(self._data(stream_id, messages, end), f"stream {stream_id}")

    async def reset(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        frame = encode_frame(FrameType.RESET, stream_id, int(code), "conformance")
        await self.session.send_plain(frame, f"RESET stream {stream_id}")

    @staticmethod
    def _data(stream_id: int, messages: Sequence[Any], end: bool) -> bytes:
        out = bytearray()
        for i, message in enumerate(messages):
            raw = message if isinstance(message, bytes) else encode(message)
            last_message = i == len(messages) - 1
            pieces = [raw[j : j + MAX_CHUNK] for j in range(0, max(len(raw), 1), MAX_CHUNK)]
            for k, piece in enumerate(pieces):
                flags = 0
                if k == len(pieces) - 1:
                    flags = DataFlags.END_MESSAGE
                    if end and last_message:
                        flags |= DataFlags.END_STREAM
                out += encode_frame(FrameType.DATA, stream_id, flags, piece)
        if end and not messages:
            out += encode_frame(FrameType.DATA, stream_id, DataFlags.END_STREAM, b"")
        return bytes(out)

    # -- receiving --------------------------------------------------------------------------

    async def receive(self, stream_id: int) -> Reply:
        """The target's next reply on ``stream_id``.

        Raises:
            WireTimeout: nothing decisive arrived before the case's deadline.
            TargetViolation: a message breaks the msgpack profile.
        """
        queue = self._queues.setdefault(stream_id, deque())
        while not queue:
            if self._closed is not None:
                return self._closed
            await self._pump()
        if self._owed >= CREDIT_BATCH:  # a case may read more than one connection window
            frame = encode_frame(FrameType.CREDIT, 0, self._owed)
            self._owed = 0
            await self.session.send_plain(frame, "CREDIT for the connection")
        return queue.popleft()

    async def _pump(self) -> None:
        frame = await self.session.next_frame(self.ctx.deadline)
        if frame is None:
            self._closed = Reply("closed", seen="the connection closed")
        elif frame[0] is FrameType.GOAWAY:
            self._closed = Reply("closed", seen=describe_frame(frame))
        elif frame[0] is FrameType.RESET:
            reply = Reply("reset", code=frame[2], seen=describe_frame(frame))
            self._queues.setdefault(frame[1], deque()).append(reply)
        elif frame[0] is FrameType.DATA:
            self._take_data(frame[1], frame[2], bytes(frame[3]))

    def _take_data(self, stream_id: int, flags: int, chunk: bytes) -> None:
        parts = self._chunks.setdefault(stream_id, [])
        queue = self._queues.setdefault(stream_id, deque())
        parts.append(chunk)
        self._owed += len(chunk)
        if flags & DataFlags.END_MESSAGE:
            raw = b"".join(parts)
            parts.clear()
            try:
                body = decode_strict(raw)
            except ProtocolError as exc:
                raise TargetViolation(f"message breaks the msgpack profile: {exc.msg}") from exc
            queue.append(Reply("answer", body=body))
        if flags & DataFlags.END_STREAM:
            queue.append(Reply("end"))

    async def call(self, method: str, body: Any = None, *, raw_body: bytes | None = None) -> Reply:
        """One unary call: the request with END_STREAM, then the first reply."""
        message = raw_body if raw_body is not None else ({} if body is None else body)
        stream_id = await self.open_stream(method, message, end=True)
        return await self.receive(stream_id)

    async def peer_info(self) -> Reply:
        return await self.call("peer.info", {})

    async def fresh_info(self) -> Info | str:
        """``peer.info`` asked again (session counts change)."""
        reply = await self.peer_info()
        if reply.kind != "answer":
            return f"peer.info: {reply.describe()}"
        return parse_info(reply.body)

    async def settle(self, seconds: float = 0.5) -> Info | str:
        """``peer.info`` once the target reports no open session, or after ``seconds``
        (sessions of connections that just closed may take a moment to be freed)."""
        end = trio.current_time() + seconds
        while True:
            info = await self.fresh_info()
            if isinstance(info, str) or info.sessions == 0 or trio.current_time() >= end:
                return info
            await trio.sleep(0.02)


def _names(codes: Collection[ErrorCode]) -> str:
    return "/".join(code.name for code in codes)


async def expect_reset(
    ctx: CaseContext, client: InferenceClient, reply: Reply, *codes: ErrorCode
) -> Outcome:
    """PASS when ``reply`` is a RESET with one of ``codes`` and a ``peer.info`` call on the
    same connection is then answered (the error was the stream's, not the connection's)."""
    if reply.kind != "reset" or reply.code not in codes:
        return ctx.violated(f"expected RESET({_names(codes)}), got {reply.describe()}")
    after = await client.peer_info()
    if after.kind != "answer":
        return ctx.violated(f"{reply.seen}, but then peer.info got {after.describe()}")
    return ctx.passed(f"{reply.seen}; peer.info then answered on the same connection")


def inference_case(
    case_id: str,
    *,
    description: str,
    requirement: str,
    expected: str,
    level: Level = Level.MUST,
    timeout: float | None = None,
    needs_info: bool = True,
) -> Callable[[InferenceCase], InferenceCase]:
    """Register an inference case: it runs with an ``InferenceClient`` once the target
    answered ``peer.info``; a target without ``peer.info`` makes it UNIMPLEMENTED.

    Args:
        needs_info: parse the answer into ``client.info`` first; an answer that lacks what
            the cases need (model, span, hidden_size, ...) makes the case UNIMPLEMENTED,
            since it cannot build a request (case 13.3/1 judges that answer itself).
    """

    def register(fn: InferenceCase) -> InferenceCase:
        async def run(ctx: CaseContext) -> Outcome:
            client = await InferenceClient.open(ctx)
            reply = client.first_info = await client.peer_info()
            if reply.kind == "reset" and reply.code == ErrorCode.UNKNOWN_METHOD:
                return ctx.unimplemented(
                    "the target serves no inference (peer.info: UNKNOWN_METHOD)"
                )
            if needs_info:
                info = parse_info(reply.body) if reply.kind == "answer" else reply.describe()
                if isinstance(info, str):
                    return ctx.unimplemented(f"peer.info gave nothing to build requests on: {info}")
                client.info = info
            return await fn(ctx, client)

        case(
            case_id,
            description=description,
            requirement=requirement,
            expected=expected,
            level=level,
            timeout=timeout,
        )(run)
        return fn

    return register


# Session capacity ----------------------------------------------------------------------------

#: Most sessions a case opens to reach a target's limit; the longest session (SPEC.md §13.5).
MAX_FILL = 64
MAX_LENGTH = 65536


@dataclass(frozen=True, slots=True)
class Capacity:
    """How to take all of a target's room for sessions, and what one more then gets.

    Attributes:
        lengths: the ``max_length`` of each batch-1 session that together fill the target.
        extra: the ``max_length`` of one more session, which must be refused.
        code: the code it must be refused with.
        limit: the limit in words, for reports.
    """

    lengths: tuple[int, ...]
    extra: int
    code: ErrorCode
    limit: str


def session_capacity(info: Info) -> Capacity | str:
    """Fill by ``max_sessions`` sessions of 4 tokens, or why that cannot be done."""
    if info.max_sessions is None:
        return "peer.info announces no max_sessions"
    free = info.max_sessions - info.sessions
    if not 0 < free <= MAX_FILL:
        return f"{free} free sessions of max_sessions {info.max_sessions}"
    tokens = info.cache_tokens_free
    if tokens is not None and (free + 1) * 4 > tokens:
        return f"cache_tokens_free {tokens} runs out before the session limit"
    return Capacity(
        (4,) * free, 4, ErrorCode.TOO_MANY_SESSIONS, f"max_sessions {info.max_sessions}"
    )


def cache_capacity(info: Info) -> Capacity | str:
    """Fill ``cache_tokens_free`` with batch-1 sessions, or why that cannot be done."""
    tokens = info.cache_tokens_free
    if tokens is None:
        return "peer.info announces no cache_tokens_free"
    full, rest = divmod(tokens, MAX_LENGTH)
    lengths = (MAX_LENGTH,) * full + ((rest,) if rest else ())
    if not 0 < len(lengths) <= MAX_FILL:
        return f"cache_tokens_free {tokens} takes {len(lengths)} sessions to fill"
    return Capacity(lengths, 1, ErrorCode.OUT_OF_CACHE, f"cache_tokens_free {tokens}")


async def fill(client: InferenceClient, lengths: Sequence[int]) -> tuple[list[int], Reply | None]:
    """Open a batch-1 session of each length, each with a step of one token.

    Returns:
        The streams of the sessions whose step was answered, and the first reply that was
        not an answer (None when all were).
    """
    streams: list[int] = []
    for length in lengths:
        opening = {**span_of(client.target), "batch": 1, "max_length": length}
        stream = await client.open_stream(
            "inference.session", opening, step_body(client.target, new=1)
        )
        reply = await client.receive(stream)
        if reply.kind != "answer":
            return streams, reply
        streams.append(stream)
    return streams, None
