"""Rebalancing (reference_peer._rebalance, SPEC.md §13.10): a serving peer moves its span where
the swarm is thin, after draining its sessions.

In process: a real server on real loopback TCP, a real client stream, a swarm view given by
the test.  The server with an open session stops accepting (new sessions hear
TOO_MANY_SESSIONS), keeps serving the open one, and moves only when it ends (or the drain
timeout passes: then the open session finishes on the old blocks).

With real processes: a DHT node and peers A = 0:3, B = 0:3 (rebalancing every second) and
C = 3:6 of a tiny model.  C is killed; once its announcement expires blocks 3..6 have no
server, and B, idle, moves there; a client then generates through A and B the tokens of
local transformers.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from petalproto.core import Address, ErrorCode, Identity
from petalproto.core._route import SpanInfo
from petalproto.core.dht import parse_record
from petalproto.net import ConnectionPool, Node, Stream, StreamReset
from reference_peer import DistributedModelForCausalLM, SpanModel
from reference_peer._announce import spans_from_records, spans_key
from reference_peer._local_swarm import LocalSwarm
from reference_peer._rebalance import Announcements, CannotLoad, keep_balanced, rebalance
from reference_peer._server import PeerServer
from reference_peer._tensors import tensor_from_wire, tensor_to_wire

from .tiny import HIDDEN, LAYERS, local_greedy

pytestmark = [pytest.mark.model, pytest.mark.slow]

HALF = LAYERS // 2
#: Another server of blocks 0..HALF, as the swarm view of the in-process tests shows it.
TWIN = SpanInfo(
    Address(Identity.from_seed(b"t" * 32).peer_id, "127.0.0.1", 9), "tiny", 0, HALF, 100.0
)


# --------------------------------------------------------------------------- in process


@dataclass
class Served:
    """A server of blocks 0..HALF, its announcements as a list of what happened, and a
    client pool."""

    server: PeerServer
    address: Address
    announcements: Announcements
    pool: ConnectionPool
    nursery: trio.Nursery
    events: list[Any] = field(default_factory=list)

    async def session(self, start: int, end: int) -> Stream:
        peer = await self.pool.get(self.address)
        stream = await peer.open_stream("inference.session")
        await stream.send(
            {"model": "tiny", "start": start, "end": end, "batch": 1, "max_length": 8}
        )
        return stream

    def moving(self, **kwargs: Any) -> trio.Event:
        """Start ``rebalance`` with a swarm of TWIN and us; the event is set when it ends."""
        done = trio.Event()
        kwargs = {
            "total": LAYERS,
            "read_spans": self.view,
            "announcements": self.announcements,
            "load": self.load,
            **kwargs,
        }

        async def run() -> None:
            self.events.append(("moved", await rebalance(self.server, self.address, **kwargs)))
            done.set()

        self.nursery.start_soon(run)
        return done

    async def view(self) -> list[SpanInfo]:
        return [TWIN]

    def load(self, start: int, end: int) -> SpanModel:
        return SpanModel(self.server.span.path, start, end, device="cpu")


def _inputs(past: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A step's hidden states (the same for every ``past``), mask and positions."""
    hidden = torch.randn(1, 1, HIDDEN, generator=torch.Generator().manual_seed(past))
    return hidden, torch.ones(1, past + 1, dtype=torch.long), torch.tensor([[past]])


async def _step(stream: Stream, past: int) -> torch.Tensor:
    await stream.send(dict(zip(_STEP, map(tensor_to_wire, _inputs(past)), strict=True)))
    return tensor_from_wire((await stream.receive())["hidden"], max_bytes=1 << 20)


_STEP = ("hidden", "attention_mask", "position_ids")


