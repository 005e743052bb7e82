"""Threads and trio: ``LoopThread`` (``petalproto.net``'s trio loop in a background thread,
for synchronous callers such as ``generate()``), and ``run_in_own_thread`` for long torch
work under a loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from petalproto.net._loop import LoopThread

__all__ = ["LoopThread", "run_in_own_thread"]

T = TypeVar("T")


async def run_in_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a new thread that ends with it, and return its result.

    Unlike ``trio.to_thread``, whose idle workers linger for seconds, the thread is gone when
    this returns. That matters for torch on CPU: its OpenMP pool belongs to the thread that
    calls into it, and while a second pool lives libgomp manages more threads than there are
    CPUs and cuts the spinning of both, which makes every later step of the loop's own pool
    markedly slower. The call is not cancellable: it waits for ``fn`` to finish.
    """
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:  # handed to the awaiting task
            error.append(exc)
        finally:
            token.run_sync_soon(done.set)

    threading.Thread(target=target, name="petal-compute", daemon=True).start()
    with trio.CancelScope(shield=True):
        await done.wait()
    if error:
        raise error[0]
    return result[0]
