"""``petal-conformance --role client``: our client passes, and every case can fail.

Each case runs a real client process against the suite's listener: our ``petal ping``, and
``broken_client.py``, a second client written on the suite's own initiator, with one fault
per case that the case must catch.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from conformance import Level, Result, Verdict
from conformance._client import CLIENT_REGISTRY, ClientOptions, run_client_cases
from conformance._coverage import misquoted
from conformance.runner import select

ROOT = Path(__file__).resolve().parents[2]
PY = shlex.quote(sys.executable)
OUR_CLIENT = f"{PY} -m petalproto.cli ping {{address}} --count 3 --payload-bytes 60000"
BROKEN = f"{PY} -m tests.conformance.broken_client {{address}}"

#: case id -> the arguments of broken_client.py under which that case must FAIL.
BREAKERS = {
    "3.3/101": "--fault lax-keys",
    "4.2/101": "--fault no-peer-check",
    "6.1/101": "--count 0",  # a client that makes no call after the handshake
    "6.6/101": "--fault no-sig-check",
    "6.6/102": "--fault go-on",
    "6.6/103": "--fault go-on",
    "6.6/104": "--fault go-on",
    "8.5/101": "--fault ignore-credit",
    "8.6/101": "--fault ignore-reset",
}


def _cases() -> list[str]:
    return [c.id for c in select(None, role="client")]


async def _run(command: str, case_ids: list[str]) -> list[Result]:
    cases = [CLIENT_REGISTRY.get(case_id) for case_id in case_ids]
    return await run_client_cases(cases, ClientOptions(command, timeout=2.0))


def _bad(results: list[Result]) -> dict[str, str]:
    return {
        r.case.id: f"{r.verdict.value}: {r.observed}"
        for r in results
        if r.verdict is not Verdict.PASS
    }


def test_every_client_case_has_a_breaker_and_quotes_the_spec() -> None:
    cases = select(None, role="client")
    assert {c.id for c in cases if c.level is Level.MUST} == set(BREAKERS)
    assert misquoted((ROOT / "SPEC.md").read_text(encoding="utf-8"), cases) == {}


@pytest.mark.slow
async def test_our_client_passes_every_case() -> None:
    assert _bad(await _run(OUR_CLIENT, _cases())) == {}


@pytest.mark.slow
async def test_the_broken_client_without_faults_passes_every_case() -> None:
    assert _bad(await _run(BROKEN, _cases())) == {}


@pytest.mark.slow
@pytest.mark.parametrize("case_id", sorted(BREAKERS))
async def test_case_fails_under_its_broken_client(case_id: str) -> None:
    command = f"{BROKEN} {BREAKERS[case_id]}"
    (result,) = await _run(command, [case_id])
    assert result.verdict is Verdict.FAIL, f"{result.verdict.value}: {result.observed}"
