"""``petal status``: the report of a client's view of the DHT (SPEC.md §12, §13.7)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import time
from typing import Any

import pytest
import trio

from petalproto._commands import status
from petalproto._commands._common import CommandFailed
from petalproto._commands.status import collect, model_report, render, spans_key
from petalproto.core import Address, Identity
from petalproto.core.dht import Record, make_dictionary_record, make_named_record

from .test_dht import swarm


def _announce(identity: Identity, model: str, value: Any, port: int = 4001) -> Record:
    if isinstance(value, dict) and "addr" not in value:
        value = {"addr": f"{identity.peer_id}@127.0.0.1:{port}", **value}
    return make_dictionary_record(
        identity, spans_key(model), value, seq=1, expires=int(time.time()) + 300
    )


def _span(start: int, end: int, **extra: Any) -> dict[str, Any]:
    return {
        "start": start,
        "end": end,
        "throughput": 12_500,
        "cache_tokens_free": 4096,
        "dtype": "float32",
        **extra,
    }


def _identity() -> Identity:
    return Identity.from_seed(os.urandom(32))


def test_spans_key_is_the_spec_key() -> None:
    assert spans_key("m") == hashlib.sha256(b"petalproto/spans/v1:m").digest()


def test_model_report_decodes_announcements() -> None:
    someone = _identity()
    records = [
        _announce(_identity(), "m", _span(0, 10)),
        _announce(_identity(), "m", _span(5, 12)),
        _announce(_identity(), "m", _span(20, 30, dtype="bfloat16", quantization="nf4")),
        _announce(_identity(), "m", None),
        _announce(_identity(), "m", {**_span(0, 5), "addr": f"{someone.peer_id}@h:1"}),
        _announce(_identity(), "m", _span(7, 7)),
        _announce(_identity(), "m", {"start": "0"}),
        make_named_record(someone, b"x", {"start": 0}, seq=1, expires=int(time.time()) + 60),
    ]
    report = model_report("m", records)
    assert [(s["start"], s["end"]) for s in report["servers"]] == [(0, 10), (5, 12), (20, 30)]
    assert report["servers"][0]["throughput"] == 12.5
    assert report["covered"] == [[0, 12], [20, 30]]
    assert len(report["withdrawn"]) == 1
    reasons = [m["reason"] for m in report["malformed"]]
    assert len(reasons) == 4
    assert any("another peer" in r for r in reasons)
    assert any("empty span" in r for r in reasons)
    text = render(
        {
            "client": "c" * 52,
            "initial_peers": [],
            "join_s": 0.1,
            "routing_table": [],
            "model": report,
        }
    )
    assert "3 server(s)" in text
    assert "blocks covered: 0:12, 20:30" in text
    assert "gaps: 12:20" in text
    assert "withdrawn:" in text
    # SPEC.md §13.8: the precision is the quantization, else the dtype.
    assert [s["precision"] for s in report["servers"]] == ["float32", "float32", "nf4"]
    assert "precision" in text
    assert "nf4 (bfloat16)" in text


async def test_collect_reports_table_records_and_model() -> None:
    async with swarm(4) as nodes:
        for i, service in enumerate(nodes[:2]):
            await service.put(
                _announce(
                    service.identity,
                    "tiny",
                    _span(i * 4, i * 4 + 4),
                    port=service.listen.port if service.listen else 1,
                )
            )
        named = make_named_record(
            nodes[2].identity, b"n", {"b": b"\x01"}, seq=2, expires=int(time.time()) + 60
        )
        await nodes[2].put(named)
        assert nodes[0].listen is not None
        initial = [nodes[0].listen]

        report = await collect(initial, key=None, model="tiny", ping=True)
        json.dumps(report)
        assert len(report["routing_table"]) == 4
        assert all(c["alive"] and c["rtt_ms"] is not None for c in report["routing_table"])
        assert report["model"]["covered"] == [[0, 8]]
        text = render(report)
        assert "routing table: 4 contacts" in text and "answered dht.ping" in text
        assert "model 'tiny'" in text and "blocks covered: 0:8" in text

        report = await collect(initial, key=named.key, model=None, ping=False)
        assert report["records"][0]["value"] == {"b": "0x01"}
        assert report["records"][0]["name"] == "n"
        assert "alive" not in report["routing_table"][0]
        text = render(report)
        assert "1 record(s)" in text and "named" in text


@pytest.mark.slow
async def test_petal_status_command_prints_json() -> None:
    async with swarm(3) as nodes:
        assert nodes[1].listen is not None
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "petalproto.cli",
                "status",
                "--json",
                "--model",
                "x",
                "--initial-peers",
                str(nodes[1].listen),
            ],
            capture_stdout=True,
        )
    report = json.loads(result.stdout)
    assert len(report["routing_table"]) == 3
    assert report["model"]["servers"] == []


def _status(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    status.add_arguments(parser)
    return status.run(parser.parse_args(argv))


def test_petal_status_names_an_initial_peer_that_is_down() -> None:
    nobody = Address(_identity().peer_id, "127.0.0.1", 9)  # discard: nothing listens
    with pytest.raises(CommandFailed, match=r"cannot reach 127\.0\.0\.1:9"):
        _status("--timeout", "5", "--initial-peers", str(nobody))


def test_petal_status_gives_up_after_its_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    silent = socket.socket()  # accepts (the kernel's backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    with silent:
        mute = Address(_identity().peer_id, "127.0.0.1", silent.getsockname()[1])
        assert _status("--timeout", "0.05", "--initial-peers", str(mute)) == 1
    assert "no answer within 0.05 s" in capsys.readouterr().err


def test_petal_status_checks_the_key() -> None:
    with pytest.raises(SystemExit, match="64 hex digits"):
        _status("--key", "abcd", "--initial-peers", f"{_identity().peer_id}@h:1")
