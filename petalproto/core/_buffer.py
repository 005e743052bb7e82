"""A receive buffer that consumes from the front without quadratic copying."""

from __future__ import annotations

__all__ = ["ReceiveBuffer"]


class ReceiveBuffer:
    """Bytes appended at the back, consumed from the front (h11's ``ReceiveBuffer`` idea)."""

    __slots__ = ("_data", "_start")

    def __init__(self) -> None:
        self._data = bytearray()
        self._start = 0

    def __len__(self) -> int:
        return len(self._data) - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._start and self._start * 2 >= len(self._data):
            del self._data[: self._start]
            self._start = 0
        self._data += data

    def peek(self, n: int) -> bytes:
        """The first ``n`` bytes (fewer if fewer are buffered), not consumed."""
        return bytes(self._data[self._start : self._start + n])

    def take(self, n: int) -> bytes:
        """Consume and return exactly ``n`` bytes; the caller checked ``len``."""
        out = bytes(self._data[self._start : self._start + n])
        self._start += n
        return out

    def skip(self, n: int) -> None:
        self._start += n
