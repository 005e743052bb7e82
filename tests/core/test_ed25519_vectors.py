"""Ed25519 verification against BEP 44's signed mutable-item vectors (tests/vectors/SOURCE.md).

BEP 44 signs with Ed25519 as we do (§3.1, §12.5.2), over bencoded buffers instead of our
msgpack: the vectors check that ``PeerId.verify`` accepts real signatures from another
implementation, and rejects them once a single bit of the message, the key or the signature
changes.  Immutable items carry no signature and only check our SHA-1 reading of the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from petalproto.core import PeerId

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "bep44" / "bep44-vectors.json").read_text()
)["vectors"]
MUTABLE = [v for v in VECTORS if "signature" in v]


def test_the_file_holds_both_kinds() -> None:
    assert len(MUTABLE) == 2
    assert len(VECTORS) == 3


@pytest.mark.parametrize("vec", MUTABLE, ids=lambda v: v["name"])
def test_signature_verifies(vec: dict[str, Any]) -> None:
    key = bytes.fromhex(vec["public_key"])
    peer = PeerId.from_bytes(key)
    message = vec["signed_buffer"].encode()
    assert peer.verify(bytes.fromhex(vec["signature"]), message)
    salt = vec["salt"].encode()
    assert hashlib.sha1(key + salt).hexdigest() == vec["target"]


@pytest.mark.parametrize("vec", MUTABLE, ids=lambda v: v["name"])
def test_one_flipped_bit_fails(vec: dict[str, Any]) -> None:
    peer = PeerId.from_bytes(bytes.fromhex(vec["public_key"]))
    message = vec["signed_buffer"].encode()
    signature = bytes.fromhex(vec["signature"])
    assert not peer.verify(signature, message[:-1] + bytes([message[-1] ^ 1]))
    for index in (0, 31, 32, 63):
        flipped = bytearray(signature)
        flipped[index] ^= 0x01
        assert not peer.verify(bytes(flipped), message)


def test_immutable_target_is_sha1_of_the_value() -> None:
    (vec,) = [v for v in VECTORS if "signature" not in v]
    assert hashlib.sha1(vec["value_bencoded"].encode()).hexdigest() == vec["target"]
