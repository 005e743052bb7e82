"""Spans on CUDA: bf16 by default, int8 and nf4 through bitsandbytes. Skipped without CUDA."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from reference_peer import SpanModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _inputs(hidden: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return (
        torch.randn(2, 7, hidden),
        torch.ones(2, 7, dtype=torch.long),
        torch.arange(7).repeat(2, 1),
    )


@pytest.mark.parametrize("family", ["llama", "gemma3", "mixtral", "bloom", "falcon"])
def test_auto_device_is_cuda_in_bf16_and_close_to_fp32(
    family: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    path = tiny_checkpoint(family)
    gpu = SpanModel(path, 0, 3, device="auto")
    cpu = SpanModel(path, 0, 3, device="cpu")
    assert gpu.device.type == "cuda"
    assert gpu.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    hidden, mask, positions = _inputs(gpu.hidden_size)
    ours = gpu.forward(hidden, mask, positions).float().cpu()
    reference = cpu.forward(hidden, mask, positions)
    error = (ours - reference).norm() / reference.norm()
    assert error < 0.05, float(error)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantized_spans_run(mode: str, tiny_checkpoint: Callable[[str], Path]) -> None:
    pytest.importorskip("bitsandbytes")
    path = tiny_checkpoint("llama")
    span = SpanModel(path, 0, 3, device="cuda", quantization=mode)  # type: ignore[arg-type]
    kinds = {type(m).__name__ for m in span.model.modules()}
    assert ("Linear8bitLt" if mode == "int8" else "Linear4bit") in kinds
    hidden, mask, positions = _inputs(span.hidden_size)
    out = span.forward(hidden, mask, positions)
    assert out.shape == hidden.shape and torch.isfinite(out.float()).all()


def test_sessions_on_cuda_match_stateless_passes(tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint("llama")
    span = SpanModel(path, 0, 3, device="cuda", dtype=torch.float32)
    hidden, mask, positions = _inputs(span.hidden_size)
    whole = span.forward(hidden, mask, positions)
    with span.open_session(2, 16) as session:
        first = session.step(hidden[:, :4], mask[:, :4], positions[:, :4])
        rest = session.step(hidden[:, 4:], mask, positions[:, 4:])
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole, rtol=1e-4, atol=1e-4)
