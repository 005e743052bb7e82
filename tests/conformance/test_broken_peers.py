"""Every MUST case can fail: for each, a broken peer under which it reports FAIL.

The broken peers are ``BrokenResponder`` with one rule switched off (``Faults``).  With no
fault it must pass the whole suite, which also checks the suite against a second
implementation of the responder.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from conformance import Case, Level, Result, Verdict
from petalproto.core import Address, Connection, Identity, Role

from ._support import all_cases, get_case, run_against_broken
from .broken_peer import SETTINGS, Faults

INFORMATIONAL = {"6.1/2", "8.2/11"}
#: The broken peer serves no DHT, so the one transport case that needs it is UNIMPLEMENTED.
_EXPECTED = {
    **{case_id: Verdict.INFORMATIONAL for case_id in INFORMATIONAL},
    "8.4/3": Verdict.UNIMPLEMENTED,
}

_LENIENT_FRAMES = Faults(strict_msgpack=False, check_frame_shapes=False)
_SILENT = Faults(handshake_windows=False, close_on_handshake_failure=False)
_ANY_PAYLOAD = Faults(verify_identity=False, strict_payload=False)


def _span(section: str, first: int, last: int, faults: Faults) -> dict[str, Faults]:
    return {f"{section}/{i}": faults for i in range(first, last + 1)}


#: case id -> a broken peer that case must fail.
BREAKERS: dict[str, Faults] = {
    "1.3/1": Faults(reject_unknown_settings=True),
    "1.3/2": Faults(reject_unknown_request_keys=True),
    "3.3/1": Faults(verify_identity=False),
    **_span("3.3", 3, 11, Faults(openssl_keys=True)),
    "3.3/12": Faults(reduce_s=True),
    **_span("5.1", 1, 16, Faults(strict_msgpack=False)),
    "5.1/17": Faults(max_depth_off_by_one=True),
    "5.1/18": Faults(require_canonical=True),
    **_span("5.1", 19, 23, _LENIENT_FRAMES),
    "6.1/1": Faults(prologue=b""),
    "6.2/1": Faults(prologue=b""),
    "6.2/2": Faults(prologue=b"petalproto/0.1"),
    "6.3/1": Faults(handshake_windows=False),
    "6.3/2": _SILENT,
    "6.3/3": Faults(handshake_windows=False),
    "6.3/4": _SILENT,
    "6.3/5": Faults(handshake_windows=False),
    "6.3/6": Faults(handshake_windows=False, verify_identity=False, strict_payload=False),
    "6.3/7": Faults(pad_msg2=True),
    "6.3/8": Faults(reassemble=False),
    "6.3/9": Faults(discard_after_msg3=True),
    "6.3/11": Faults(goaway_close=False),
    "6.3/12": Faults(handshake_windows=False, msg1_payload_check=False),
    **_span("6.4", 2, 8, Faults(settings_check=False)),
    "6.4/9": Faults(require_all_settings=True),
    "6.4/10": Faults(settings={**SETTINGS, "max_frame": 1000}),
    "6.4/11": Faults(require_key_order=True),
    **_span("6.6", 1, 3, Faults(close_on_handshake_failure=False)),
    **_span("6.6", 4, 6, Faults(low_order_check=False)),
    **_span("6.6", 7, 16, _ANY_PAYLOAD),
    **_span("7.1", 1, 5, Faults(close_on_auth_failure=False)),
    **_span("7.2", 1, 3, Faults(max_frame_check=False)),
    "7.2/4": Faults(reject_empty_frame=False),
    "7.2/5": Faults(frames_within_messages=True),
    "7.2/6": Faults(one_frame_per_message=True),
    "7.2/7": Faults(partial_frame_at_eof=True),
    "7.2/8": Faults(max_frame_off_by_one=True),
    "7.3/3": Faults(continue_after_error=True),
    **_span("8.1", 1, 2, Faults(reject_unknown_frames=False)),
    **_span("8.1", 3, 16, Faults(check_frame_shapes=False)),
    **_span("8.2", 1, 8, Faults(check_stream_ids=False)),
    "8.2/9": Faults(strict_closed_streams=True),
    "8.2/10": Faults(require_consecutive_ids=True),
    "8.3/1": Faults(stream_closed_reset=True),
    "8.3/2": Faults(empty_end_is_message=True),
    "8.4/1": Faults(one_chunk_messages=True),
    "8.4/2": Faults(check_message_end=False),
    **_span("8.5", 1, 3, Faults(flow_control=False)),
    "8.5/4": Faults(respect_peer_credit=False),
    "8.5/6": Faults(grant_consumed=False),
    "8.6/1": Faults(echo_reset=True),
    **_span("9.1", 1, 2, Faults(pong_echo=False)),
    **_span("9.2", 1, 3, Faults(goaway_close=False)),
    "10.1/1": Faults(response_end_stream=False),
    **_span("10.1", 2, 5, Faults(check_requests=False)),
    "10.3/1": Faults(ping_response={"agent": 7, "observed": None}),
    "10.3/2": Faults(serve_one_stream=True),
    **_span("10.4", 1, 2, Faults(unknown_method_reset=False)),
}

#: Cases that must fail in another way than through a broken peer: 4.2/1 with a wrong
#: address (below), 8.4/3 against a broken DHT (it needs ``dht.get``: tests/net).
SPECIAL = {"4.2/1", "8.4/3"}


def _transport_cases() -> list[Case]:
    """Cases of §1-§10; the DHT's (§12) and inference's (§13) have their own breakers, in
    tests/net and tests/peer."""
    return [c for c in all_cases() if not c.id.startswith(("12.", "13."))]


def _must_cases() -> list[str]:
    return [c.id for c in _transport_cases() if c.level is Level.MUST and not c.self_check]


def test_every_must_case_has_a_breaker() -> None:
    missing = set(_must_cases()) - set(BREAKERS) - SPECIAL
    assert not missing, sorted(missing)
    assert set(BREAKERS) <= {c.id for c in all_cases()}


@pytest.mark.slow
async def test_a_conforming_broken_peer_passes_everything() -> None:
    results = await run_against_broken(_transport_cases(), Faults(), case_timeout=1.0)
    bad = {
        r.case.id: f"{r.verdict.value}: {r.observed}"
        for r in results
        if r.verdict is not _EXPECTED.get(r.case.id, Verdict.PASS)
    }
    assert not bad


def _failed(result: Result) -> bool:
    return result.verdict is Verdict.FAIL


@pytest.mark.slow
@pytest.mark.parametrize("case_id", sorted(BREAKERS))
async def test_case_fails_under_its_broken_peer(case_id: str) -> None:
    (result,) = await run_against_broken([get_case(case_id)], BREAKERS[case_id], case_timeout=0.2)
    assert _failed(result), f"{result.verdict.value}: {result.observed}"


async def test_wrong_address_fails_the_peer_id_case() -> None:
    someone = Address(Identity.from_seed(os.urandom(32)).peer_id, "127.0.0.1", 1)
    (result,) = await run_against_broken(
        [get_case("4.2/1")], Faults(), case_timeout=0.5, address=someone
    )
    assert _failed(result), result.observed


class _LenientPeerId:
    """A peer id parser that accepts anything: what 3.3/2 must catch in our own client."""

    @classmethod
    def from_text(cls, text: str) -> _LenientPeerId:
        return cls()

    @classmethod
    def from_bytes(cls, raw: bytes) -> _LenientPeerId:
        return cls()


def _trusting_connection(role: Role, **kwargs: Any) -> Connection:
    """A dialer that forgets whom it dialled: what 4.2/2 must catch in our own client."""
    kwargs.pop("expected_peer", None)
    return Connection(role, **kwargs)


async def test_self_checks_fail_when_our_client_is_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    from conformance.cases import verification

    monkeypatch.setattr(verification, "PeerId", _LenientPeerId)
    monkeypatch.setattr(verification, "Connection", _trusting_connection)
    results = await run_against_broken(
        [get_case("3.3/2"), get_case("4.2/2")], Faults(), case_timeout=0.5
    )
    assert [r.verdict for r in results] == [Verdict.FAIL, Verdict.FAIL], [
        r.observed for r in results
    ]
