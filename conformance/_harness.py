"""Verdicts, the case registry, timing and reports of the conformance suite.

The structure follows h2spec and the Autobahn test suite:

* a *case* checks one requirement of SPEC.md.  Its id is the SPEC.md section number plus an
  ordinal (``6.6/3``), as h2spec names ``http2/6.9/1``; ids are append-only and never
  renumbered (Autobahn).  Each case quotes its requirement sentence verbatim from SPEC.md,
  has a level (MUST or SHOULD) and states the outcome set it accepts ("the target sends
  GOAWAY with a code in S and/or closes the connection within T");
* every case gets a fresh TCP connection, a per-case timeout and a share of a global
  deadline;
* verdicts are Autobahn's plus ERROR: PASS, FAIL (a MUST violated), NON-STRICT (a SHOULD
  violated; a failure only under ``--strict``), INFORMATIONAL (behaviour recorded, no
  verdict), UNIMPLEMENTED (an optional feature is absent) and ERROR (harness or
  infrastructure trouble such as a refused connection; never counted as FAIL).

Registering cases from a new module is one decorator: any module under
``conformance/cases/`` is imported by ``load_cases`` and its ``@case(...)`` functions join
the registry.
"""

from __future__ import annotations

import enum
import fnmatch
import re
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from petalproto.core import Address

from ._wire import Session, TargetViolation, Wire, WireLog, WireTimeout

__all__ = [
    "QUOTE_GAP",
    "REGISTRY",
    "Case",
    "CaseContext",
    "Level",
    "Options",
    "Outcome",
    "Registry",
    "Result",
    "Verdict",
    "case",
    "count",
    "run_cases",
    "section_key",
]


