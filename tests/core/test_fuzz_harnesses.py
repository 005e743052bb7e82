"""The connection fuzz harnesses (fuzz/frames.py, fuzz/handshake.py), run on a seed corpus
and on hypothesis' bytes, so that CI exercises them without atheris."""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petalproto.core import encode
from petalproto.core._frames import FrameType as F
from petalproto.testing._pairs import frame_bytes

_FUZZ = pathlib.Path(__file__).parents[2] / "fuzz"


def _harness(name: str) -> Callable[[bytes], None]:
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", _FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(Callable[[bytes], None], module.TestOneInput)


FRAMES = _harness("frames")
HANDSHAKE = _harness("handshake")

_OPEN = frame_bytes(F.OPEN, 1, "m")
_PLAINTEXTS = [
    b"",
    _OPEN + frame_bytes(F.DATA, 1, 3, encode({"a": 1})),
    _OPEN + frame_bytes(F.DATA, 1, 0, b"\x92\x01") + frame_bytes(F.DATA, 1, 2, b""),
    _OPEN + frame_bytes(F.DATA, 1, 1, b"\xc1") + frame_bytes(F.PING, b"12345678"),
    _OPEN + frame_bytes(F.DATA, 1, 0, b"x" * 70_000),  # beyond the stream window
    frame_bytes(F.OPEN, 2, "m") + frame_bytes(F.DATA, 2, 0, b"x"),  # a side's own parity
    frame_bytes(F.CREDIT, 0, 2**31 - 1),
    frame_bytes(F.CREDIT, 1, 1) + frame_bytes(F.CREDIT, 2, 1),
    _OPEN
    + frame_bytes(F.OPEN, 3, "m")
    + frame_bytes(F.OPEN, 5, "m")
    + frame_bytes(F.RESET, 1, 0, ""),
    frame_bytes(F.GOAWAY, 0, 0, "") + frame_bytes(F.PING, b"12345678"),
    _OPEN + frame_bytes(F.GOAWAY, 1, 0, "") + frame_bytes(F.DATA, 1, 3, b"\xc0"),
    frame_bytes(F.GOAWAY, 0, 13, "busy"),
    # an empty END_STREAM on a stream that was never opened: once answered by CREDIT 0
    frame_bytes(F.OPEN, 33, "m")
    + frame_bytes(F.DATA, 1, 0, b"\x92\x01")
    + frame_bytes(F.DATA, 1, 2, b""),
    frame_bytes(99),
    frame_bytes(F.PONG),
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x00\x01\x00\x00" + bytes(100),
    b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1",
]
FRAME_CORPUS = [bytes([mode]) + plain for plain in _PLAINTEXTS for mode in (0, 1, 2, 3, 252)]

HANDSHAKE_CORPUS = [
    b"",
    b"\x00",
    b"\x00\x00\x20" + bytes(32),  # a low-order ephemeral key
    b"\x00\x00\x20" + bytes(range(32)),  # a valid message 1, then EOF
    b"\x00\x00\x20" + bytes(range(32)) + b"\x00\x41" + bytes(65),
    b"\x00\xff\xff",
    b"\x01",
    b"\x01" + encode({"identity_key": bytes(32), "identity_sig": bytes(64)}),
    b"\x01" + encode([1, 2, 3]),
    b"\x01" + b"\xc1" * 2000,
    b"\x02" + encode({"settings": {}}),
    b"\x02" + bytes(70_000),
    b"\x03",
    b"\x03" + encode({}),
    b"\x03" + encode({"max_frame": 1 << 16, "agent": "fuzz", "extra": [1, 2]}),
    b"\x03" + encode({"max_streams": 0}),
    b"\x03" + encode({"stream_window": 1 << 20, "connection_window": 1 << 16}),
    b"\x03" + encode([{}]),
]


@pytest.mark.parametrize("data", FRAME_CORPUS)
def test_frames_harness_corpus(data: bytes) -> None:
    FRAMES(data)


@pytest.mark.parametrize("data", HANDSHAKE_CORPUS)
def test_handshake_harness_corpus(data: bytes) -> None:
    HANDSHAKE(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_frames_harness_on_random_bytes(data: bytes) -> None:
    FRAMES(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_handshake_harness_on_random_bytes(data: bytes) -> None:
    HANDSHAKE(data)
