"""The inference conformance cases (SPEC.md §13) against the reference server, against
deliberately broken servers, and against a node that serves no inference.

``BrokenServer`` is the reference ``PeerServer`` with its handlers rewritten around switches
(``Faults``): with no fault it conforms, and each fault breaks one rule the way a real server
could (a check left out, a lenient decoder that repairs bad input, a leaked session), so
that every MUST case of §13 is shown to report FAIL under some broken server.  All servers
run over real loopback TCP in the background loop of ``InProcessSwarm``, on tiny
random-weight checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from conformance import Case, Level, Options, Result, Verdict, load_cases, run_cases
from petalproto.core import Address, ErrorCode, Identity
from petalproto.net import CallContext, DhtService, Node, RpcError, Stream
from reference_peer import SpanModel
from reference_peer._announce import announcement
from reference_peer._errors import BadTensor
from reference_peer._push import Pusher, parse_push, parse_push_id
from reference_peer._server import MAX_TENSOR_BYTES, PeerServer, _rows
from reference_peer._spans import SpanSession
from reference_peer._tensors import DTYPES, tensor_from_wire, tensor_to_wire

from .swarm import InProcessSwarm

pytestmark = pytest.mark.model

#: The span the servers serve: neither the first nor the last blocks, so that both ends of a
#: WRONG_SPAN request differ from it.
START, END = 2, 4
MAX_SESSIONS = 2
CACHE_TOKENS = 10_000
#: Cases that only record behaviour against our server (none: it announces both limits).
INFORMATIONAL: set[str] = set()


@dataclasses.dataclass(frozen=True, slots=True)
class Faults:
    """Each field, changed from its default, breaks one rule of SPEC.md §13."""

    check_model: bool = True
    check_span: bool = True
    lax_dtypes: bool = False  # decodes any torch dtype name and converts it
    lax_codec: bool = False  # infers -1 dims, drops extra leading dims, pads or cuts data
    repair_shapes: bool = False  # bends disagreeing tensors into shape instead of refusing
    strict_dtypes: bool = False  # takes only float32 hidden states and int64 ids
    info_changes: dict[str, Any] = dataclasses.field(default_factory=dict)
    announced_changes: dict[str, Any] = dataclasses.field(default_factory=dict)  # §13.7
    check_info_request: bool = True
    last_token_only: bool = False  # forward answers the last token only
    stateful_forward: bool = False  # forward runs through one long-lived cache
    end_sessions: bool = True  # ends its direction after the client ended its own
    stateless_steps: bool = False  # computes each step without the session's cache
    enforce_max_length: bool = True
    check_opening: bool = True
    opening_checked_with_first_step: bool = False  # a refusal waits for a step (SPEC §13.5)
    missing_tensor_is_bad_request: bool = False  # BAD_REQUEST for a missing tensor (§13.4)
    check_steps: bool = True
    enforce_budget: bool = True  # announces CACHE_TOKENS either way
    enforce_max_sessions: bool = True  # announces MAX_SESSIONS either way
    free_on_reset: bool = True  # a reset (or closed) stream frees its session
    free_on_end: bool = True
    every_code: ErrorCode | None = None  # refuses everything with this code
    close_on_error: bool = False  # closes the connection instead of RESET
    # Push (SPEC.md §13.9)
    take_pushed_steps: bool = True  # reads inference.push messages but drops them
    unknown_push_code: ErrorCode = ErrorCode.UNKNOWN_SESSION  # for a push id nobody holds
    check_push_message: bool = True  # a push message's session must be 16 bytes
    check_held_push_id: bool = True  # an opening may not take a push id already held
    claim_pushed: bool = False  # answers pushed true without pushing
    discard_repeats: bool = True  # a step the session has taken is not answered again


# The broken server ---------------------------------------------------------------------------


def _lenient(raw: Any, faults: Faults) -> torch.Tensor:
    """Decode a tensor the way a careless server would."""
    if not isinstance(raw, dict) or not {"dtype", "shape", "data"} <= set(raw):
        raise BadTensor("not a tensor map")
    dtype = DTYPES.get(raw["dtype"]) or getattr(torch, str(raw["dtype"]), None)
    if not isinstance(dtype, torch.dtype) or (raw["dtype"] not in DTYPES and not faults.lax_dtypes):
        raise BadTensor("dtype")
    shape, data = list(raw["shape"]), bytes(raw["data"])
    if not faults.lax_codec and (len(shape) > 4 or any(d < 0 for d in shape)):
        raise BadTensor("shape")
    if -1 not in shape:
        want = math.prod(shape) * dtype.itemsize
        if len(data) != want and not faults.lax_codec:
            raise BadTensor("data length")
        data = data[:want].ljust(want, b"\0")
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)
    while tensor.dim() > 3 and tensor.shape[0] == 1:
        tensor = tensor.squeeze(0)
    if tensor.is_complex():
        tensor = tensor.real
    return tensor


def _fit(tensor: torch.Tensor, batch: int, length: int, fill: torch.Tensor) -> torch.Tensor:
    """``tensor`` bent to ``[batch, length]``, or ``fill`` when it cannot be."""
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.shape[1] != length:
        return fill
    return tensor[:1].expand(batch, length) if tensor.shape[0] != batch else tensor


class BrokenServer(PeerServer):
    """The reference server's three methods, rewritten with ``Faults``."""

    def __init__(self, span: SpanModel, faults: Faults) -> None:
        super().__init__(span, "tiny", throughput=100.0)
        self.faults = faults
        self._cache: tuple[SpanSession, int] | None = None

    def register(self, router: Any, pool: Any = None) -> None:
        router.unary("peer.info", self._guard(self._info))
        router.unary("inference.forward", self._guard(self._forward))
        router.streaming("inference.session", self._guard(self._session))
        router.streaming("inference.push", self._guard(self._push))

    def _guard(self, handler: Callable[[CallContext, Any], Awaitable[Any]]) -> Any:
        async def run(ctx: CallContext, arg: Any) -> Any:
            try:
                return await handler(ctx, arg)
            except RpcError as exc:
                if self.faults.close_on_error:
                    await ctx.peer.aclose("closing instead of a RESET")
                every = self.faults.every_code
                raise RpcError(exc.code if every is None else every, exc.reason) from None

        return run

    async def _info(self, ctx: CallContext, body: Any) -> Any:
        if not isinstance(body, dict) and self.faults.check_info_request:
            raise RpcError(ErrorCode.BAD_REQUEST, "peer.info takes a map")
        return {**self.info(), **self.faults.info_changes}

    def _check(self, body: dict[str, Any]) -> None:
        if body.get("model") != self.model and self.faults.check_model:
            raise RpcError(ErrorCode.UNKNOWN_MODEL, "model")
        if (body.get("start"), body.get("end")) != (START, END) and self.faults.check_span:
            raise RpcError(ErrorCode.WRONG_SPAN, "span")

    def _tensors(
        self, body: Any, batch: int | None, past: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        faults = self.faults
        if not isinstance(body, dict):
            raise RpcError(ErrorCode.BAD_REQUEST, "not a map")
        if faults.missing_tensor_is_bad_request and not all(
            isinstance(body.get(key), dict) for key in ("hidden", "attention_mask")
        ):
            raise RpcError(ErrorCode.BAD_REQUEST, "a tensor field is missing")
        try:
            decode: Any = (
                (lambda raw: _lenient(raw, faults))
                if faults.lax_dtypes or faults.lax_codec
                else (lambda raw: tensor_from_wire(raw, max_bytes=MAX_TENSOR_BYTES))
            )
            hidden = decode(body["hidden"])
            ones = torch.ones(hidden.shape[0], past + hidden.shape[1], dtype=torch.long)
            counted = ones[:, past:].cumsum(1) - 1 + past
            if "position_ids" not in body and not faults.check_steps:
                body = {**body, "position_ids": tensor_to_wire(counted)}
            mask, positions = decode(body["attention_mask"]), decode(body["position_ids"])
        except (KeyError, BadTensor) as exc:
            raise RpcError(ErrorCode.BAD_TENSOR, str(exc)) from None
        if faults.strict_dtypes and (hidden.dtype, mask.dtype) != (torch.float32, torch.long):
            raise RpcError(ErrorCode.BAD_TENSOR, "float32 and int64 only")
        if hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            hidden = hidden.float()
        mask, positions = mask.long(), positions.long()
        if faults.repair_shapes:
            if hidden.dim() == 2:
                hidden = hidden.unsqueeze(0)
            hidden = hidden[: batch or hidden.shape[0], :, : self.span.hidden_size]
            b, new = hidden.shape[0], hidden.shape[1]
            mask = _fit(mask, b, past + new, ones)
            positions = _fit(positions, b, new, counted[:b])
        return hidden, mask, positions

    async def _forward(self, ctx: CallContext, body: Any) -> Any:
        if not isinstance(body, dict):
            raise RpcError(ErrorCode.BAD_REQUEST, "not a map")
        self._check(body)
        hidden, mask, positions = self._tensors(body, None, 0)
        run = self._through_cache if self.faults.stateful_forward else self.span.forward
        out = await self._compute(_rows(hidden), run, hidden, mask, positions)
        if self.faults.last_token_only:
            out = out[:, -1:]
        return {"hidden": tensor_to_wire(out)}

    def _through_cache(
        self, hidden: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        if self._cache is None:
            self._cache = (self.span.open_session(hidden.shape[0], 4096), 0)
        session, past = self._cache
        new = hidden.shape[1]
        whole = torch.ones(hidden.shape[0], past + new, dtype=torch.long)
        self._cache = (session, past + new)
        return session.step(hidden, whole, positions + past)

    def _opening(self, opening: Any) -> tuple[int, int]:
        faults = self.faults
        if not faults.check_opening:
            if isinstance(opening, list):
                opening = dict(
                    zip(("model", "start", "end", "batch", "max_length"), opening, strict=False)
                )
            self._check(opening)
            return int(opening.get("batch", 1)), int(opening.get("max_length", 2048))
        if not isinstance(opening, dict):
            raise RpcError(ErrorCode.BAD_REQUEST, "not a map")
        self._check(opening)
        batch, max_length = opening.get("batch"), opening.get("max_length")
        if type(batch) is not int or type(max_length) is not int:
            raise RpcError(ErrorCode.BAD_REQUEST, "batch and max_length are ints")
        if not (1 <= batch <= 1024 and 1 <= max_length <= 65536):
            raise RpcError(ErrorCode.BAD_REQUEST, "out of range")
        return batch, max_length

    async def _session(self, ctx: CallContext, stream: Stream) -> None:
        try:
            opening = await stream.receive()
            if self.faults.opening_checked_with_first_step:
                with contextlib.suppress(trio.EndOfChannel):
                    await stream.receive()
        except trio.EndOfChannel:
            return
        batch, max_length = self._opening(opening)
        push_id = opening.get("session") if isinstance(opening, dict) else None
        if push_id is not None:
            push_id = parse_push_id(push_id)
            if push_id in self.inboxes and self.faults.check_held_push_id:
                raise RpcError(ErrorCode.BAD_REQUEST, "push id held")
        session: SpanSession = await self._compute(1, self.span.open_session, batch, max_length)
        if not self.faults.enforce_max_length:
            session.max_length = 1 << 30
        self.sessions += 1
        ended = False
        try:
            if push_id is None:
                await self._steps(stream, session, batch)
            else:
                await self._pushed_session(session, stream, push_id)
            ended = True
            if not self.faults.end_sessions:
                await trio.sleep_forever()
            await stream.end()
        finally:
            if self.faults.free_on_end if ended else self.faults.free_on_reset:
                session.close()
                self.sessions -= 1

    async def _steps(self, stream: Stream, session: SpanSession, batch: int) -> None:
        async for step in stream:
            if not isinstance(step, dict) and not self.faults.check_steps:
                continue
            hidden, mask, positions = self._tensors(step, batch, session.length)
            if self.faults.stateless_steps:
                new = hidden.shape[1]
                fresh = await self._compute(
                    _rows(hidden), self.span.forward, hidden, mask[:, -new:], positions
                )
                session.length += new
                await stream.send({"hidden": tensor_to_wire(fresh)})
                continue
            out = await self._compute(_rows(hidden), session.step, hidden, mask, positions)
            await stream.send({"hidden": tensor_to_wire(out)})

    async def _push(self, ctx: CallContext, stream: Stream) -> None:
        faults = self.faults
        async for message in stream:
            if not isinstance(message, dict):
                raise RpcError(ErrorCode.BAD_REQUEST, "not a map")
            raw = message.get("session")
            if faults.check_push_message:
                push_id = parse_push_id(raw)
            else:
                push_id = raw if isinstance(raw, bytes) else b""
            if not faults.take_pushed_steps:
                continue
            try:
                await self.inboxes.deliver(push_id, message, wait=0.5)
            except RpcError as exc:
                raise RpcError(faults.unknown_push_code, exc.reason) from None
        await stream.end()

    async def _step(
        self,
        session: SpanSession,
        step: Any,
        pusher: Pusher | None,
        nursery: trio.Nursery | None = None,
    ) -> dict[str, Any] | None:
        """A step of a push-id session (``PeerServer._pushed_session`` merges the client's
        steps and pushed ones and calls this), with the push faults."""
        hidden, mask, positions = self._tensors(step, session.batch, session.length)
        if self.faults.discard_repeats and mask.shape[1] <= session.length:
            return None
        targets = parse_push(step)
        out = await self._compute(_rows(hidden), session.step, hidden, mask, positions)
        reply: dict[str, Any] = {"hidden": tensor_to_wire(out)}
        if targets:
            assert pusher is not None
            reply["pushed"] = self.faults.claim_pushed or await pusher.send(
                targets[0], {**step, "session": targets[0].session, **reply}
            )
        return reply


# Starting servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swarm() -> Iterator[InProcessSwarm]:
    servers = InProcessSwarm()
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Callable[[str], Path]) -> Path:
    return tiny_checkpoint("llama")


def _span(path: Path, *, max_sessions: int | None, budget: bool) -> SpanModel:
    span = SpanModel(path, START, END, device="cpu", max_sessions=max_sessions)
    if budget:
        span.cache_budget_bytes = span.cache_bytes_per_token * CACHE_TOKENS
    return span


async def _start(
    swarm: InProcessSwarm, server: PeerServer, announced: dict[str, Any] | None = None
) -> Address:
    """Serve ``server`` on a node that is a DHT of one, holding its own announcement
    (SPEC.md §13.7) of ``server.info()`` with ``announced`` applied."""
    node = Node(Identity.from_seed(os.urandom(32)))
    server.register(node.router)
    assert swarm.loop.nursery is not None
    started: Node = await swarm.loop.nursery.start(node.run)
    server.pool = started.pool  # push to other servers (SPEC.md §13.9)
    dht = DhtService.for_node(started)
    await swarm.loop.nursery.start(dht.run)
    info = {**server.info(), **(announced or {})}
    record = announcement(started.identity, server.model, info, started.address)
    await dht.publish(record, attempts=1)
    return started.address


def serve(
    swarm: InProcessSwarm,
    path: Path,
    faults: Faults | None = None,
    *,
    max_sessions: int | None = MAX_SESSIONS,
    budget: bool = True,
) -> Address:
    """A reference server (``faults`` None, with these limits) or a broken one (announcing
    ``MAX_SESSIONS`` and ``CACHE_TOKENS`` whether it keeps them or not), on loopback."""
    if faults is None:
        span = _span(path, max_sessions=max_sessions, budget=budget)
        return swarm.loop.run(_start, swarm, PeerServer(span, "tiny", throughput=100.0))
    span = _span(
        path,
        max_sessions=MAX_SESSIONS if faults.enforce_max_sessions else None,
        budget=faults.enforce_budget,
    )
    announced = {"max_sessions": MAX_SESSIONS}
    if not faults.enforce_budget:
        announced["cache_tokens_free"] = CACHE_TOKENS
    changes = {**announced, **faults.info_changes}
    broken = BrokenServer(span, dataclasses.replace(faults, info_changes=changes))
    return swarm.loop.run(_start, swarm, broken, faults.announced_changes)


def inference_cases() -> list[Case]:
    return [c for c in load_cases().all() if c.section.split(".")[0] == "13"]


def _case(case_id: str) -> Case:
    return load_cases().get(case_id)


def run_on(address: Address, cases: list[Case], timeout: float = 2.0) -> list[Result]:
    return trio.run(run_cases, cases, Options.for_address(address, timeout=timeout))


def _report(results: list[Result], want: set[Verdict]) -> dict[str, str]:
    return {r.case.id: f"{r.verdict.value}: {r.observed}" for r in results if r.verdict not in want}


# Breakers ------------------------------------------------------------------------------------


def _span_of(section: str, first: int, last: int, faults: Faults) -> dict[str, Faults]:
    return {f"{section}/{i}": faults for i in range(first, last + 1)}


_REPAIR = Faults(repair_shapes=True)
_LAX_OPENING = Faults(check_opening=False)

#: case id -> a broken server under which that case must FAIL.
BREAKERS: dict[str, Faults] = {
    "13.1/1": Faults(check_model=False),
    **_span_of("13.1", 2, 3, Faults(check_span=False)),
    "13.1/4": Faults(check_model=False),
    "13.1/5": Faults(check_span=False),
    **_span_of("13.2", 1, 3, Faults(lax_dtypes=True)),
    **_span_of("13.2", 4, 7, Faults(lax_codec=True)),
    "13.2/8": Faults(lax_dtypes=True),
    **_span_of("13.2", 9, 16, _REPAIR),
    **_span_of("13.2", 17, 19, Faults(strict_dtypes=True)),
    "13.3/1": Faults(info_changes={"throughput": 100}),
    "13.3/2": Faults(check_info_request=False),
    "13.4/1": Faults(last_token_only=True),
    "13.4/2": Faults(stateful_forward=True),
    "13.5/1": Faults(end_sessions=False),
    "13.5/2": Faults(stateless_steps=True),
    **_span_of("13.5", 3, 4, Faults(enforce_max_length=False)),
    **_span_of("13.5", 5, 11, _LAX_OPENING),
    **_span_of("13.5", 12, 13, Faults(check_steps=False)),
    "13.5/14": Faults(enforce_budget=False),
    "13.5/15": Faults(enforce_max_sessions=False),
    "13.5/16": Faults(free_on_reset=False),
    "13.5/17": Faults(free_on_end=False),
    "13.5/18": Faults(free_on_reset=False),
    "13.5/19": Faults(opening_checked_with_first_step=True),
    **_span_of("13.4", 3, 5, Faults(missing_tensor_is_bad_request=True)),
    "13.8/1": Faults(info_changes={"quantization": "int4"}),
    "13.8/2": Faults(announced_changes={"quantization": "nf4"}),
    "13.9/1": Faults(take_pushed_steps=False),
    "13.9/2": Faults(unknown_push_code=ErrorCode.BAD_REQUEST),
    "13.9/3": Faults(check_push_message=False),
    "13.9/4": Faults(check_held_push_id=False),
    "13.9/5": Faults(claim_pushed=True),
    "13.9/6": Faults(discard_repeats=False),
}


def test_every_inference_must_case_has_a_breaker() -> None:
    musts = {c.id for c in inference_cases() if c.level is Level.MUST and not c.self_check}
    assert musts == set(BREAKERS)


@pytest.mark.slow
def test_the_reference_server_passes_every_inference_case(
    swarm: InProcessSwarm, checkpoint: Path
) -> None:
    address = serve(swarm, checkpoint)
    results = run_on(address, inference_cases())
    assert _report(results, {Verdict.PASS}) == {}


def test_the_cache_budget_alone_is_filled_and_freed(
    swarm: InProcessSwarm, checkpoint: Path
) -> None:
    address = serve(swarm, checkpoint, max_sessions=None)
    cases = [_case(f"13.5/{i}") for i in (14, 15, 16, 17, 18)]
    verdicts = {r.case.id: r.verdict for r in run_on(address, cases)}
    assert verdicts == {
        "13.5/14": Verdict.PASS,
        "13.5/15": Verdict.INFORMATIONAL,
        **{f"13.5/{i}": Verdict.PASS for i in (16, 17, 18)},
    }


def test_without_limits_the_limit_cases_are_informational(
    swarm: InProcessSwarm, checkpoint: Path
) -> None:
    address = serve(swarm, checkpoint, max_sessions=None, budget=False)
    cases = [_case(f"13.5/{i}") for i in (14, 15, 16, 17, 18)]
    assert {r.verdict for r in run_on(address, cases)} == {Verdict.INFORMATIONAL}


@pytest.mark.slow
def test_the_conforming_broken_server_passes_every_inference_case(
    swarm: InProcessSwarm, checkpoint: Path
) -> None:
    results = run_on(serve(swarm, checkpoint, Faults()), inference_cases())
    assert _report(results, {Verdict.PASS}) == {}


#: Cases whose breakers fail them only by a timeout or the freeing grace.
_WAITING = {"13.5/1", "13.5/16", "13.5/17", "13.5/18"}


def _groups() -> list[Any]:
    """One test per broken server, slow when it waits out a case or starts many servers."""
    by_faults: dict[str, tuple[Faults, list[str]]] = {}
    for case_id, faults in BREAKERS.items():
        by_faults.setdefault(repr(faults), (faults, []))[1].append(case_id)
    return [
        pytest.param(
            faults,
            ids,
            id=",".join(ids),
            marks=[pytest.mark.slow] if len(ids) > 5 or _WAITING & set(ids) else [],
        )
        for faults, ids in by_faults.values()
    ]


@pytest.mark.parametrize(("faults", "case_ids"), _groups())
def test_inference_cases_fail_under_their_broken_server(
    swarm: InProcessSwarm, checkpoint: Path, faults: Faults, case_ids: list[str]
) -> None:
    failed = {}
    for case_id in case_ids:  # a fresh server each, so that one case's damage stays its own
        (result,) = run_on(serve(swarm, checkpoint, faults), [_case(case_id)], timeout=0.5)
        failed[case_id] = f"{result.verdict.value}: {result.observed}"
    assert {k: v for k, v in failed.items() if not v.startswith("FAIL")} == {}


def _refusal_cases() -> list[Case]:
    return [c for c in inference_cases() if c.expected.startswith("RESET(")]


def test_closing_the_connection_instead_of_a_reset_fails_every_refusal(
    swarm: InProcessSwarm, checkpoint: Path
) -> None:
    address = serve(swarm, checkpoint, Faults(close_on_error=True))
    results = run_on(address, _refusal_cases(), timeout=0.5)
    assert _report(results, {Verdict.FAIL}) == {}


def test_bad_request_for_everything_fails_every_specific_refusal(
    swarm: InProcessSwarm, checkpoint: Path
) -> None:
    address = serve(swarm, checkpoint, Faults(every_code=ErrorCode.BAD_REQUEST))
    specific = [c for c in _refusal_cases() if "BAD_REQUEST" not in c.expected]
    results = run_on(address, specific, timeout=0.5)
    assert _report(results, {Verdict.FAIL}) == {}
    assert len(specific) > 20


async def test_a_node_without_inference_is_unimplemented() -> None:
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(Identity.from_seed(os.urandom(32))).run)
        results = await run_cases(inference_cases(), Options.for_address(node.address))
        nursery.cancel_scope.cancel()
    assert _report(results, {Verdict.UNIMPLEMENTED}) == {}


def test_the_cases_grant_connection_credit_back(
    swarm: InProcessSwarm, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformance.cases import _inference_common

    monkeypatch.setattr(_inference_common, "CREDIT_BATCH", 1)
    cases = [_case(case_id) for case_id in ("13.5/1", "13.5/3", "13.5/16")]
    assert _report(run_on(serve(swarm, checkpoint), cases), {Verdict.PASS}) == {}
