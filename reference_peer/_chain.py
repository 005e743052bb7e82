"""A chain: something that carries hidden states through every block of a model.

The client model (``_local``) embeds tokens, hands the hidden states to a chain, and applies
the final norm and head to what comes back. It never knows where the blocks run. The remote
chain (spans on peers, over the network) and ``LocalChain`` (spans in this process, for tests
and benchmarks) implement the same protocol.

A chain holds at most one generation session at a time. ``reset`` ends it; the next ``step``
opens a new one, sized by the step's batch and the ``max_length`` given to ``reset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from ._spans import SpanModel, SpanSession

__all__ = ["Chain", "LocalChain"]

#: Session length a chain assumes when ``reset`` names none.
DEFAULT_MAX_LENGTH = 2048


@runtime_checkable
class Chain(Protocol):
    """Carries hidden states through all blocks of a model, in order."""

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Run whole sequences through every block, without a session.

        Args:
            hidden: ``[batch, tokens, hidden_size]`` embeddings.
            attention_mask: ``[batch, tokens]``, 1 for real tokens and 0 for padding.
            position_ids: ``[batch, tokens]``.

        Returns:
            ``[batch, tokens, hidden_size]``: the last block's output.
        """
        ...

    def step(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Run new tokens through every block within the current session.

        Args:
            hidden: ``[batch, new, hidden_size]``.
            attention_mask: ``[batch, past + new]``.
            position_ids: ``[batch, new]``.

        Returns:
            ``[batch, new, hidden_size]``.
        """
        ...

    def reset(self, *, max_length: int | None = None) -> None:
        """End the current session; the next ``step`` opens one of ``max_length`` tokens."""
        ...

    def close(self) -> None:
        """End the session and release everything the chain holds."""
        ...


class LocalChain:
    """A chain of in-process spans that together cover a model's blocks in order."""

    def __init__(self, spans: Sequence[SpanModel], *, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        """Check that the spans tile the model.

        Args:
            spans: spans of one model, ``spans[0].start == 0``, each starting where the
                previous one ends, the last ending at the model's last block.
            max_length: session length when ``reset`` names none.

        Raises:
            ValueError: the spans leave a gap, overlap, or do not reach the end.
        """
        if not spans:
            raise ValueError("a chain needs at least one span")
        expected = 0
        for span in spans:
            if span.start != expected:
                raise ValueError(f"span [{span.start}, {span.end}) should start at {expected}")
            expected = span.end
        if expected != int(spans[0].full_config.num_hidden_layers):
            raise ValueError(f"the spans end at block {expected}, not at the model's end")
        self.spans = list(spans)
        self.default_max_length = max_length
        self._max_length = max_length
        self._sessions: list[SpanSession] | None = None

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """See ``Chain.forward``."""
        out = hidden
        for span in self.spans:
            out = span.forward(out, attention_mask, position_ids)
        return out

    def step(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """See ``Chain.step``."""
        if self._sessions is None:
            self._sessions = self._open(int(hidden.shape[0]))
        out = hidden
        for session in self._sessions:
            out = session.step(out, attention_mask, position_ids)
        return out

    def _open(self, batch: int) -> list[SpanSession]:
        opened: list[SpanSession] = []
        try:
            for span in self.spans:
                opened.append(span.open_session(batch, self._max_length))
        except BaseException:
            for session in opened:
                session.close()
            raise
        return opened

    def reset(self, *, max_length: int | None = None) -> None:
        """See ``Chain.reset``."""
        if self._sessions is not None:
            for session in self._sessions:
                session.close()
            self._sessions = None
        self._max_length = self.default_max_length if max_length is None else max_length

    def close(self) -> None:
        """See ``Chain.close``."""
        self.reset()
