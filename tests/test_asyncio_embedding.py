"""The sans-IO core embedded in asyncio, talking to a real ``petal dht`` process.

This is the whole of an asyncio shell for one unary call: no trio anywhere on this side.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from petalproto.core import (
    Address,
    Connection,
    HandshakeCompleted,
    Identity,
    Message,
    Open,
    Reset,
    Role,
)


@pytest.fixture(scope="module")
def dht_address() -> Iterator[Address]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "petalproto.cli", "dht", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield Address.parse(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def asyncio_call(address: Address, method: str, body: Any) -> Any:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(address.host, address.port)
    conn = Connection(
        Role.INITIATOR,
        identity=Identity.from_seed(os.urandom(32)),
        random_bytes=os.urandom,
        expected_peer=address.peer_id,
    )
    conn.start(loop.time())

    async def pump() -> list[object]:
        writer.write(conn.data_to_send())
        await writer.drain()
        data = await reader.read(65536)
        return list(conn.receive_data(data, loop.time()))

    events = await pump()
    while not any(isinstance(e, HandshakeCompleted) for e in events):
        events += await pump()
    stream_id = conn.next_stream_id()
    conn.send(Open(stream_id=stream_id, method=method), loop.time())
    conn.send(Message(stream_id=stream_id, body=body, end_stream=True), loop.time())
    while True:
        for event in await pump():
            if isinstance(event, Message) and event.stream_id == stream_id:
                writer.close()
                return event.body
            if isinstance(event, Reset):
                writer.close()
                raise RuntimeError(event.code.name)


@pytest.mark.slow
def test_asyncio_client_pings_a_trio_node(dht_address: Address) -> None:
    answer = asyncio.run(asyncio_call(dht_address, "ping", {}))
    assert answer["agent"].startswith("petalproto/")


@pytest.mark.slow
def test_asyncio_client_sees_unknown_method(dht_address: Address) -> None:
    with pytest.raises(RuntimeError, match="UNKNOWN_METHOD"):
        asyncio.run(asyncio_call(dht_address, "no.such.method", {}))