@asynccontextmanager
async def _served(path: Path) -> AsyncIterator[Served]:
    server = PeerServer(SpanModel(path, 0, HALF, device="cpu"), "tiny", throughput=100.0)
    node = Node(Identity.from_seed(os.urandom(32)))
    server.register(node.router)
    events: list[Any] = []

    async def keep(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        events.append(("announce", server.span.start, server.span.end))
        task_status.started()
        await trio.sleep_forever()

    async def withdraw() -> None:
        events.append("withdraw")

    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        announcements = Announcements(nursery, keep, withdraw)
        await announcements.start()
        pool = ConnectionPool(nursery, Identity.from_seed(os.urandom(32)))
        yield Served(server, node.address, announcements, pool, nursery, events)
        await pool.aclose()
        nursery.cancel_scope.cancel()


def _blocks(server: PeerServer) -> tuple[int, int]:
    return server.span.start, server.span.end


async def test_a_moving_server_refuses_new_sessions_and_moves_when_the_open_one_ends(
    tiny_checkpoint: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reference_peer.rebalance")
    async with _served(tiny_checkpoint("llama")) as s:
        stream = await s.session(0, HALF)
        await _step(stream, 0)
        assert s.server.sessions == 1
        old = weakref.ref(s.server.span)
        done = s.moving()
        await trio.testing.wait_all_tasks_blocked()
        assert not s.server.accepting  # draining
        late = await s.session(0, HALF)
        with pytest.raises(StreamReset) as refused:
            await late.receive()
        assert refused.value.code == ErrorCode.TOO_MANY_SESSIONS
        assert "moving to other blocks" in refused.value.reason
        await _step(stream, 1)  # the open session is served as before
        assert _blocks(s.server) == (0, HALF) and s.events == [("announce", 0, HALF)]
        await stream.end()
        with pytest.raises(trio.EndOfChannel):
            await stream.receive()
        with trio.fail_after(30):
            await done.wait()
        assert s.events == [
            ("announce", 0, HALF),
            "withdraw",
            ("announce", HALF, LAYERS),
            ("moved", True),
        ]
        assert s.server.accepting
        assert _blocks(s.server) == (HALF, LAYERS)
        assert s.server.throughput > 0
        assert old() is None  # the old span's memory is free
        assert f"moving from blocks 0:{HALF} to {HALF}:{LAYERS}: min throughput 0.0 → 100.0" in (
            caplog.text
        )
        assert "waiting up to 60 s for 1 open sessions to end" in caplog.text
        fresh = await s.session(HALF, LAYERS)
        assert (await _step(fresh, 0)).shape == (1, 1, HIDDEN)
        await fresh.end()


async def test_a_session_that_outlives_the_drain_finishes_on_the_old_blocks(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    path = tiny_checkpoint("llama")
    with SpanModel(path, 0, HALF, device="cpu").open_session(1, 8) as local:
        expected = [local.step(*_inputs(past)) for past in (0, 1)]
    async with _served(path) as s:
        stream = await s.session(0, HALF)
        assert torch.equal(await _step(stream, 0), expected[0])
        with trio.fail_after(30):
            await s.moving(drain_timeout=0.2).wait()
        assert s.events[-1] == ("moved", True) and _blocks(s.server) == (HALF, LAYERS)
        assert s.server.accepting and s.server.sessions == 1
        again = await s.session(0, HALF)
        with pytest.raises(StreamReset) as wrong:
            await again.receive()
        assert wrong.value.code == ErrorCode.WRONG_SPAN
        # The open session still computes blocks 0..HALF, with its cache.
        assert torch.equal(await _step(stream, 1), expected[1])
        await stream.end()


async def test_no_move_when_the_swarm_changed_while_draining_or_the_span_fails_to_load(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    async with _served(tiny_checkpoint("llama")) as s:
        other = Address(Identity.from_seed(b"o" * 32).peer_id, "127.0.0.1", 10)
        views = [[TWIN], [TWIN, SpanInfo(other, "tiny", HALF, LAYERS, 100.0)]]

        async def changing() -> list[SpanInfo]:
            return views.pop(0)  # a second server filled the gap meanwhile

        with trio.fail_after(30):
            await s.moving(read_spans=changing).wait()
        assert s.events[-1] == ("moved", False) and s.server.accepting
        assert "withdraw" not in s.events and _blocks(s.server) == (0, HALF)

        def broken(start: int, end: int) -> SpanModel:
            raise RuntimeError("CUDA out of memory")

        with pytest.raises(CannotLoad, match="RuntimeError: CUDA out of memory"):
            await rebalance(
                s.server,
                s.address,
                total=LAYERS,
                read_spans=s.view,
                announcements=s.announcements,
                load=broken,
            )
        assert s.events[-2:] == ["withdraw", ("announce", 0, HALF)]  # announced again
        assert s.server.accepting and _blocks(s.server) == (0, HALF)


async def test_the_loop_survives_a_failed_check_and_stops_after_a_failed_load(
    tiny_checkpoint: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _served(tiny_checkpoint("llama")) as s:
        checks = 0

        async def flaky() -> list[SpanInfo]:
            nonlocal checks
            checks += 1
            if checks == 1:
                raise trio.TooSlowError
            return [TWIN]

        def broken(start: int, end: int) -> SpanModel:
            raise OSError("no space left")

        kwargs: dict[str, Any] = {
            "total": LAYERS,
            "read_spans": flaky,
            "announcements": s.announcements,
            "load": broken,
        }
        # A real clock: the (failing) load runs in a thread, which a mock clock would not
        # wait for before it jumped to the next deadline.
        with trio.fail_after(30):
            await keep_balanced(s.server, s.address, period=0.01, **kwargs)
        assert checks == 3  # failed, then moved (twice: before and after draining)
        assert "rebalancing check failed: TooSlowError()" in caplog.text
        assert "rebalancing stops: cannot load another span next to blocks 0:3" in caplog.text


# --------------------------------------------------------------------------- processes


async def _ask(dht: Address, peer: Address, model: str) -> tuple[Any, list[SpanInfo]]:
    """``peer``'s ``peer.info``, and the live announcements the DHT node stores."""
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(nursery, Identity.from_seed(os.urandom(32)))
        body = await pool.call(dht, "dht.get", {"key": spans_key(model)}, timeout=10)
        info = await pool.call(peer, "peer.info", {}, timeout=10)  # newer than the DHT's
        await pool.aclose()
        nursery.cancel_scope.cancel()
    now = time.time()
    records = [r for r in map(parse_record, body["records"]) if r.expires > now]
    return info, spans_from_records(records, model)


def _logs(*swarms: LocalSwarm) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for swarm in swarms
        for log in sorted(swarm._dir.glob("*.log"))
    )


def test_an_idle_server_moves_to_blocks_nobody_serves(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    path = tiny_checkpoint("llama")
    ids, kwargs, expected = local_greedy(path, 8)
    short = ["--announce-interval", "1", "--announce-lifetime", "3"]
    fixed = LocalSwarm(
        path, model_name="tiny", spans=[(0, HALF), (HALF, LAYERS)], extra_serve_args=short
    )
    with fixed:
        assert fixed.dht is not None
        (a, _), (c, _) = fixed.servers
        mover = LocalSwarm(
            path,
            model_name="tiny",
            spans=[(0, HALF)],
            join=fixed.dht,
            extra_serve_args=["--rebalance-period", "1"],
        )
        with mover:
            (b, _), started = mover.servers[0], time.monotonic()
            fixed.kill(c)
            deadline = started + 60
            while True:
                info, spans = trio.run(_ask, fixed.dht, b, "tiny")
                served = {(s.address, s.start, s.end) for s in spans}
                if served == {(a, 0, HALF), (b, HALF, LAYERS)}:
                    break
                assert time.monotonic() < deadline, f"{served}\n{_logs(fixed, mover)}"
                time.sleep(0.5)
            assert (info["start"], info["end"]) == (HALF, LAYERS)
            moved_after = time.monotonic() - started
            model = DistributedModelForCausalLM.from_pretrained(
                path, initial_peers=[fixed.dht], model_name="tiny"
            )
            try:
                assert torch.equal(model.generate(ids, **kwargs), expected)
                chain: Any = model.chain
                assert [(s.address, s.start) for s in chain.route] == [(a, 0), (b, HALF)]
            finally:
                model.close()
            assert mover.stop_peer(b) == 0  # SIGTERM ends the rebalancing loop too
    print(f"\nB moved {moved_after:.1f} s after C was killed")
