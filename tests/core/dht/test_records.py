"""Signed records: format, signature input, validation, selection (SPEC.md §12.5)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petalproto.core._errors import ErrorCode
from petalproto.core._msgpack import decode_strict, encode, encode_canonical
from petalproto.core.dht import (
    MAX_NAME_BYTES,
    MAX_RECORD_TTL,
    MAX_VALUE_BYTES,
    RECORD_DOMAIN,
    Record,
    RecordRejected,
    make_dictionary_record,
    make_named_record,
    named_key,
    parse_record,
    record_rank,
    select_best,
    validate_record,
)

from .factories import NOW, dictionary, identity, named, peer, with_fields


def _code(record: Record, now: float = NOW) -> ErrorCode | None:
    try:
        validate_record(record, now)
    except RecordRejected as exc:
        return exc.code
    return None


def test_named_record_key_and_signature_input() -> None:
    record = named(1, b"model", {"b": 2, "a": [1, b"x"]}, seq=7, expires=NOW + 60)
    assert (
        record.key
        == hashlib.sha256(peer(1).raw + b"model").digest()
        == named_key(peer(1), b"model")
    )
    assert record.is_named and record.subkey == b""
    expected = RECORD_DOMAIN + encode_canonical(
        [record.key, b"", b"model", {"a": [1, b"x"], "b": 2}, 7, NOW + 60]
    )
    assert record.signed_bytes == expected
    assert peer(1).verify(record.signature, expected)
    assert _code(record) is None


def test_signature_input_bytes_are_pinned() -> None:
    """A golden vector: the exact bytes an implementation must sign (SPEC.md §12.5.2)."""
    record = make_dictionary_record(identity(1), b"\x11" * 32, {"x": 1}, seq=1, expires=2)
    assert record.signed_bytes == (
        b"petalproto-dht-record:\x96\xc4\x20"
        + b"\x11" * 32
        + b"\xc4\x20"
        + peer(1).raw
        + b"\xc4\x00\x81\xa1x\x01\x01\x02"
    )


def test_dictionary_record() -> None:
    record = dictionary(2, b"\x05" * 32, "hello")
    assert not record.is_named
    assert record.subkey == peer(2).raw and record.name == b""
    assert _code(record) is None


def test_wire_round_trip() -> None:
    for record in (named(), dictionary()):
        wire = decode_strict(encode(record.to_wire()))
        assert parse_record(wire) == record
        assert set(wire) == {"key", "subkey", "name", "value", "seq", "expires", "publisher", "sig"}


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"key": b"short"},
        {"seq": -1},
        {"seq": 2**63},
        {"seq": True},
        {"expires": "soon"},
        {"publisher": b"\x00" * 31},
        {"sig": bytes(63)},
        {"value": 1.5},
        {"value": {1: 2}},
        {"name": "text"},
        {"subkey": None},
    ],
)
def test_schema_violations_are_record_invalid(change: dict[str, Any]) -> None:
    wire = dictionary().to_wire()
    wire.update(change)
    with pytest.raises(RecordRejected) as info:
        parse_record(wire)
    assert info.value.code == ErrorCode.RECORD_INVALID


def test_missing_field_is_record_invalid() -> None:
    wire = dictionary().to_wire()
    del wire["sig"]
    with pytest.raises(RecordRejected):
        parse_record(wire)
    with pytest.raises(RecordRejected):
        parse_record([])


def test_construction_checks_types() -> None:
    good = dictionary()
    with pytest.raises(TypeError):
        with_fields(good, publisher=peer(1).raw)
    with pytest.raises(TypeError):
        with_fields(good, key="k" * 32)
    with pytest.raises(ValueError, match="32 bytes"):
        with_fields(good, key=b"k")
    with pytest.raises(ValueError, match="cannot be signed"):
        with_fields(good, value=[0.5])


def test_makers_refuse_oversized_input() -> None:
    with pytest.raises(ValueError, match="name"):
        make_named_record(identity(1), b"x" * (MAX_NAME_BYTES + 1), 1, seq=1, expires=NOW)
    with pytest.raises(ValueError, match="value"):
        make_dictionary_record(identity(1), bytes(32), b"x" * MAX_VALUE_BYTES, seq=1, expires=NOW)
    with pytest.raises(TypeError):
        make_named_record(identity(1), "name", 1, seq=1, expires=NOW)  # type: ignore[arg-type]


def test_each_rule_has_its_code() -> None:
    good_named, good_dict = named(), dictionary()
    assert _code(good_dict, NOW + 3600) == ErrorCode.RECORD_EXPIRED
    assert _code(good_dict, NOW + 4000) == ErrorCode.RECORD_EXPIRED
    far = dictionary(expires=NOW + MAX_RECORD_TTL + 10_000)
    assert _code(far) == ErrorCode.RECORD_INVALID
    assert _code(with_fields(good_dict, value="w")) == ErrorCode.RECORD_BAD_SIGNATURE
    assert _code(with_fields(good_dict, subkey=peer(2).raw)) == ErrorCode.RECORD_FOREIGN_SUBKEY
    assert _code(with_fields(good_dict, name=b"n")) == ErrorCode.RECORD_INVALID
    assert _code(with_fields(good_named, key=bytes(32))) == ErrorCode.RECORD_INVALID
    assert _code(with_fields(good_named, name=b"x" * 65)) == ErrorCode.RECORD_TOO_LARGE
    assert _code(with_fields(good_dict, value=b"x" * 5000)) == ErrorCode.RECORD_TOO_LARGE
    # another publisher re-signing the slot of peer 1 keeps peer 1 as subkey: foreign
    forged = make_dictionary_record(identity(2), bytes(32), "v", seq=9, expires=NOW + 60)
    assert _code(with_fields(forged, subkey=peer(1).raw)) == ErrorCode.RECORD_FOREIGN_SUBKEY
    assert _code(with_fields(forged, publisher=peer(1), subkey=peer(1).raw)) == (
        ErrorCode.RECORD_BAD_SIGNATURE
    )


def test_select_prefers_seq_then_expiry() -> None:
    a = dictionary(1, seq=1, expires=NOW + 100)
    b = dictionary(1, seq=2, expires=NOW + 50)
    c = dictionary(1, seq=2, expires=NOW + 60)
    other = dictionary(2, seq=1)
    best = select_best([a, c, b, other, a])
    assert best == {(a.key, a.subkey): c, (other.key, other.subkey): other}
    assert record_rank(c) > record_rank(b) > record_rank(a)
    assert select_best([]) == {}


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.binary(max_size=20)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
_tamper = st.sampled_from(["key", "name", "value", "seq", "expires", "publisher", "signature"])


@settings(max_examples=60, deadline=None)
@given(
    value=_values,
    other=_values,
    field=_tamper,
    seq=st.integers(0, 2**63 - 2),
    flip=st.integers(0, 63),
)
def test_tampered_records_never_validate(
    value: Any, other: Any, field: str, seq: int, flip: int
) -> None:
    """Property (SPEC.md §12.5.3): change any signed field, the signature fails."""
    record = named(3, b"nm", value, seq=seq)
    assert _code(record) is None
    changes: dict[str, Any] = {
        "key": named_key(peer(4), b"nm"),
        "name": b"nm2",
        "value": other,
        "seq": seq + 1,
        "expires": record.expires - 1,
        "publisher": peer(4),
        "signature": bytes(
            b ^ (1 << (flip % 8)) if i == flip else b for i, b in enumerate(record.signature)
        ),
    }
    tampered = with_fields(record, **{field: changes[field]})
    if tampered.value_bytes == record.value_bytes and field == "value":
        return  # hypothesis drew an equal value: nothing was tampered with
    assert _code(tampered) is not None


@settings(max_examples=30, deadline=None)
@given(value=_values, signer=st.integers(5, 8))
def test_forged_records_never_validate(value: Any, signer: int) -> None:
    """A record for peer 1's key signed by anyone else is refused, whatever it claims."""
    forged = make_dictionary_record(identity(signer), bytes(32), value, seq=5, expires=NOW + 9)
    claim = with_fields(forged, publisher=peer(1), subkey=peer(1).raw)
    assert _code(claim) == ErrorCode.RECORD_BAD_SIGNATURE
    assert _code(with_fields(forged, subkey=peer(1).raw)) == ErrorCode.RECORD_FOREIGN_SUBKEY


