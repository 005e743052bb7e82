"""A serving peer's announcement survives a conformance run against it (SPEC.md §12.8.3).

Real processes: a ``petal dht`` node and a ``petal serve`` of a tiny model joined through
it, refreshing its announcement every second and letting it expire after a few.  The
conformance suite's §12 cases then run against the serving peer; they ping it from dozens
of fresh identities that name listening ports where nothing listens, so its routing table
fills with dead contacts near every key.  Before the fix its refreshes went only to those,
stored the record in its own store, and called that success: the DHT node's copy expired
and the SIGTERM withdrawal never reached it.  Now the DHT node must hold a live
announcement past the original expiry, then the withdrawal after SIGTERM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import trio

from petalproto.core import Address, Identity
from petalproto.core.dht import Record, parse_record
from petalproto.net import ConnectionPool
from reference_peer._announce import spans_key

from .._processes import first_line

pytestmark = [pytest.mark.slow, pytest.mark.model]

_CLI = [sys.executable, "-m", "petalproto.cli"]
#: Seconds between refreshes, and an announcement's lifetime: the run of the §12 cases
#: (about 10 s here) outlasts the first announcement.
INTERVAL, LIFETIME = 1, 6


@contextmanager
def _process(args: list[str], log: IO[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([*_CLI, "-v", *args], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _held(node: Address, model: str) -> list[Record]:
    """The announcements ``node`` itself stores under the model's key (no lookup)."""

    async def ask() -> Any:
        async with trio.open_nursery() as nursery:
            pool = ConnectionPool(nursery, Identity.from_seed(os.urandom(32)))
            body = await pool.call(node, "dht.get", {"key": spans_key(model)}, timeout=10)
            await pool.aclose()
            nursery.cancel_scope.cancel()
        return body

    body = trio.run(ask)
    return [parse_record(raw) for raw in body["records"]]


def _live(records: list[Record], publisher: Address) -> list[Record]:
    now = time.time()
    return [r for r in records if r.publisher == publisher.peer_id and r.expires > now]


def test_announcement_outlives_conformance_run_and_withdrawal_arrives(
    tiny_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    model = tiny_checkpoint("llama")
    deadline = time.monotonic() + 60
    with (
        (tmp_path / "dht.log").open("w") as dht_log,
        (tmp_path / "serve.log").open("w") as serve_log,
        _process(["dht", "--listen", "127.0.0.1:0"], dht_log) as dht,
    ):
        node = Address.parse(first_line(dht, deadline))
        serve_args = ["serve", "--model", str(model), "--model-name", "tiny", "--blocks", "0:6"]
        serve_args += ["--device", "cpu", "--listen", "127.0.0.1:0", "--no-progress"]
        serve_args += ["--initial-peers", str(node)]
        serve_args += ["--announce-interval", str(INTERVAL), "--announce-lifetime", str(LIFETIME)]
        with _process(serve_args, serve_log) as serve:
            peer = Address.parse(first_line(serve, deadline))
            first = _live(_held(node, "tiny"), peer)
            assert first and first[0].value is not None
            started = time.monotonic()
            cases = ["conformance.runner", "--target", str(peer), "--cases", "12.*"]
            run = subprocess.run(
                [sys.executable, "-m", *cases],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert run.stdout.strip().endswith(" 0 failed"), run.stdout[-2000:]
            conformance_s = time.monotonic() - started
            # Past the first announcement's expiry, the node must keep a live copy.
            while time.time() < first[0].expires + 2 * LIFETIME:
                live = _live(_held(node, "tiny"), peer)
                assert live and live[0].value is not None, "the announcement expired"
                time.sleep(INTERVAL)
            refreshed = live[0]
            assert refreshed.seq > first[0].seq
            serve.terminate()
            assert serve.wait(timeout=30) == 0
        [gone] = _live(_held(node, "tiny"), peer)
        assert gone.value is None and gone.seq > refreshed.seq  # the withdrawal
    log = (tmp_path / "serve.log").read_text()
    assert "announcement withdrawn (1 nodes)" in log
    assert "reference_peer.announce WARNING" not in log, log[-3000:]
    print(f"\nthe §12 cases ran {conformance_s:.1f} s; the announcement stayed live")
