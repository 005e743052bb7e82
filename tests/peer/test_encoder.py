"""Encoders (BERT, ModernBERT) through a chain of spans equal the whole local model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from reference_peer import DistributedModel, LocalChain, SpanModel
from tests.peer.tiny import ENCODERS, LAYERS

pytestmark = pytest.mark.model


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(ENCODERS))
def test_last_hidden_state(family: str, tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint(family)
    chain = LocalChain(
        [SpanModel(path, 0, 2, device="cpu"), SpanModel(path, 2, LAYERS, device="cpu")]
    )
    dist = DistributedModel.from_pretrained(path, chain=chain)
    full = AutoModel.from_pretrained(path).eval()
    ids = torch.randint(3, 98, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        expected = full(input_ids=ids, attention_mask=mask)
        actual = dist(input_ids=ids, attention_mask=mask)
    assert type(dist).__name__ == f"Distributed{type(full).__name__}"
    torch.testing.assert_close(
        actual.last_hidden_state, expected.last_hidden_state, rtol=0, atol=1e-5
    )
    if family == "bert":
        torch.testing.assert_close(actual.pooler_output, expected.pooler_output, rtol=0, atol=1e-5)
