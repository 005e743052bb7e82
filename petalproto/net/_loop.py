"""A trio event loop in a background thread, for synchronous callers: they call
``LoopThread.run(async_fn, ...)`` and block until it returns (the client model's
``generate()``, the delay proxies of ``petalproto.testing``)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """Runs ``trio.run`` in a daemon thread until ``close``; ``nursery`` hosts background
    tasks (connections) that outlive single calls."""

    def __init__(self, name: str = "petal-loop") -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the constructor or logged by threading
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` in the loop and return its result (or raise its error)."""
        if self._token is None or not self._thread.is_alive():
            raise RuntimeError("the event loop is not running")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` on the loop's thread and return its result."""
        if self._token is None or not self._thread.is_alive():
            raise RuntimeError("the event loop is not running")
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(timeout=5)
