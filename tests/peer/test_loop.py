"""``run_in_own_thread``: results, errors, and a thread that ends with the call."""

from __future__ import annotations

import threading

import pytest
import trio

from reference_peer._loop import run_in_own_thread


async def test_returns_the_result_from_another_thread_that_then_ends() -> None:
    here = threading.get_ident()
    seen: list[threading.Thread] = []

    def work(a: int, b: int) -> int:
        seen.append(threading.current_thread())
        return a + b

    assert await run_in_own_thread(work, 2, 3) == 5
    assert seen[0].ident != here
    seen[0].join(timeout=5)
    assert not seen[0].is_alive()


async def test_raises_what_the_function_raised() -> None:
    def fail() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await run_in_own_thread(fail)


async def test_is_not_cancelled_half_way() -> None:
    done = threading.Event()

    def slow() -> str:
        done.wait(5)
        return "finished"

    with trio.CancelScope() as scope:
        scope.cancel()
        trio.lowlevel.current_trio_token().run_sync_soon(done.set)
        result = await run_in_own_thread(slow)
    assert result == "finished"
