"""Helpers for tests that run real ``petal`` processes."""

from __future__ import annotations

import select
import subprocess
import time


def first_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The first line of a process's stdout (its address), without blocking past
    ``deadline`` (``time.monotonic()``).

    Raises:
        AssertionError: the process ended, or printed nothing, before ``deadline``.
    """
    stdout = proc.stdout
    assert stdout is not None
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([stdout], [], [], max(left, 0))
        if ready:
            line = stdout.readline()
            if not line:
                raise AssertionError(f"{proc.args!r} exited with {proc.wait()} before its address")
            return line.strip()
        if left <= 0:
            raise AssertionError(f"{proc.args!r} printed no address in time")
