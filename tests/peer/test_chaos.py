"""Chaos with real processes (``petal bench faults`` on a tiny checkpoint): every span served
twice; SIGKILL and SIGSTOP of the peer in use mid-generation, a hung peer whose record is
still in the DHT when a fresh client opens its chain, and generations under churn (a peer
killed and restarted every second). Every generation must give local transformers' tokens.
No timing is asserted: the recovery figures belong to the bench."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from reference_peer._bench_faults import run

from .tiny import LAYERS

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_kill_stall_hung_open_and_churn(tiny_checkpoint: Callable[[str], Path]) -> None:
    third = LAYERS // 3
    spans = [(0, third), (third, 2 * third), (2 * third, LAYERS)]
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    figures = run(
        tiny_checkpoint("llama"),
        ids=ids,
        spans=spans,
        tokens=16,
        generations=30,
        churn_tokens=10,
        churn_period=1.0,
        fault_at=6,
    )
    assert figures["tokens_match"], figures
    assert figures["churn_completed"] == figures["churn_total"] == 30, figures
    assert figures["recoveries"] >= 2  # the kill and the stall
    assert figures["churn_restarts"] >= 1, figures
    for key in ("kill_recovery_ms", "stall_recovery_ms", "hung_open_ttft_ms"):
        assert figures[key] > 0
