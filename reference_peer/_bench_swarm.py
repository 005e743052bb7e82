"""``petal bench swarm``: the default model through N local peer processes, beside plain
transformers generation of the same checkpoint in the same run.

The host's speed drifts while a benchmark runs (other work on the machine, frequency, caches),
by more than the figure measured here. So the local baseline and the swarm are timed in
alternating rounds, in ABBA order (local first in even rounds, the swarm first in odd ones),
and ``ratio`` is the median of the rounds' own ratios: each compares two runs a few seconds
apart. Every round's figures are in the result too.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ._cli import chat_ids
from ._convert import prepare_default_model
from ._local_swarm import LocalSwarm

__all__ = ["run", "summarize"]

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _timed_generate(
    model: Any, ids: torch.Tensor, tokens: int
) -> tuple[torch.Tensor, float, float]:
    """Greedy generation of exactly ``tokens`` tokens: (output, ttft seconds, s/token after)."""
    kwargs = {"do_sample": False, "pad_token_id": 0}
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
    ttft = time.perf_counter() - start
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
    total = time.perf_counter() - start
    # Per-token time excludes the prompt's forward pass, measured separately as ttft.
    return out, ttft, max(total - ttft, 0.0) / max(tokens - 1, 1)


def summarize(local: list[tuple[float, float]], swarm: list[tuple[float, float]]) -> dict[str, Any]:
    """Figures of paired rounds.

    Args:
        local: ``(ttft, seconds per token)`` of each round's local run.
        swarm: the same for the swarm, round by round.

    Returns:
        Medians in milliseconds, the median of the per-round ratios, and each round's ratio.
    """
    ratios = [s[1] / max(loc[1], 1e-12) for loc, s in zip(local, swarm, strict=True)]
    return {
        "local_ms_per_token": round(statistics.median(t for _, t in local) * 1e3, 2),
        "swarm_ms_per_token": round(statistics.median(t for _, t in swarm) * 1e3, 2),
        "ratio": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "ttft_ms": round(statistics.median(t for t, _ in swarm) * 1e3, 1),
        "local_ttft_ms": round(statistics.median(t for t, _ in local) * 1e3, 1),
    }


def limits(local_ms: float, hops: int, delay_ms: float) -> dict[str, float]:
    """What the network costs a token at best, over links delayed ``delay_ms`` one way.

    ``limit_ms_per_token`` is the computation plus one trip around the chain (client, each
    server, back: ``hops + 1`` one-way delays), what servers pushing to each other can reach;
    ``relay_ms_per_token`` is the computation plus a round trip per hop, what a client that
    relays every hop's hidden states can reach.
    """
    return {
        "limit_ms_per_token": round(local_ms + (hops + 1) * delay_ms, 2),
        "relay_ms_per_token": round(local_ms + 2 * hops * delay_ms, 2),
    }


def run(
    peers: int = 3,
    tokens: int = 48,
    rounds: int = 5,
    delay_ms: float = 0.0,
    busy_poll: bool = False,
) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import DistributedModelForCausalLM

    path = prepare_default_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = chat_ids(tokenizer, [{"role": "user", "content": PROMPT}])
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    start = time.perf_counter()
    extra = ["--busy-poll"] if busy_poll else []
    with LocalSwarm(
        path, peers=peers, one_by_one=True, delay_ms=delay_ms, extra_serve_args=extra
    ) as swarm:
        started = time.perf_counter() - start
        model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=[swarm.dht])
        timings: dict[str, list[tuple[float, float]]] = {"local": [], "swarm": []}
        outputs: dict[str, list[torch.Tensor]] = {"local": [], "swarm": []}
        contenders = {"local": local, "swarm": model}
        try:
            with torch.inference_mode():
                for contender in contenders.values():  # warm-up: caches, first sessions
                    _timed_generate(contender, ids, 4)
                for i in range(rounds):
                    for name in ("local", "swarm") if i % 2 == 0 else ("swarm", "local"):
                        out, ttft, per_token = _timed_generate(contenders[name], ids, tokens)
                        outputs[name].append(out)
                        timings[name].append((ttft, per_token))
            hops = len(getattr(model.chain, "route", ()))  # a RemoteChain's spans
        finally:
            model.close()
        peer_start = max(swarm.peer_start_seconds)
    reference = outputs["local"][0]
    figures = summarize(timings["local"], timings["swarm"])
    delayed: dict[str, Any] = {}
    if delay_ms:
        bounds = limits(figures["local_ms_per_token"], hops, delay_ms)
        delayed = {
            "delay_ms": delay_ms,
            "hops": hops,
            **bounds,
            "ratio_to_limit": round(
                figures["swarm_ms_per_token"] / bounds["limit_ms_per_token"], 3
            ),
        }
    return {
        "peers": peers,
        "busy_poll": busy_poll,
        "tokens": tokens,
        "rounds": rounds,
        "prompt_tokens": int(ids.shape[1]),
        **figures,
        **delayed,
        "peer_start_s": round(peer_start, 2),
        "swarm_start_s": round(started, 2),
        "tokens_match": all(
            torch.equal(reference, out) for group in outputs.values() for out in group
        ),
    }
