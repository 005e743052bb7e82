"""An encoder (BERT) through a chain of spans equals the whole local model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from reference_peer import DistributedModel, LocalChain, SpanModel
from tests.peer.tiny import LAYERS

pytestmark = pytest.mark.model


@pytest.mark.slow
def test_bert_last_hidden_state(tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint("bert")
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
    assert type(dist).__name__ == "DistributedBertModel"
    torch.testing.assert_close(
        actual.last_hidden_state, expected.last_hidden_state, rtol=0, atol=1e-5
    )
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, rtol=0, atol=1e-5)
