"""``petal bench faults``: what a peer's crash, a peer's hang and a churning swarm cost a
client, with real processes (every span served twice) and real signals.

Scenarios, in one swarm, each against the greedy tokens of local transformers on the same
checkpoint:

- **kill**: the peer serving the middle span of the chain in use is SIGKILLed right after a
  token; ``kill_recovery_ms`` is the time from that token to the next one (the client sees
  the connection close, plans the other copy, replays the span's inputs).
- **stall**: the same peer is SIGSTOPped instead: its connections stay open and silent;
  ``stall_recovery_ms`` likewise (the client gives it up when health pings go unanswered).
- **hung while opening**: one copy of the first span is SIGSTOPped while its announcement is
  still in the DHT, and a fresh client starts: ``hung_open_ttft_ms`` against ``ttft_ms``.
- **churn**: ``generations`` generations back to back while a peer whose span has another
  live copy is SIGKILLed and a new one started on its blocks, at once and then
  ``churn_period`` seconds after each restart;
  ``churn_completed`` of ``churn_total`` finished with the undisturbed tokens.

``normal_ms_per_token`` is the median time between tokens without faults, the baseline of
the recovery figures (a recovery costs at least one normal token).
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._local_swarm import LocalSwarm

__all__ = ["run"]

PROMPT = "Tell me about lighthouses."


class _Clock:
    """Wraps a chain's ``step``: the time each step (each token) returned, and a hook that
    runs right after step ``at`` returned."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain
        self.times: list[float] = []
        self.hook: tuple[int, Callable[[], None]] | None = None
        real = chain.step

        def step(*args: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = real(*args)
            self.times.append(time.perf_counter())
            if self.hook is not None and len(self.times) == self.hook[0]:
                self.hook[1]()
            return out

        chain.step = step

    def reset(self, hook: tuple[int, Callable[[], None]] | None = None) -> None:
        self.times, self.hook = [], hook

    def gap_after(self, step: int) -> float:
        """Seconds from step ``step`` (1-based) to the next one."""
        return self.times[step] - self.times[step - 1]

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def _middle(chain: Any) -> Any:
    route = chain.route
    return route[len(route) // 2].address


def _restarts(
    swarm: LocalSwarm, stop: threading.Event, period: float, seed: int, log: list[str]
) -> None:
    """Kill and restart peers whose span has another live copy, one at a time."""
    rng = random.Random(seed)
    wait = 0.0  # the first kill at once, while the first generation runs
    while not stop.wait(wait):
        wait = period
        spans = [span for _, span in swarm.servers]
        doubled = [a for a, span in swarm.servers if spans.count(span) > 1]
        if not doubled:
            continue
        victim = rng.choice(doubled)
        try:
            fresh = swarm.restart(victim)
            log.append(f"restarted {victim.peer_id.short()} as {fresh.peer_id.short()}")
        except (RuntimeError, TimeoutError) as exc:  # pragma: no cover - a peer that won't start
            log.append(f"restart failed: {exc}")


@dataclass
class _Job:
    """What every scenario generates, and what it must give."""

    ids: torch.Tensor
    kwargs: dict[str, Any]
    expected: torch.Tensor
    fault_at: int
    matches: list[bool] = field(default_factory=list)

    def generate(self, model: Any, **changes: Any) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model.generate(self.ids, **{**self.kwargs, **changes})
        return out

    def check(self, model: Any) -> None:
        self.matches.append(torch.equal(self.generate(model), self.expected))


def run(
    path: Path | None = None,
    *,
    ids: torch.Tensor | None = None,
    spans: list[tuple[int, int]] | None = None,
    tokens: int = 24,
    generations: int = 20,
    churn_tokens: int = 12,
    churn_period: float = 3.0,
    fault_at: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Run every scenario; ``path`` is the checkpoint (the default model when None), ``ids``
    the prompt (its chat template's, by default), ``spans`` the blocks of one copy of the
    model (each is served twice)."""
    from transformers import AutoModelForCausalLM

    from . import DistributedModelForCausalLM
    from ._arch import load_config, num_layers
    from ._local_swarm import split_blocks

    if path is None:
        path, ids = _default_model(ids)
    assert ids is not None, "give the prompt's ids with a checkpoint of your own"
    if spans is None:
        spans = split_blocks(num_layers(load_config(str(path))), 3)
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    kwargs = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
    kwargs["pad_token_id"] = 0
    job = _Job(ids, kwargs, torch.empty(0), fault_at)
    job.expected = job.generate(local)
    figures: dict[str, Any] = {"tokens": tokens, "fault_at": fault_at, "spans": len(spans)}
    with LocalSwarm(path, spans=spans + spans) as swarm:

        def client() -> Any:
            return DistributedModelForCausalLM.from_pretrained(path, initial_peers=[swarm.dht])

        figures.update(_kill_and_stall(swarm, client(), job))
        figures.update(_hung_open(swarm, client(), job, spans[0]))
        churn = _Job(ids, {**kwargs, "max_new_tokens": churn_tokens}, torch.empty(0), 0)
        churn.kwargs["min_new_tokens"] = churn_tokens
        churn.expected = job.expected[:, : ids.shape[1] + churn_tokens]
        figures.update(
            _churn(swarm, client(), churn, generations=generations, period=churn_period, seed=seed)
        )
    figures["tokens_match"] = all(job.matches) and all(churn.matches)
    return figures


def _default_model(ids: torch.Tensor | None) -> tuple[Path, torch.Tensor]:
    from transformers import AutoTokenizer

    from ._cli import chat_ids
    from ._convert import prepare_default_model

    path = prepare_default_model()
    if ids is None:
        tokenizer = AutoTokenizer.from_pretrained(path)
        ids = chat_ids(tokenizer, [{"role": "user", "content": PROMPT}])
    return path, ids


def _kill_and_stall(swarm: LocalSwarm, model: Any, job: _Job) -> dict[str, Any]:
    """The undisturbed figures, then a SIGKILL and a SIGSTOP of the middle span's peer."""
    figures: dict[str, Any] = {}
    clock = _Clock(model.chain)
    try:
        job.generate(model, max_new_tokens=4, min_new_tokens=4)  # warm-up
        clock.reset()
        start = time.perf_counter()
        job.check(model)
        figures["ttft_ms"] = round((clock.times[0] - start) * 1e3, 1)
        figures["normal_ms_per_token"] = round(statistics.median(clock.gaps()) * 1e3, 1)
        for name, fault, undo in (
            ("kill", swarm.kill, swarm.restart),
            ("stall", swarm.pause, swarm.unpause),
        ):
            hit: list[Any] = []

            def inject(fault: Callable[[Any], None] = fault, hit: list[Any] = hit) -> None:
                hit.append(_middle(model.chain))
                fault(hit[0])

            clock.reset((job.fault_at, inject))
            job.check(model)
            figures[f"{name}_recovery_ms"] = round(clock.gap_after(job.fault_at) * 1e3, 1)
            undo(hit[0])
        figures["recoveries"] = model.chain.recoveries
    finally:
        model.close()
    return figures


def _hung_open(swarm: LocalSwarm, model: Any, job: _Job, span: tuple[int, int]) -> dict[str, Any]:
    """A fresh client while one copy of ``span`` hangs with its record in the DHT: the time
    to its first token."""
    hung = next(a for a, served in swarm.servers if served == span)
    swarm.pause(hung)
    try:
        clock = _Clock(model.chain)
        start = time.perf_counter()
        job.check(model)
        return {"hung_open_ttft_ms": round((clock.times[0] - start) * 1e3, 1)}
    finally:
        model.close()
        swarm.unpause(hung)


def _churn(
    swarm: LocalSwarm, model: Any, job: _Job, *, generations: int, period: float, seed: int
) -> dict[str, Any]:
    stop, log = threading.Event(), list[str]()
    churner = threading.Thread(target=_restarts, args=(swarm, stop, period, seed, log))
    failed, errors = 0, []
    try:
        churner.start()
        for _ in range(generations):
            try:
                job.check(model)
            except Exception as exc:  # a failed generation is a figure, not a crash
                failed += 1
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
    finally:
        stop.set()
        churner.join()
        recoveries = model.chain.recoveries
        model.close()
    return {
        "churn_total": generations,
        "churn_completed": sum(job.matches),
        "churn_failed": failed,
        "churn_restarts": len(log),
        "churn_recoveries": recoveries,
        "churn_errors": errors[:3],
    }
