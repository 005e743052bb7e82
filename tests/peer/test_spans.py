"""SpanModel and SpanSession: exact block outputs, and typed errors for bad requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from reference_peer import (
    BadTensor,
    LocalChain,
    OutOfCache,
    SessionClosed,
    SpanModel,
    TooLong,
    TooManySessions,
    WrongSpan,
    pick_device,
)
from reference_peer._arch import find_blocks
from tests.peer.tiny import HIDDEN, LAYERS

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def llama(tiny_checkpoint: Callable[[str], Path]) -> Path:
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def span(llama: Path) -> SpanModel:
    return SpanModel(llama, 2, 4, device="cpu")


@pytest.fixture(scope="module")
def full(llama: Path) -> Any:
    model: Any = AutoModelForCausalLM.from_pretrained(llama)
    return model.eval()


def _block_inputs_and_outputs(
    model: Any,
    *,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    start: int,
    end: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = find_blocks(model.config).of(model.base_model)
    seen: dict[str, torch.Tensor] = {}

    def take_input(
        module: object, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]
    ) -> None:
        seen["in"] = args[0] if args else kwargs["hidden_states"]

    def take_output(module: object, args: object, output: torch.Tensor) -> None:
        seen["out"] = output

    hooks = [
        blocks[start].register_forward_pre_hook(take_input, with_kwargs=True),
        blocks[end - 1].register_forward_hook(take_output),
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=positions)
    finally:
        for hook in hooks:
            hook.remove()
    return seen["in"], seen["out"]


def test_forward_equals_the_full_models_blocks(span: SpanModel, full: Any) -> None:
    ids = torch.randint(3, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden_in, hidden_out = _block_inputs_and_outputs(
        full, ids=ids, mask=mask, positions=positions, start=2, end=4
    )
    assert torch.equal(span.forward(hidden_in, mask, positions), hidden_out)


def test_session_steps_equal_forward(span: SpanModel) -> None:
    hidden = torch.randn(1, 7, HIDDEN)
    mask = torch.ones(1, 7, dtype=torch.long)
    positions = torch.arange(7)[None]
    whole = span.forward(hidden, mask, positions)
    with span.open_session(1, 7) as session:
        first = session.step(hidden[:, :4], mask[:, :4], positions[:, :4])
        rest = [
            session.step(hidden[:, i : i + 1], mask[:, : i + 1], positions[:, i : i + 1])
            for i in range(4, 7)
        ]
        assert session.length == 7
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), whole, rtol=0, atol=1e-5)


def test_what_the_span_knows(span: SpanModel) -> None:
    assert (span.start, span.end, span.hidden_size) == (2, 4, HIDDEN)
    assert (span.device.type, span.dtype) == ("cpu", torch.float32)
    assert int(span.config.num_hidden_layers) == 2
    assert int(span.full_config.num_hidden_layers) == LAYERS
    # 2 blocks x (keys + values) x 2 kv heads x head_dim 8 x 4 bytes
    assert span.cache_bytes_per_token == 2 * 2 * 2 * 8 * 4


@pytest.mark.parametrize(("start", "end"), [(0, 0), (3, 2), (-1, 2), (4, LAYERS + 1)])
def test_wrong_span(llama: Path, start: int, end: int) -> None:
    with pytest.raises(WrongSpan):
        SpanModel(llama, start, end, device="cpu")


@pytest.fixture
def session(span: SpanModel) -> Iterator[object]:
    with span.open_session(2, 5) as opened:
        opened.step(
            torch.zeros(2, 2, HIDDEN),
            torch.ones(2, 2, dtype=torch.long),
            torch.zeros(2, 2, dtype=torch.long),
        )
        yield opened


@pytest.mark.parametrize(
    ("hidden", "mask", "positions"),
    [
        ((2, 1, HIDDEN + 1), (2, 3), (2, 1)),  # wrong hidden size
        ((3, 1, HIDDEN), (3, 3), (3, 1)),  # wrong batch
        ((2, 0, HIDDEN), (2, 2), (2, 0)),  # no tokens
        ((2, 1, HIDDEN), (2, 1), (2, 1)),  # mask does not cover the past
        ((2, 1, HIDDEN), (2, 3), (1, 1)),  # positions for one sequence
        ((2, HIDDEN), (2, 3), (2, 1)),  # rank 2
    ],
)
def test_step_rejects_bad_shapes(
    session: object, hidden: tuple[int, ...], mask: tuple[int, ...], positions: tuple[int, ...]
) -> None:
    with pytest.raises(BadTensor):
        session.step(  # type: ignore[attr-defined]
            torch.zeros(hidden),
            torch.ones(mask, dtype=torch.long),
            torch.zeros(positions, dtype=torch.long),
        )
    assert session.length == 2  # type: ignore[attr-defined]


def test_step_rejects_bad_dtypes(span: SpanModel) -> None:
    with span.open_session(1, 4) as session:
        with pytest.raises(BadTensor):
            session.step(
                torch.zeros(1, 1, HIDDEN, dtype=torch.long), torch.ones(1, 1), torch.zeros(1, 1)
            )
        with pytest.raises(BadTensor):
            session.step(
                torch.zeros(1, 1, HIDDEN), torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long)
            )
        with pytest.raises(BadTensor):
            session.step(
                torch.zeros(1, 1, HIDDEN),
                torch.ones(1, 1, dtype=torch.bool),
                torch.zeros(1, 1, dtype=torch.bool),
            )
        out = session.step(
            torch.zeros(1, 1, HIDDEN, dtype=torch.bfloat16),
            torch.ones(1, 1, dtype=torch.bool),
            torch.zeros(1, 1, dtype=torch.int32),
        )
        assert out.dtype == torch.float32


@pytest.mark.parametrize(
    ("mask", "positions"),
    [([[1, 2]], [[0, 1]]), ([[1, -1]], [[0, 1]]), ([[1, 1]], [[0, -1]])],
)
def test_rejects_bad_mask_and_position_values(
    span: SpanModel, mask: list[list[int]], positions: list[list[int]]
) -> None:
    with pytest.raises(BadTensor):
        span.forward(torch.zeros(1, 2, HIDDEN), torch.tensor(mask), torch.tensor(positions))


def test_too_long_then_still_usable(span: SpanModel) -> None:
    with span.open_session(1, 3) as session:
        with pytest.raises(TooLong):
            session.step(
                torch.zeros(1, 4, HIDDEN),
                torch.ones(1, 4, dtype=torch.long),
                torch.zeros(1, 4, dtype=torch.long),
            )
        session.step(
            torch.zeros(1, 3, HIDDEN),
            torch.ones(1, 3, dtype=torch.long),
            torch.zeros(1, 3, dtype=torch.long),
        )
        assert session.length == 3


def test_closed_session(span: SpanModel) -> None:
    session = span.open_session(1, 3)
    session.close()
    session.close()
    with pytest.raises(SessionClosed):
        session.step(
            torch.zeros(1, 1, HIDDEN),
            torch.ones(1, 1, dtype=torch.long),
            torch.zeros(1, 1, dtype=torch.long),
        )


def test_bad_session_sizes(span: SpanModel) -> None:
    with pytest.raises(ValueError, match="positive"):
        span.open_session(0, 3)
    with pytest.raises(ValueError, match="positive"):
        span.open_session(1, 0)


def test_budget_and_session_limits(llama: Path) -> None:
    span = SpanModel(llama, 0, 1, max_sessions=2, device="cpu")
    per_token = span.cache_bytes_per_token
    span.cache_budget_bytes = 10 * per_token
    assert span.cache_free_bytes == 10 * per_token
    first = span.open_session(2, 4)
    assert span.cache_free_bytes == 2 * per_token
    with pytest.raises(OutOfCache):
        span.open_session(1, 3)
    second = span.open_session(1, 2)
    with pytest.raises(TooManySessions):
        span.open_session(1, 1)
    first.close()
    second.close()
    assert span.cache_free_bytes == 10 * per_token
    span.open_session(2, 5).close()


def test_local_chain_must_tile_the_model(llama: Path, span: SpanModel) -> None:
    head, tail = SpanModel(llama, 0, 2, device="cpu"), SpanModel(llama, 4, LAYERS, device="cpu")
    with pytest.raises(ValueError, match="at least one"):
        LocalChain([])
    with pytest.raises(ValueError, match="start at 0"):
        LocalChain([span, tail])
    with pytest.raises(ValueError, match="start at 2"):
        LocalChain([head, tail])
    with pytest.raises(ValueError, match="end"):
        LocalChain([head, span])


def test_local_chain_releases_sessions_when_one_cannot_open(llama: Path) -> None:
    head, tail = (
        SpanModel(llama, 0, 3, device="cpu"),
        SpanModel(llama, 3, LAYERS, max_sessions=0, device="cpu"),
    )
    chain = LocalChain([head, tail], max_length=4)
    with pytest.raises(TooManySessions):
        chain.step(
            torch.zeros(1, 1, HIDDEN),
            torch.ones(1, 1, dtype=torch.long),
            torch.zeros(1, 1, dtype=torch.long),
        )
    assert head.open_session(1, 1) is not None


def test_pick_device() -> None:
    assert pick_device("cpu", None) == (torch.device("cpu"), torch.float32)
    assert pick_device("cpu", torch.bfloat16) == (torch.device("cpu"), torch.bfloat16)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto", None)[0].type == expected
