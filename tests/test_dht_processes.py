"""Twenty real ``petal dht`` processes on loopback: every stored record is found everywhere.

One process starts alone; nineteen join through it.  Then one client per node joins through
that node and stores one record; once all are stored, every client looks up every record,
so each (node, record) pair is tried once.  ``petal status --json`` checks the same network
from the command line.  The figures printed at the end are what the test measured.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import pytest
import trio

from petalproto.core import Address, Identity
from petalproto.core.dht import Record, make_named_record
from petalproto.net import ConnectionPool
from petalproto.net._dht import DhtService

from ._processes import first_line

NODES = 20
_CLI = [sys.executable, "-m", "petalproto.cli"]


@contextmanager
def dht_processes(count: int, log: IO[str]) -> Iterator[list[Address]]:
    """``count`` ``petal dht`` processes; the first is alone, the rest join through it."""
    procs: list[subprocess.Popen[str]] = []

    def spawn(initial: list[str]) -> subprocess.Popen[str]:
        args = [*_CLI, "dht", "--listen", "127.0.0.1:0"]
        if initial:
            args += ["--initial-peers", *initial]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
        procs.append(proc)
        return proc

    try:
        deadline = time.monotonic() + 30
        first = first_line(spawn([]), deadline)
        rest = [spawn([first]) for _ in range(count - 1)]
        yield [Address.parse(first), *(Address.parse(first_line(p, deadline)) for p in rest)]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


async def _client(
    initial: Address,
    index: int,
    records: list[Record],
    all_stored: trio.Event,
    out: dict[str, list[Any]],
) -> None:
    """Join through ``initial``, store record ``index``, wait for the others, get them all."""
    identity = Identity.from_seed(os.urandom(32))
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(nursery, identity)
        service = DhtService(pool, identity, router=None, listen=None, initial_peers=[initial])
        await nursery.start(service.run)
        start = trio.current_time()
        out["stored"].append(await service.put(records[index]))
        out["put_s"].append(trio.current_time() - start)
        out["done"].append(index)
        if len(out["done"]) == len(records):
            all_stored.set()
        await all_stored.wait()
        for record in records:
            start = trio.current_time()
            got = await service.get(record.key)
            out["get_s"].append(trio.current_time() - start)
            out["found"].append(got == [record])
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def _exercise(addresses: list[Address]) -> dict[str, Any]:
    expires = int(time.time()) + 600
    records = [
        make_named_record(
            Identity.from_seed(os.urandom(32)), b"record", {"i": i}, seq=1, expires=expires
        )
        for i in range(len(addresses))
    ]
    out: dict[str, list[Any]] = {"stored": [], "put_s": [], "done": [], "get_s": [], "found": []}
    all_stored = trio.Event()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i, address in enumerate(addresses):
            nursery.start_soon(_client, address, i, records, all_stored, out)
    return {
        "clients_s": round(trio.current_time() - start, 3),
        "stored_min": min(out["stored"]),
        "put_ms_median": round(statistics.median(out["put_s"]) * 1000, 1),
        "gets": len(out["found"]),
        "found": sum(out["found"]),
        "get_ms_median": round(statistics.median(out["get_s"]) * 1000, 1),
        "get_ms_max": round(max(out["get_s"]) * 1000, 1),
        "key": records[0].key.hex(),
    }


@pytest.mark.slow
def test_twenty_processes_find_every_record(tmp_path: object) -> None:
    started = time.monotonic()
    with open(os.devnull, "w") as log, dht_processes(NODES, log) as addresses:
        join_s = time.monotonic() - started
        figures = trio.run(_exercise, addresses)
        status = subprocess.run(
            [
                *_CLI,
                "status",
                "--json",
                "--key",
                str(figures["key"]),
                "--initial-peers",
                str(random.choice(addresses)),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    report = json.loads(status.stdout)
    figures["join_s"] = round(join_s, 3)
    figures["status_contacts"] = len(report["routing_table"])
    figures["total_s"] = round(time.monotonic() - started, 3)
    print(json.dumps(figures))
    assert figures["found"] == figures["gets"] == NODES * NODES
    assert figures["stored_min"] >= 3  # the put quorum (SPEC.md §12.8.3)
    assert len(report["records"]) == 1 and report["records"][0]["value"] == {"i": 0}
    assert figures["status_contacts"] == NODES
    assert all(c["alive"] for c in report["routing_table"])
