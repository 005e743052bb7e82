"""The DHT fuzz harness, run on a seed corpus and on hypothesis' bytes."""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from petalproto.core._msgpack import encode
from petalproto.core.dht import FindNode, Get, Ping, Put, nodes_body

from .factories import NOW, contact, dictionary, named, with_fields

_PATH = pathlib.Path(__file__).parents[3] / "fuzz" / "dht_messages.py"


def _harness() -> Callable[[bytes], None]:
    spec = importlib.util.spec_from_file_location("fuzz_dht_messages", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(Callable[[bytes], None], module.TestOneInput)


TEST_ONE_INPUT = _harness()

CORPUS = [
    encode(Ping(listen=("1.2.3.4", 5)).to_body()),
    encode(FindNode(target=bytes(32)).to_body()),
    encode(Get(key=bytes(32)).to_body()),
    encode(Put(record=dictionary(1)).to_body()),
    encode(Put(record=with_fields(named(1), value="forged")).to_body()),
    encode(dictionary(2, expires=NOW + 60).to_wire()),
    encode({"nodes": nodes_body([contact(i) for i in range(20)])}),
    encode({"nodes": nodes_body([contact(1)]), "records": [named(1, b"\x00" * 32).to_wire()]}),
    encode({"nodes": [], "records": [dictionary(3).to_wire(), {"key": 1}]}),
    b"",
    b"\xc1",
    b"\x80",
    b"\x91\x90",
]


def test_seed_corpus() -> None:
    for data in CORPUS:
        TEST_ONE_INPUT(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    TEST_ONE_INPUT(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CORPUS[:9]), st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 64))
def test_mutated_corpus(seed: bytes, at: int, byte: int, cut: int) -> None:
    data = bytearray(seed)
    if data:
        data[at % len(data)] = byte
    TEST_ONE_INPUT(bytes(data[: max(0, len(data) - cut)]))
