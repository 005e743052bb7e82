"""Known-answer tests for petalproto.core._noise against the public Noise test vectors.

Sources (see tests/vectors/SOURCE.md): cacophony, snow and noise-c in the Noise-wiki
JSON format, and flynn/noise's text blocks.  Every
``Noise_{XX,NN,IK}_25519_ChaChaPoly_{SHA256,BLAKE2s}`` vector without PSKs is replayed byte
for byte, transport messages and handshake hash included.  The two formats order transport
messages differently:

* JSON: messages alternate initiator, responder, ... straight across the end of the
  handshake, so after XX's three messages the first transport message is the responder's.
* flynn (``vector_test.go``): the first transport message is always the initiator's.

Also replays the locally generated CipherState KATs (high nonces, rekey chains).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petalproto.core._noise import CipherState, HandshakeState

VECTOR_DIR = Path(__file__).parents[1] / "vectors" / "noise"

PATTERNS = ("XX", "NN", "IK")
HASH_NAMES = ("SHA256", "BLAKE2s")
WANTED = {f"Noise_{p}_25519_ChaChaPoly_{h}" for p in PATTERNS for h in HASH_NAMES}
HANDSHAKE_LEN = {"NN": 2, "XX": 3, "IK": 2}
JSON_SOURCES = ("cacophony.txt", "snow.txt", "noise-c-basic.txt")


@dataclass(frozen=True)
class Vector:
    source: str
    name: str
    init_prologue: bytes
    resp_prologue: bytes
    init_static: bytes | None
    resp_static: bytes | None
    init_ephemeral: bytes
    resp_ephemeral: bytes
    init_remote_static: bytes | None
    handshake_hash: bytes | None
    messages: tuple[tuple[bytes, bytes], ...]  # (payload, ciphertext)
    flynn_order: bool

    @property
    def pattern(self) -> str:
        return self.name.split("_")[1]

    @property
    def hash_name(self) -> str:
        return self.name.split("_")[4]


def _hex(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def _json_vectors(source: str) -> Iterator[Vector]:
    data = json.loads((VECTOR_DIR / source).read_text())
    for raw in data["vectors"]:
        name = raw.get("protocol_name", raw.get("name"))
        has_psk = raw.get("init_psks") or raw.get("resp_psks") or "init_psk" in raw
        if name not in WANTED or has_psk or "psk" in name:
            continue
        yield _json_vector(source, name, raw)


def _json_vector(source: str, name: str, raw: dict[str, Any]) -> Vector:
    return Vector(
        source=source,
        name=name,
        init_prologue=bytes.fromhex(raw["init_prologue"]),
        resp_prologue=bytes.fromhex(raw["resp_prologue"]),
        init_static=_hex(raw.get("init_static")),
        resp_static=_hex(raw.get("resp_static")),
        init_ephemeral=bytes.fromhex(raw["init_ephemeral"]),
        resp_ephemeral=bytes.fromhex(raw["resp_ephemeral"]),
        init_remote_static=_hex(raw.get("init_remote_static")),
        handshake_hash=_hex(raw.get("handshake_hash")),
        messages=tuple(
            (bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])) for m in raw["messages"]
        ),
        flynn_order=False,
    )


def _flynn_blocks(path: Path) -> Iterator[dict[str, str]]:
    for chunk in path.read_text().split("\n\n"):
        lines = [line for line in chunk.splitlines() if line.strip()]
        if lines:
            yield dict(line.split("=", 1) for line in lines)


def _flynn_vectors(filename: str) -> Iterator[Vector]:
    for block in _flynn_blocks(VECTOR_DIR / filename):
        name = block["handshake"]
        has_psk = any("psk" in key or "preshared" in key for key in block)
        if name not in WANTED or has_psk or "psk" in name:
            continue
        yield _flynn_vector(filename, name, block)


def _flynn_vector(source: str, name: str, block: dict[str, str]) -> Vector:
    resp_static = _hex(block.get("resp_static"))
    remote = None
    if name.startswith("Noise_IK_") and resp_static is not None:
        # flynn's IK blocks carry no remote key: the initiator pre-knows X25519(resp_static).
        remote = X25519PrivateKey.from_private_bytes(resp_static).public_key().public_bytes_raw()
    count = sum(1 for key in block if key.endswith("_payload"))
    prologue = bytes.fromhex(block.get("prologue", ""))
    return Vector(
        source=source,
        name=name,
        init_prologue=prologue,
        resp_prologue=prologue,
        init_static=_hex(block.get("init_static")),
        resp_static=resp_static,
        init_ephemeral=bytes.fromhex(block["gen_init_ephemeral"]),
        resp_ephemeral=bytes.fromhex(block["gen_resp_ephemeral"]),
        init_remote_static=remote,
        handshake_hash=None,
        messages=tuple(
            (bytes.fromhex(block[f"msg_{i}_payload"]), bytes.fromhex(block[f"msg_{i}_ciphertext"]))
            for i in range(count)
        ),
        flynn_order=True,
    )


def _all_vectors() -> list[Vector]:
    vectors: list[Vector] = []
    for source in JSON_SOURCES:
        vectors.extend(_json_vectors(source))
    vectors.extend(_flynn_vectors("flynn-noise-vectors.txt"))
    return vectors


VECTORS = _all_vectors()


def _fixed(key: bytes) -> Any:
    """A random_bytes stand-in that yields the vector's ephemeral key exactly once."""
    calls: list[int] = []

    def random_bytes(n: int) -> bytes:
        assert n == 32
        assert not calls, "an ephemeral key was drawn twice"
        calls.append(n)
        return key

    return random_bytes


