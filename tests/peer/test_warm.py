"""``--busy-poll`` (reference_peer._warm): idle-priority spinners that run only while the
server holds a session, and die with it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

import reference_peer._warm as warm
from reference_peer._warm import Spinners, keep_warm


def _state(pid: int) -> str:
    """The process state letter of /proc/PID/stat (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_spinners_are_idle_priority_and_stop_and_go() -> None:
    spinners = Spinners(2)
    with spinners.started():
        pids = [p.pid for p in spinners._procs]
        _wait_for(lambda: all(_state(pid) == "T" for pid in pids))
        spinners.resume()
        _wait_for(lambda: all(_state(pid) in "RS" for pid in pids))
        _wait_for(lambda: all(os.sched_getscheduler(pid) == os.SCHED_IDLE for pid in pids))
        spinners.pause()
        _wait_for(lambda: all(_state(pid) == "T" for pid in pids))
    assert all(not Path(f"/proc/{pid}").exists() or _state(pid) == "Z" for pid in pids)


async def _eventually(check: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not check():  # noqa: ASYNC110 - an attribute that keep_warm sets, no event
            await trio.sleep(0.01)


async def test_keep_warm_follows_the_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warm, "LINGER", 0.1)
    server = SimpleNamespace(sessions=0)
    spinners = Spinners(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_warm, server, spinners)
        await trio.sleep(0.2)
        assert not spinners.running
        server.sessions = 1
        await _eventually(lambda: spinners.running)
        server.sessions = 0
        await _eventually(lambda: not spinners.running)
        nursery.cancel_scope.cancel()
    assert spinners._procs == []
