"""A chain that records what the client model asks of it."""

from __future__ import annotations

import torch

from reference_peer import Chain


class RecordingChain:
    """Forwards to another chain and counts sessions, steps and stateless passes."""

    def __init__(self, inner: Chain) -> None:
        self.inner = inner
        self.max_lengths: list[int | None] = []
        self.sessions = 0
        self.steps = 0
        self.forwards = 0
        self._fresh = True

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        self.forwards += 1
        return self.inner.forward(hidden, attention_mask, position_ids)

    def step(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        if self._fresh:
            self.sessions += 1
            self._fresh = False
        self.steps += 1
        return self.inner.step(hidden, attention_mask, position_ids)

    def reset(self, *, max_length: int | None = None) -> None:
        self.max_lengths.append(max_length)
        self._fresh = True
        self.inner.reset(max_length=max_length)

    def close(self) -> None:
        self.inner.close()
