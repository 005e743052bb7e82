"""The whole suite against our own Node, in-process on real loopback TCP."""

from __future__ import annotations

import pytest
import trio

from conformance import Result, Verdict

from ._support import all_cases, get_case, run_against_node

#: Cases that only record behaviour.
INFORMATIONAL = {"6.1/2", "8.2/11"}
#: Cases our Node fails today, with the bug behind each (none at present).
KNOWN_BUGS: dict[str, str] = {}


#: Waits out the target's handshake timeout; run on its own against a quick node.
SLOW_CASE = "6.7/1"
#: Sections a plain Node does not serve; tests/peer/test_inference_conformance.py runs them.
ELSEWHERE = ("13.",)


@pytest.fixture(scope="module")
def node_results() -> dict[str, Result]:
    cases = [c for c in all_cases() if c.id != SLOW_CASE and not c.id.startswith(ELSEWHERE)]
    results = trio.run(run_against_node, cases)
    return {r.case.id: r for r in results}


def _params() -> list[object]:
    out: list[object] = []
    for c in all_cases():
        if c.id == SLOW_CASE or c.id.startswith(ELSEWHERE):
            continue
        marks = (
            [pytest.mark.xfail(reason=KNOWN_BUGS[c.id], strict=True)] if c.id in KNOWN_BUGS else []
        )
        out.append(pytest.param(c.id, id=c.id, marks=marks))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case_id", _params())
def test_node_passes(node_results: dict[str, Result], case_id: str) -> None:
    result = node_results[case_id]
    want = Verdict.INFORMATIONAL if case_id in INFORMATIONAL else Verdict.PASS
    assert result.verdict is want, result.observed


@pytest.mark.slow
async def test_node_handshake_timeout() -> None:
    (result,) = await run_against_node([get_case(SLOW_CASE)], handshake_timeout=0.5)
    assert result.verdict is Verdict.PASS, result.observed