def _handshake_pair(vec: Vector) -> tuple[HandshakeState, HandshakeState]:
    init = HandshakeState(
        pattern=vec.pattern,
        initiator=True,
        prologue=vec.init_prologue,
        static_key=vec.init_static,
        remote_static=vec.init_remote_static,
        random_bytes=_fixed(vec.init_ephemeral),
        hash_name=vec.hash_name,
    )
    resp = HandshakeState(
        pattern=vec.pattern,
        initiator=False,
        prologue=vec.resp_prologue,
        static_key=vec.resp_static,
        random_bytes=_fixed(vec.resp_ephemeral),
        hash_name=vec.hash_name,
    )
    return init, resp


def test_every_source_contributes() -> None:
    counts = {source: 0 for source in (*JSON_SOURCES, "flynn-noise-vectors.txt")}
    for vec in VECTORS:
        counts[vec.source] += 1
    # 3 patterns x 2 hashes per JSON source; flynn has 4 payload/prologue variants of each.
    assert counts == {
        "cacophony.txt": 6,
        "snow.txt": 6,
        "noise-c-basic.txt": 6,
        "flynn-noise-vectors.txt": 24,
    }


@pytest.mark.parametrize(
    ("full", "subset"),
    [
        ("cacophony.txt", "cacophony.subset.json"),
        ("snow.txt", "snow.subset.json"),
        ("noise-c-basic.txt", "noise-c-basic.subset.json"),
    ],
)
def test_subset_files_match_filtered_sources(full: str, subset: str) -> None:
    assert list(_json_vectors(subset)) == [
        Vector(**{**vec.__dict__, "source": subset}) for vec in _json_vectors(full)
    ]


def test_flynn_subset_matches_filtered_source() -> None:
    full = list(_flynn_vectors("flynn-noise-vectors.txt"))
    subset = list(_flynn_vectors("flynn-noise.subset.txt"))
    assert [v.messages for v in subset] == [v.messages for v in full]


@pytest.mark.parametrize(
    "vec", VECTORS, ids=[f"{v.source}-{i}-{v.name}" for i, v in enumerate(VECTORS)]
)
def test_vector(vec: Vector) -> None:
    init, resp = _handshake_pair(vec)
    count = HANDSHAKE_LEN[vec.pattern]
    for i, (payload, ciphertext) in enumerate(vec.messages[:count]):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        assert writer.write_message(payload) == ciphertext, f"handshake message {i}"
        assert reader.read_message(ciphertext) == payload
    assert init.complete
    assert resp.complete
    assert init.handshake_hash == resp.handshake_hash
    if vec.handshake_hash is not None:
        assert init.handshake_hash == vec.handshake_hash
    if vec.init_static is not None:
        assert resp.remote_static == init.static_public
    if vec.resp_static is not None:
        assert init.remote_static == resp.static_public

    init_send, init_recv = init.split()
    resp_send, resp_recv = resp.split()
    for i, (payload, ciphertext) in enumerate(vec.messages[count:], start=count):
        from_initiator = (i - count) % 2 == 0 if vec.flynn_order else i % 2 == 0
        send, recv = (init_send, resp_recv) if from_initiator else (resp_send, init_recv)
        assert send.encrypt_with_ad(b"", payload) == ciphertext, f"transport message {i}"
        assert recv.decrypt_with_ad(b"", ciphertext) == payload


def _kat() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (VECTOR_DIR / "chachapoly-cipherstate-kat.local.json").read_text()
    )
    return data


KAT = _kat()


@pytest.mark.parametrize(
    "case", KAT["encrypt"], ids=[f"{c['key'][:8]}-n{c['n']}" for c in KAT["encrypt"]]
)
def test_cipherstate_kat_encrypt(case: dict[str, Any]) -> None:
    key, ad = bytes.fromhex(case["key"]), bytes.fromhex(case["ad"])
    plaintext, ciphertext = bytes.fromhex(case["plaintext"]), bytes.fromhex(case["ciphertext"])
    sender = CipherState(key, nonce=case["n"])
    assert sender.encrypt_with_ad(ad, plaintext) == ciphertext
    assert sender.nonce == case["n"] + 1
    receiver = CipherState(key, nonce=case["n"])
    assert receiver.decrypt_with_ad(ad, ciphertext) == plaintext
    assert receiver.nonce == case["n"] + 1


@pytest.mark.parametrize("case", KAT["rekey"], ids=[c["key"][:8] for c in KAT["rekey"]])
def test_cipherstate_kat_rekey(case: dict[str, Any]) -> None:
    key = bytes.fromhex(case["key"])
    state = CipherState(key)
    state.encrypt_with_ad(b"", b"one")
    state.encrypt_with_ad(b"", b"two")
    state.rekey()
    assert state.nonce == 2  # Noise §11.3: rekey leaves n alone
    expected = bytes.fromhex(case["ciphertext_after_rekey_n2"])
    assert state.encrypt_with_ad(b"", b"after rekey") == expected

    # The chain: rekeying twice gives the same cipher as starting from rekey_2.
    for steps, field in ((1, "rekey_1"), (2, "rekey_2")):
        chained = CipherState(key, nonce=7)
        for _ in range(steps):
            chained.rekey()
        direct = CipherState(bytes.fromhex(case[field]), nonce=7)
        assert chained.encrypt_with_ad(b"ad", b"probe") == direct.encrypt_with_ad(b"ad", b"probe")
