"""Our implementation passes the reusable checks in petalproto.testing."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import trio
import trio.testing

from petalproto.core import Config, Connection, Identity, Role, Settings
from petalproto.net import PeerConnection, Stream
from petalproto.testing import _checks


def make_pair() -> tuple[Connection, Connection]:
    config = Config(settings=Settings(stream_window=1 << 16, connection_window=1 << 18))
    a, b = Identity.from_seed(os.urandom(32)), Identity.from_seed(os.urandom(32))
    return (
        Connection(
            Role.INITIATOR,
            identity=a,
            random_bytes=os.urandom,
            config=config,
            expected_peer=b.peer_id,
        ),
        Connection(Role.RESPONDER, identity=b, random_bytes=os.urandom, config=config),
    )


@pytest.mark.parametrize(
    "check",
    [
        _checks.check_handshake,
        _checks.check_request_response,
        _checks.check_byte_at_a_time,
        _checks.check_flow_control,
        _checks.check_garbage_is_fatal,
    ],
)
def test_core_checks(check: Callable[[_checks.MakePair], None]) -> None:
    check(make_pair)


async def _echo(stream: Stream) -> None:
    async for message in stream:
        await stream.send(message)
    await stream.end()


async def make_peers(nursery: trio.Nursery) -> tuple[PeerConnection, PeerConnection]:
    left, right = trio.testing.memory_stream_pair()
    a, b = make_pair()
    pa, pb = PeerConnection(left, a, handler=_echo), PeerConnection(right, b, handler=_echo)
    async with trio.open_nursery() as both:
        both.start_soon(nursery.start, pa.run)
        both.start_soon(nursery.start, pb.run)
    return pa, pb


async def test_shell_checks() -> None:
    await _checks.check_peer_connections(make_peers)
