"""``petal bench transport``: handshake time and encrypted throughput on loopback TCP.

The sink runs in a second process, so encryption (here) and decryption (there) use both
cores, as between two real peers.  The baseline is ``cryptography``'s raw
ChaCha20-Poly1305: encrypting and then decrypting the same 1 MiB messages in this process,
in the same run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Any

import trio
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from petalproto.core import Address, Identity
from petalproto.net import CallContext, Node, Stream, open_connection

__all__ = ["measure_aead", "run"]

MIB = 1 << 20


def measure_aead(messages: int = 64, size: int = MIB, rounds: int = 3) -> float:
    """MB/s of raw ChaCha20-Poly1305 encrypt + decrypt of ``size``-byte messages, in
    ``cryptography``: the best of ``rounds``."""
    aead = ChaCha20Poly1305(os.urandom(32))
    data = os.urandom(size)
    nonce = bytes(12)
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(messages):
            aead.decrypt(nonce, aead.encrypt(nonce, data, b""), b"")
        best = max(best, messages * size / (time.perf_counter() - start) / 1e6)
    return best


async def _sink(ctx: CallContext, stream: Stream) -> None:
    total = 0
    async for message in stream:
        total += len(message)
    await stream.send({"bytes": total}, end=True)


async def _serve_sink() -> None:
    node = Node(Identity.from_seed(os.urandom(32)))
    node.router.streaming("bench.sink", _sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        print(node.address, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin
        nursery.cancel_scope.cancel()


async def _measure(
    address: Address, handshakes: int, messages: int, rounds: int = 3
) -> dict[str, float]:
    identity = Identity.from_seed(os.urandom(32))
    times = []
    for _ in range(handshakes):
        start = trio.current_time()
        async with open_connection(address, identity):
            times.append(trio.current_time() - start)
    payload = os.urandom(MIB)
    aead = 0.0
    async with open_connection(address, identity) as peer:
        best = 0.0
        for _ in range(rounds):
            # The baseline is measured between the rounds, so that both see the same
            # machine: on a shared host either alone can be slowed for a while.
            aead = max(aead, measure_aead(messages=32, rounds=1))
            stream = await peer.open_stream("bench.sink")
            start = trio.current_time()
            for _ in range(messages):
                await stream.send(payload)
            await stream.end()
            reply = await stream.receive()
            elapsed = trio.current_time() - start
            assert reply["bytes"] == messages * MIB, reply
            best = max(best, messages * MIB / elapsed / 1e6)
    return {
        "handshake_ms": statistics.median(times) * 1e3,
        "throughput_mb_s": best,
        "aead_mb_s": aead,
    }


def run(handshakes: int = 50, messages: int = 128) -> dict[str, Any]:
    """Run the benchmark; returns the JSON object ``petal bench transport`` prints."""
    sink = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import petalproto._bench_transport as b, trio; trio.run(b._serve_sink)",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        address = Address.parse(sink.stdout.readline())
        figures = trio.run(_measure, address, handshakes, messages)
    finally:
        if sink.stdin:
            sink.stdin.close()
        try:
            sink.wait(timeout=5)
        except subprocess.TimeoutExpired:
            sink.kill()
    aead = max(figures["aead_mb_s"], measure_aead())
    return {
        "handshake_ms": round(figures["handshake_ms"], 3),
        "throughput_mb_s": round(figures["throughput_mb_s"], 1),
        "aead_mb_s": round(aead, 1),
        "ratio": round(figures["throughput_mb_s"] / aead, 3),
        "message_bytes": MIB,
        "messages": messages,
        "handshakes": handshakes,
    }
