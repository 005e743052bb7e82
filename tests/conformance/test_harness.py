"""The harness itself: ids, registry, verdicts, deadlines, the wirelog."""

from __future__ import annotations

import time

import pytest
import trio

from conformance import Case, CaseContext, Level, Options, Outcome, Verdict, count, run_cases
from conformance._harness import Registry, Result, section_key
from conformance._wire import TargetViolation, WireLog, WireTimeout

from ._support import all_cases


def _case(case_id: str, run: object = None, level: Level = Level.MUST) -> Case:
    async def noop(ctx: CaseContext) -> Outcome:
        return ctx.passed("ok")

    return Case(case_id, "d", "r", level, "e", run or noop)  # type: ignore[arg-type]


def test_ids_sort_by_section_numbers() -> None:
    ids = ["10.1/1", "9.2/3", "6.6/10", "6.6/2", "6/1", "6.6.1/1"]
    assert sorted(ids, key=section_key) == ["6/1", "6.6/2", "6.6/10", "6.6.1/1", "9.2/3", "10.1/1"]
    with pytest.raises(ValueError):
        section_key("6.6-1")


def test_registry_rejects_duplicates_and_selects() -> None:
    registry = Registry()
    registry.add(_case("6.6/1"))
    registry.add(_case("6.6.1/1"))
    registry.add(_case("6.60/1"))
    with pytest.raises(ValueError):
        registry.add(_case("6.6/1"))
    assert [c.id for c in registry.select(["6.6"])] == ["6.6/1", "6.6.1/1"]
    assert [c.id for c in registry.select(["6.6*"])] == ["6.6/1", "6.6.1/1", "6.60/1"]


def test_every_case_is_well_formed() -> None:
    for c in all_cases():
        section_key(c.id)
        assert c.description and c.requirement and c.expected, c.id


def _ctx(level: Level) -> CaseContext:
    return CaseContext(
        _case("1/1", level=level), Options(host="127.0.0.1", port=1), WireLog(time.monotonic())
    )


async def test_violations_follow_the_level() -> None:
    assert _ctx(Level.MUST).violated("x").verdict is Verdict.FAIL
    assert _ctx(Level.SHOULD).violated("x").verdict is Verdict.NON_STRICT
    assert _ctx(Level.MAY).violated("x").verdict is Verdict.INFORMATIONAL
    assert _ctx(Level.MUST).unimplemented("x").verdict is Verdict.UNIMPLEMENTED


async def test_exceptions_become_verdicts() -> None:
    async def times_out(ctx: CaseContext) -> Outcome:
        raise WireTimeout("a PONG")

    async def garbage(ctx: CaseContext) -> Outcome:
        raise TargetViolation("bad frame")

    async def bug(ctx: CaseContext) -> Outcome:
        raise KeyError("oops")

    async def hangs(ctx: CaseContext) -> Outcome:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    cases = [
        _case("1/1", times_out),
        _case("1/2", garbage),
        _case("1/3", bug),
        _case("1/4", hangs, Level.SHOULD),
    ]
    options = Options(host="127.0.0.1", port=1, timeout=0.01, connect_timeout=0.01, grace=0.01)
    results = await run_cases(cases, options)
    assert [r.verdict for r in results] == [
        Verdict.FAIL,
        Verdict.FAIL,
        Verdict.ERROR,
        Verdict.NON_STRICT,
    ]
    assert "KeyError" in results[2].observed


async def test_global_deadline_turns_the_rest_into_errors() -> None:
    results = await run_cases(
        [_case("1/1"), _case("1/2")], Options(host="127.0.0.1", port=1), deadline=0
    )
    assert [r.verdict for r in results] == [Verdict.ERROR, Verdict.ERROR]


def test_count_is_strict_only_on_request() -> None:
    results = [
        Result(_case("1/1"), v, "", 0.0)
        for v in (
            Verdict.PASS,
            Verdict.FAIL,
            Verdict.NON_STRICT,
            Verdict.ERROR,
            Verdict.INFORMATIONAL,
        )
    ]
    assert count(results, strict=False) == (1, 1)
    assert count(results, strict=True) == (1, 2)


def test_wirelog_is_bounded() -> None:
    log = WireLog(time.monotonic())
    log.add("send", "tcp", bytes(1000), "big")
    for _ in range(WireLog.MAX_ENTRIES + 10):
        log.add("recv", "tcp", b"x")
    entries = log.to_json()
    assert entries[0]["truncated"] and len(entries[0]["hex"]) == 2 * WireLog.MAX_ENTRY_BYTES
    assert entries[-1] == {"dropped_entries": 11}