class Verdict(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    NON_STRICT = "NON-STRICT"
    INFORMATIONAL = "INFORMATIONAL"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    ERROR = "ERROR"


class Level(enum.Enum):
    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"  # optional behaviour: recorded as INFORMATIONAL, never a failure


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a case concluded, and what it saw."""

    verdict: Verdict
    observed: str


CaseFn = Callable[["CaseContext"], Awaitable[Outcome]]

_ID = re.compile(r"^(\d+(?:\.\d+)*)/(\d+)$")


@dataclass(frozen=True, slots=True)
class Case:
    """One check of one SPEC.md requirement.

    Attributes:
        id: ``SECTION/ORDINAL``, e.g. ``6.6/3``.
        description: what the case does to the target.
        requirement: the sentence of SPEC.md it checks, quoted verbatim.
        level: MUST, SHOULD or MAY; a violated SHOULD gives NON-STRICT, a MAY case only
            records what it saw (INFORMATIONAL).
        expected: the outcome set that passes.
        run: the coroutine that performs the case.
        self_check: the case tests our own client, not the target.
        timeout: seconds this case may wait for its outcome, instead of the run's default.
    """

    id: str
    description: str
    requirement: str
    level: Level
    expected: str
    run: CaseFn
    self_check: bool = False
    timeout: float | None = None

    @property
    def section(self) -> str:
        return self.id.partition("/")[0]


def section_key(case_id: str) -> tuple[int, ...]:
    """Sort key for case ids: numeric by section, then ordinal."""
    match = _ID.match(case_id)
    if match is None:
        raise ValueError(f"bad case id {case_id!r}")
    return (*map(int, match.group(1).split(".")), -1, int(match.group(2)))


class Registry:
    """The set of known cases, keyed by id."""

    def __init__(self) -> None:
        self._cases: dict[str, Case] = {}

    def add(self, new: Case) -> None:
        """Raises: ValueError: the id is malformed or taken."""
        section_key(new.id)
        if new.id in self._cases:
            raise ValueError(f"case {new.id} registered twice")
        self._cases[new.id] = new

    def case(
        self,
        case_id: str,
        *,
        description: str,
        requirement: str,
        expected: str,
        level: Level = Level.MUST,
        self_check: bool = False,
        timeout: float | None = None,
    ) -> Callable[[CaseFn], CaseFn]:
        """Decorator registering ``fn`` as case ``case_id``."""

        def register(fn: CaseFn) -> CaseFn:
            self.add(
                Case(case_id, description, requirement, level, expected, fn, self_check, timeout)
            )
            return fn

        return register

    def all(self) -> list[Case]:
        return sorted(self._cases.values(), key=lambda c: section_key(c.id))

    def get(self, case_id: str) -> Case:
        return self._cases[case_id]

    def select(self, patterns: Iterable[str]) -> list[Case]:
        """Cases whose id matches a glob (``6.*``, ``8.2/1``) or lies in a section (``6.6``)."""
        pats = [p.strip() for p in patterns if p.strip()]
        return [c for c in self.all() if any(_matches(c, p) for p in pats)]


def _matches(c: Case, pattern: str) -> bool:
    if fnmatch.fnmatchcase(c.id, pattern):
        return True
    section = pattern.rstrip("/")
    return c.section == section or c.section.startswith(section + ".")


REGISTRY = Registry()
case = REGISTRY.case


@dataclass(frozen=True, slots=True)
class Options:
    """How the run treats its target.

    Attributes:
        target: the address to dial; ``peer_id`` may be None when only HOST:PORT was given.
        timeout: seconds each case waits for its outcome (h2spec's default is 2).
        handshake_timeout: the handshake timeout SPEC.md §6.7 gives a responder.
        connect_timeout: seconds to wait for the TCP connection.
        grace: seconds a case may overrun its deadline (to finish a read, close sockets)
            before the harness stops it and rules on the silence.
    """

    host: str
    port: int
    peer_id: Any = None
    timeout: float = 2.0
    handshake_timeout: float = 5.0
    connect_timeout: float = 5.0
    grace: float = 1.0

    @classmethod
    def for_address(cls, address: Address, **kwargs: Any) -> Options:
        return cls(host=address.host, port=address.port, peer_id=address.peer_id, **kwargs)


#: Separates the pieces of a requirement that quotes several passages of SPEC.md (a
#: sentence and one of its bullets); each piece is verbatim.
QUOTE_GAP = " … "


class CaseContext:
    """What a running case uses: its connection factory, deadline and verdict helpers."""

    def __init__(self, the_case: Case, options: Options, log: WireLog) -> None:
        self.case = the_case
        self.options = options
        self.log = log
        self.timeout = the_case.timeout or options.timeout
        self.started = trio.current_time()
        self.deadline = self.started + self.timeout
        self.scope = trio.CancelScope(deadline=self._hard_limit())
        self._wires: list[Wire] = []

    def _hard_limit(self) -> float:
        return self.deadline + self.options.connect_timeout + self.options.grace

    def set_window(self, seconds: float) -> None:
        """Give the outcome ``seconds`` from now (after a slow set-up, or for a case
        whose requirement names its own time, such as the handshake timeout)."""
        self.timeout = seconds
        self.deadline = trio.current_time() + seconds
        self.scope.deadline = self._hard_limit()

    async def dial(self) -> Wire:
        """A fresh TCP connection to the target.

        Raises:
            InfrastructureError: the connection could not be made.
        """
        try:
            with trio.fail_after(self.options.connect_timeout):
                stream = await trio.open_tcp_stream(self.options.host, self.options.port)
        except (OSError, trio.TooSlowError) as exc:
            raise InfrastructureError(f"cannot connect to the target: {exc!r}") from exc
        wire = Wire(stream, self.log)
        self._wires.append(wire)
        return wire

    async def session(self, **kwargs: Any) -> Session:
        """A fresh connection wrapped in our fault-injecting initiator."""
        return Session(await self.dial(), **kwargs)

    async def open_session(self, *, synced: bool = False, **kwargs: Any) -> Session:
        """A fresh connection with a completed, well-formed handshake.

        Args:
            synced: also wait for a PING round trip, so that the target has certainly
                finished its side of the handshake before the case goes on (otherwise the
                case's first frames may reach it in the same read as message 3).
        """
        session = await self.session(**kwargs)
        await session.handshake(self.deadline)
        if synced:
            await session.sync(self.deadline)
        return session

    async def aclose(self) -> None:
        for wire in self._wires:
            await wire.aclose()

    # -- verdicts ------------------------------------------------------------------------------

    def passed(self, observed: str) -> Outcome:
        return Outcome(Verdict.PASS, observed)

    def violated(self, observed: str) -> Outcome:
        """The target broke the case's requirement: FAIL for MUST, NON-STRICT for SHOULD."""
        verdicts = {
            Level.MUST: Verdict.FAIL,
            Level.SHOULD: Verdict.NON_STRICT,
            Level.MAY: Verdict.INFORMATIONAL,
        }
        return Outcome(verdicts[self.case.level], observed)

    def info(self, observed: str) -> Outcome:
        return Outcome(Verdict.INFORMATIONAL, observed)

    def unimplemented(self, observed: str) -> Outcome:
        return Outcome(Verdict.UNIMPLEMENTED, observed)


class InfrastructureError(Exception):
    """The harness could not run a case (connect refused, ...): verdict ERROR."""


@dataclass(slots=True)
class Result:
    """One case's verdict with everything the report shows."""

    case: Case
    verdict: Verdict
    observed: str
    duration_ms: float
    wirelog: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "level": self.case.level.value,
            "duration_ms": round(self.duration_ms, 3),
            "description": self.case.description,
            "requirement": self.case.requirement,
            "expected": self.case.expected,
            "observed": self.observed,
            "self_check": self.case.self_check,
            "wirelog": self.wirelog,
        }


async def run_case(
    the_case: Case, options: Any, *, context: Callable[..., CaseContext] | None = None
) -> Result:
    """Run one case on fresh connections; never raises for the target's behaviour.

    Args:
        options: the run's ``Options`` (or what ``context`` takes instead).
        context: makes the case's context from (case, options, wirelog); the client
            role passes its own.
    """
    log = WireLog(time.monotonic())
    ctx = (context or CaseContext)(the_case, options, log)
    start = time.perf_counter()
    outcome: Outcome | None = None
    try:
        with ctx.scope:
            outcome = await _guarded(the_case, ctx)
        if outcome is None:
            outcome = ctx.violated(f"no outcome within {ctx.timeout:g} s: the target stalled")
    finally:
        with trio.CancelScope(shield=True):
            await ctx.aclose()
    duration = (time.perf_counter() - start) * 1000
    return Result(the_case, outcome.verdict, outcome.observed, duration, log.to_json())


async def _guarded(the_case: Case, ctx: CaseContext) -> Outcome:
    try:
        return await the_case.run(ctx)
    except WireTimeout as exc:
        return ctx.violated(f"timed out after {ctx.timeout:g} s: {exc}")
    except TargetViolation as exc:
        return Outcome(Verdict.FAIL, f"the target sent something invalid: {exc}")
    except InfrastructureError as exc:
        return Outcome(Verdict.ERROR, str(exc))
    except Exception as exc:
        lines = traceback.format_exception_only(type(exc), exc)
        return Outcome(Verdict.ERROR, f"harness error: {''.join(lines).strip()}")


async def run_cases(
    cases: Iterable[Case],
    options: Any,
    *,
    deadline: float | None = None,
    on_result: Callable[[Result], None] | None = None,
    context: Callable[..., CaseContext] | None = None,
) -> list[Result]:
    """Run ``cases`` one after the other.

    Args:
        cases: what to run, in order.
        options: the target and timeouts (``Options``, or what ``context`` takes).
        deadline: seconds for the whole run; cases not started by then get ERROR.
        on_result: called with each result as soon as it is known.
        context: as for ``run_case``.

    Returns:
        One result per case, in order.
    """
    end = None if deadline is None else trio.current_time() + deadline
    results: list[Result] = []
    for the_case in cases:
        if end is not None and trio.current_time() >= end:
            result = Result(the_case, Verdict.ERROR, "global deadline passed; not run", 0.0)
        else:
            result = await run_case(the_case, options, context=context)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def count(results: Iterable[Result], *, strict: bool) -> tuple[int, int]:
    """Returns: (passed, failed); NON-STRICT counts as failed only when ``strict``."""
    passed = failed = 0
    for result in results:
        if result.verdict is Verdict.PASS:
            passed += 1
        elif result.verdict is Verdict.FAIL or (strict and result.verdict is Verdict.NON_STRICT):
            failed += 1
    return passed, failed
