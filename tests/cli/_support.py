"""Running the real ``petal`` command in a subprocess, and a ``petal dht`` to talk to."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from petalproto.core import Address, Identity

ROOT = Path(__file__).resolve().parents[2]
#: The command, run from this checkout whatever is installed.
PETAL = [sys.executable, "-m", "petalproto.cli"]
#: A valid peer id that no process here holds.
NOBODY = str(Identity.from_seed(bytes(32)).peer_id)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def petal(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``petal ARGS`` to its end."""
    return subprocess.run(
        [*PETAL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The single line a failed command printed on stderr, checked for its form.

    Raises:
        AssertionError: more or less than one line, a traceback, or another prefix.
    """
    err = result.stderr
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"petal {command}: error: "), lines[0]
    return lines[0]


def read_line(proc: subprocess.Popen[str], stream: str, deadline: float) -> str:
    """The next line of the process's stdout or stderr, or "" at its end.

    Raises:
        AssertionError: no line before ``deadline`` (``time.monotonic()``).
    """
    pipe = getattr(proc, stream)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line on {stream} in time")
        ready, _, _ = select.select([pipe], [], [], left)
        if ready:
            line: str = pipe.readline()
            return line


@contextmanager
def running(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``petal ARGS`` running in the background, stopped at the end."""
    proc = subprocess.Popen(
        [*PETAL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env(),
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@contextmanager
def dht_node() -> Iterator[Address]:
    """A real ``petal dht`` on loopback; yields its address."""
    with running("dht", "--listen", "127.0.0.1:0") as proc:
        line = read_line(proc, "stdout", time.monotonic() + 30)
        assert line, f"petal dht exited with {proc.wait()}"
        yield Address.parse(line.strip())
