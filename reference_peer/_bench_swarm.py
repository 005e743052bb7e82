"""``petal bench swarm``: the default model through N local peer processes, beside plain
transformers generation of the same checkpoint in the same run."""

from __future__ import annotations

import time
from typing import Any

import torch

from ._cli import chat_ids
from ._convert import prepare_default_model
from ._local_swarm import LocalSwarm

__all__ = ["run"]

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


def run(peers: int = 3, tokens: int = 48) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import DistributedModelForCausalLM

    path = prepare_default_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = chat_ids(tokenizer, [{"role": "user", "content": PROMPT}])
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    with torch.inference_mode():
        _timed_generate(local, ids, 4)  # warm-up
        local_out, local_ttft, local_tok = _timed_generate(local, ids, tokens)
    del local
    start = time.perf_counter()
    with LocalSwarm(path, peers=peers, one_by_one=True) as swarm:
        started = time.perf_counter() - start
        model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=[swarm.dht])
        try:
            with torch.inference_mode():
                _timed_generate(model, ids, 4)  # warm-up: connections, first sessions
                swarm_out, swarm_ttft, swarm_tok = _timed_generate(model, ids, tokens)
        finally:
            model.close()
        peer_start = max(swarm.peer_start_seconds)
    return {
        "peers": peers,
        "tokens": tokens,
        "prompt_tokens": int(ids.shape[1]),
        "local_ms_per_token": round(local_tok * 1e3, 2),
        "swarm_ms_per_token": round(swarm_tok * 1e3, 2),
        "ratio": round(swarm_tok / local_tok, 3),
        "ttft_ms": round(swarm_ttft * 1e3, 1),
        "local_ttft_ms": round(local_ttft * 1e3, 1),
        "peer_start_s": round(peer_start, 2),
        "swarm_start_s": round(started, 2),
        "tokens_match": bool(torch.equal(local_out, swarm_out)),
    }
