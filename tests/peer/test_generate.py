"""generate() through a chain of spans equals generate() of the whole local model."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, TextIteratorStreamer

from reference_peer import DistributedModelForCausalLM, LocalChain, SpanModel
from reference_peer._arch import forward_params
from tests.peer.chains import RecordingChain
from tests.peer.tiny import CONFIGS, LAYERS, char_tokenizer

pytestmark = pytest.mark.model

#: (the whole local model, the distributed model, the chain under it); models untyped.
Pair = tuple[Any, Any, RecordingChain]
SPLITS = [(0, 2), (2, 5), (5, LAYERS)]


def _load_pair(path: Path) -> Pair:
    full: Any = AutoModelForCausalLM.from_pretrained(path)
    full.eval()
    chain = RecordingChain(LocalChain([SpanModel(path, a, b, device="cpu") for a, b in SPLITS]))
    return full, DistributedModelForCausalLM.from_pretrained(path, chain=chain), chain


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request: pytest.FixtureRequest, tiny_checkpoint: Callable[[str], Path]) -> Pair:
    return _load_pair(tiny_checkpoint(request.param))


@pytest.fixture(scope="module")
def llama(tiny_checkpoint: Callable[[str], Path]) -> Pair:
    return _load_pair(tiny_checkpoint("llama"))


def _prompt(batch: int, length: int, pad: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 98, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    ids[0, :pad] = 0
    mask[0, :pad] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _both(full: Any, dist: Any, **kwargs: Any) -> tuple[Any, Any]:
    kwargs = {"pad_token_id": 0, "return_dict_in_generate": True, "output_logits": True, **kwargs}
    seed = kwargs.pop("seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    expected = full.generate(**kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    return expected, dist.generate(**kwargs)


def _assert_same(expected: Any, actual: Any) -> None:
    assert torch.equal(expected.sequences, actual.sequences)
    torch.testing.assert_close(
        torch.stack(actual.logits), torch.stack(expected.logits), rtol=0, atol=1e-4
    )


@pytest.mark.slow
def test_greedy_left_padded_batch(pair: Pair) -> None:
    full, dist, chain = pair
    sessions = chain.sessions
    expected, actual = _both(
        full, dist, **_prompt(2, 24, pad=7), max_new_tokens=12, do_sample=False
    )
    _assert_same(expected, actual)
    assert chain.sessions == sessions + 1
    assert chain.max_lengths[-2:] == [24 + 12, None]  # opened for the call, reset after it


@pytest.mark.slow
def test_long_prompt(pair: Pair) -> None:
    full, dist, _ = pair
    expected, actual = _both(
        full, dist, **_prompt(1, 120, seed=1), max_new_tokens=6, do_sample=False
    )
    _assert_same(expected, actual)


@pytest.mark.slow
def test_sampling_with_a_fixed_seed(pair: Pair) -> None:
    full, dist, _ = pair
    kwargs: dict[str, Any] = {"max_new_tokens": 10, "do_sample": True, "top_k": 0, "seed": 7}
    expected, actual = _both(full, dist, **_prompt(2, 9, pad=3, seed=2), **kwargs)
    _assert_same(expected, actual)


@pytest.mark.slow
def test_without_cache_every_step_is_a_stateless_pass(pair: Pair) -> None:
    full, dist, chain = pair
    forwards, sessions = chain.forwards, chain.sessions
    expected, actual = _both(
        full,
        dist,
        **_prompt(2, 8, pad=2, seed=3),
        max_new_tokens=4,
        do_sample=False,
        use_cache=False,
    )
    _assert_same(expected, actual)
    assert (chain.forwards - forwards, chain.sessions - sessions) == (4, 0)


@pytest.mark.slow
def test_stop_strings_and_streamer(llama: Pair) -> None:
    full, dist, _ = llama
    tokenizer = char_tokenizer()
    prompt = tokenizer(["hello there"], return_tensors="pt")
    plain = dist.generate(**prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
    text = tokenizer.decode(plain[0, prompt["input_ids"].shape[1] :])
    stop = text[len(text) // 2]
    kwargs: dict[str, Any] = {
        **prompt,
        "max_new_tokens": 16,
        "do_sample": False,
        "pad_token_id": 0,
        "stop_strings": [stop],
        "tokenizer": tokenizer,
    }
    stopped = dist.generate(**kwargs)
    assert torch.equal(stopped, full.generate(**kwargs))
    new_text = tokenizer.decode(stopped[0, prompt["input_ids"].shape[1] :])
    assert new_text == text[: text.index(stop) + 1]

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    worker = threading.Thread(target=dist.generate, kwargs={**kwargs, "streamer": streamer})
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed == new_text


def test_refuses_beam_search(llama: Pair) -> None:
    _, dist, _ = llama
    with pytest.raises(ValueError, match="beam"):
        dist.generate(**_prompt(1, 4), max_new_tokens=2, num_beams=2)


def test_plain_forward_keeps_its_session_until_the_cache_changes(llama: Pair) -> None:
    full, dist, chain = llama
    # transformers 5.24 renamed past_key_values to cache.
    name = "cache" if "cache" in forward_params(dist) else "past_key_values"
    ids = _prompt(1, 6)["input_ids"]
    with torch.no_grad():
        out = dist(input_ids=ids[:, :4], use_cache=True)
        cache = getattr(out, name)
        more = dist(input_ids=ids[:, 4:], use_cache=True, **{name: cache})
        whole = full(input_ids=ids).logits
        dist(input_ids=ids[:, :4], use_cache=True)  # a new cache: a new session
        with pytest.raises(ValueError, match="ended"):
            dist(input_ids=ids[:, 4:], use_cache=True, **{name: cache})
    torch.testing.assert_close(more.logits, whole[:, 4:], rtol=0, atol=1e-4)
    chain.reset()


def test_forward_with_autograd_enabled(llama: Pair) -> None:
    _, dist, _ = llama
    logits = dist(input_ids=_prompt(1, 5)["input_ids"], use_cache=False).logits
    logits.sum().backward()
    dist.zero_grad()


def test_the_class_is_both_ours_and_the_architectures(llama: Pair) -> None:
    _, dist, _ = llama
    assert isinstance(dist, DistributedModelForCausalLM)
    assert type(dist).__name__ == "DistributedLlamaForCausalLM"
    assert int(dist.full_config.num_hidden_layers) == LAYERS
