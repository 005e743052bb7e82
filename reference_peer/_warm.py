"""``petal serve --busy-poll``: keep the host's cores out of idle states while sessions are open.

Why. Between two steps of a session a server waits for the next token's hidden states: a
round trip around the chain, tens of milliseconds over a WAN. Many hosts (virtual machines
above all) let an idle core drop to a low-power state or a low clock, and the next step then
computes at a fraction of full speed: on the machine this was measured on, one step of ten
blocks of the default model took 10 ms back to back and 21 ms after 150 ms of idleness,
which doubled what a WAN swarm spends computing. Kernels offer ``idle=poll`` and tuned's
``latency-performance`` profile for this; an operator who cannot change the host gets the
same from this option.

How. One spinner process per core, at ``SCHED_IDLE``: the kernel runs them only when no
other thread wants the core, so they never take time from the server's own computation (or
anyone's); they keep the cores busy, so the clock stays up. They are stopped (SIGSTOP) while
the server holds no session and resumed (SIGCONT) when one opens, and each exits when its
parent does. This costs power, never latency: leave it off on GPU hosts and on hosts whose
cores do not slow down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import trio

__all__ = ["Spinners", "keep_warm"]

log = logging.getLogger("reference_peer.warm")

#: Seconds between looks at the server's session count.
POLL = 0.05
#: Seconds without a session before the spinners stop.
LINGER = 2.0

#: The spinner: SIGKILLed when its parent dies (PR_SET_PDEATHSIG, so even while stopped),
#: and exits by itself if it finds itself orphaned first.
_SPIN = """
import ctypes, os, sys
ctypes.CDLL(None).prctl(1, 9)
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(100000):
        pass
"""


class Spinners:
    """``count`` SCHED_IDLE busy loops, stopped until ``resume``."""

    def __init__(self, count: int | None = None) -> None:
        self.count = count or os.cpu_count() or 1
        self._procs: list[subprocess.Popen[bytes]] = []
        self.running = False

    def start(self) -> None:
        for _ in range(self.count):
            proc = subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid())])
            proc.send_signal(signal.SIGSTOP)
            self._procs.append(proc)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.running = True

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.running = False

    def _signal(self, sig: int) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def close(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()
        self._procs.clear()
        self.running = False

    @contextlib.contextmanager
    def started(self) -> Iterator[Spinners]:
        self.start()
        try:
            yield self
        finally:
            self.close()


async def keep_warm(server: Any, spinners: Spinners | None = None) -> None:
    """Run spinners while ``server`` (anything with a ``sessions`` count) holds a session
    and for ``LINGER`` seconds after; runs until cancelled."""
    spinners = spinners or Spinners()
    log.info("busy-polling %d cores while sessions are open", spinners.count)
    with spinners.started():
        idle_since: float | None = None
        while True:
            now = trio.current_time()
            if server.sessions > 0:
                idle_since = None
                if not spinners.running:
                    spinners.resume()
            elif spinners.running:
                idle_since = now if idle_since is None else idle_since
                if now - idle_since >= LINGER:
                    spinners.pause()
            await trio.sleep(POLL)