def test_spec_vectors() -> None:
    """The test vectors printed in SPEC.md §12.5.6, byte for byte."""
    from petalproto.core._identity import Identity

    ident = Identity.from_seed(hashlib.sha256(b"petalproto-dht-vector").digest())
    assert ident.peer_id.raw.hex() == (
        "079486e4bd31e63aab127e7ce0b6c239da44e1af98afa5fdc45979d9cb4c1f76"
    )
    record = make_named_record(
        ident, b"model/smollm2", {"blocks": [0, 30], "v": 1}, seq=3, expires=1767225600
    )
    assert record.key.hex() == "5fd0f8cc256c8d832c7573b4c465ce2b97229f760ec9121c6f0f4eb1f379f7d3"
    assert record.signed_bytes.hex() == (
        "706574616c70726f746f2d6468742d7265636f72643a96c4205fd0f8cc256c8d832c7573b4c465ce2b"
        "97229f760ec9121c6f0f4eb1f379f7d3c400c40d6d6f64656c2f736d6f6c6c6d3282a6626c6f636b73"
        "92001ea1760103ce6955b900"
    )
    assert record.signature.hex() == (
        "076067d4fb04786ff9f4ba1ced8bd165ba6cbe02330522e161e0fe5d028ad6229d5649df746285c8c10f"
        "ea2c8b8b06075258545ff2fd0698057c55d1caba7500"
    )
    entry = make_dictionary_record(
        ident, hashlib.sha256(b"block:0").digest(), {"port": 4001}, seq=1, expires=1767225600
    )
    assert entry.signed_bytes.hex() == (
        "706574616c70726f746f2d6468742d7265636f72643a96c420a0a380ff280e490df23e6494ad51db22"
        "f9d005f7662fbda3bb56625e270d3869c420079486e4bd31e63aab127e7ce0b6c239da44e1af98afa5"
        "fdc45979d9cb4c1f76c40081a4706f7274cd0fa101ce6955b900"
    )
    assert entry.signature.hex() == (
        "0b7e3f1df3790c90aca3b1c07c8801e510e7bad1e80aebf2080a94d288914063e1adb3e7114e2d483b4a"
        "eaa1710069346af23618515dd69b248a2b72285a9706"
    )
    validate_record(record, 1767225599)
    validate_record(entry, 1767225599)
