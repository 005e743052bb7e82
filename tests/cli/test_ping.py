"""``petal ping``: the real command against a real ``petal dht``, and its failure lines
against an in-process peer whose ``ping`` misbehaves on purpose."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from petalproto._commands.ping import ping_all
from petalproto.core import Address, ErrorCode, Identity
from petalproto.net import CallContext, Node, RpcError

from ._support import dht_node, one_error_line, petal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dht() -> Iterator[Address]:
    with dht_node() as address:
        yield address


def test_ping_prints_one_json_line_per_reply(dht: Address) -> None:
    result = petal("ping", str(dht), "--count", "3", "--payload-bytes", "60000")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in replies] == [1, 2, 3]
    for reply in replies:
        assert set(reply) == {"seq", "rtt_ms", "agent", "observed"}
        assert reply["agent"].startswith("petalproto/")
        assert reply["observed"][0] == "127.0.0.1" and isinstance(reply["observed"][1], int)
        assert reply["rtt_ms"] > 0
    # One connection for all calls: the peer saw the same source port each time.
    assert len({tuple(r["observed"]) for r in replies}) == 1


def test_ping_refuses_a_payload_over_the_peers_message_limit(dht: Address) -> None:
    result = petal("ping", str(dht), "--payload-bytes", str(9 << 20))
    assert result.returncode == 2
    assert "--payload-bytes" in one_error_line(result, "ping")


# In process: a peer that RESETs every other ping, or never answers. ------------------------


async def _serve_flaky_ping(
    behaviour: str,
    seen: list[dict[str, Any]],
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    node = Node(Identity.from_seed(os.urandom(32)))

    async def ping(ctx: CallContext, body: Any) -> Any:
        seen.append(body)
        if len(seen) % 2 == 0:
            if behaviour == "reset":
                raise RpcError(ErrorCode.OVERLOADED, "every other one")
            await trio.sleep_forever()
        return {"agent": "flaky/1", "observed": None}

    node.router.unary("ping", ping)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        task_status.started(node)


@pytest.mark.parametrize(
    ("behaviour", "line"),
    [("reset", "seq 2: RESET OVERLOADED: every other one"), ("silent", "seq 2: TIMEOUT")],
)
async def test_a_failed_call_is_one_line_and_the_next_follows(
    behaviour: str, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        node = await nursery.start(_serve_flaky_ping, behaviour, seen)
        failed = await ping_all(node.address, count=3, payload_bytes=10, timeout=0.5)
        nursery.cancel_scope.cancel()
    assert failed == 1
    assert len(seen) == 3 and all(len(body["pad"]) == 10 for body in seen)
    out, err = capsys.readouterr()
    replies = [json.loads(x) for x in out.splitlines()]
    assert [r["seq"] for r in replies] == [1, 3]
    assert {r["agent"] for r in replies} == {"flaky/1"}
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"petal ping: {line}"), err
