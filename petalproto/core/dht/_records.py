"""Signed DHT records: format, signature, validation and selection (SPEC.md §12.5).

A record lives in a *slot* ``(key, subkey)``.  There are two kinds, told apart by the subkey:

* **Named** records (BEP 44 mutable items with a salt): ``subkey`` is empty, the record
  carries a ``name`` and ``key == SHA-256(publisher ‖ name)``.  Only the publisher can sign
  a record for that key, so nobody can write another's key.
* **Dictionary** records: ``subkey`` is the publisher's 32-byte peer id and ``name`` is empty;
  the key is any 32 bytes (for example the hash of a model block name).  Many publishers
  announce under one key, each in its own slot, and none can overwrite another.

The signature is Ed25519 over ``DOMAIN ‖ canonical-msgpack([key, subkey, name, value, seq,
expires])``.  A msgpack array is its header followed by its elements, so this is the same as
concatenating separately encoded pieces (BEP 44's defence against length confusion) and no
field can bleed into the next.  Because the value has no floats and maps are sorted, a
verifier re-encoding the decoded fields gets back exactly the bytes that were signed.

``validate_record`` is a pure function of the record and the wall-clock time, the
libp2p ``Validator.Validate``; ``record_rank`` orders records for ``Validator.Select``:
higher ``seq`` wins, then later ``expires``.  Everything here is stateless; the store that
enforces sequence monotonicity and quotas is ``_store.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .._errors import ErrorCode, LocalProtocolError
from .._identity import Identity, PeerId
from .._msgpack import encode, encode_canonical
from ._errors import RecordRejected

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_RECORD_TTL",
    "MAX_VALUE_BYTES",
    "RECORD_DOMAIN",
    "Record",
    "make_dictionary_record",
    "make_named_record",
    "named_key",
    "parse_record",
    "record_rank",
    "select_best",
    "validate_record",
]

#: Domain separation for record signatures (SPEC.md §12.5.2); no other signature of the
#: protocol starts with these bytes.
RECORD_DOMAIN = b"petalproto-dht-record:"
#: Largest canonical encoding of a value (SPEC.md §12.7).  BEP 44 allows 1000 bytes; a
#: server announcement with a few spans and throughput figures needs a few hundred.
MAX_VALUE_BYTES = 4096
#: Longest name of a named record: BEP 44's salt limit.
MAX_NAME_BYTES = 64
#: How far in the future ``expires`` may lie (24 h, the Kademlia paper's tExpire), plus
#: ``CLOCK_SKEW`` seconds of tolerance for the storer's clock.
MAX_RECORD_TTL = 86_400
CLOCK_SKEW = 300
_MAX_U63 = (1 << 63) - 1
_FIELDS = frozenset({"key", "subkey", "name", "value", "seq", "expires", "publisher", "sig"})


def named_key(publisher: PeerId, name: bytes) -> bytes:
    """The key of a named record: ``SHA-256(publisher ‖ name)`` (BEP 44's key with salt)."""
    return hashlib.sha256(publisher.raw + name).digest()


def _check_u63(name: str, value: object) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int")
    if not 0 <= value <= _MAX_U63:
        raise ValueError(f"{name} must be in 0..2**63-1")


def _check_bytes(name: str, value: object, size: int | None = None) -> None:
    if type(value) is not bytes:
        raise TypeError(f"{name} must be bytes")
    if size is not None and len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One signed record (SPEC.md §12.5.1).  Construction checks types, not validity.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: a field is out of range, or ``value`` has floats or non-str map keys.
    """

    key: bytes
    subkey: bytes
    name: bytes
    value: Any
    seq: int
    expires: int
    publisher: PeerId
    signature: bytes
    value_bytes: bytes = field(init=False, repr=False, compare=False)
    signed_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_bytes("key", self.key, 32)
        _check_bytes("subkey", self.subkey)
        _check_bytes("name", self.name)
        _check_bytes("signature", self.signature, 64)
        _check_u63("seq", self.seq)
        _check_u63("expires", self.expires)
        if not isinstance(self.publisher, PeerId):
            raise TypeError("publisher must be a PeerId")
        try:
            value_bytes = encode_canonical(self.value)
        except LocalProtocolError as exc:
            raise ValueError(f"value cannot be signed: {exc}") from exc
        object.__setattr__(self, "value_bytes", value_bytes)
        object.__setattr__(self, "signed_bytes", _signing_input(self, value_bytes))

    @property
    def is_named(self) -> bool:
        """True for a named record (empty subkey), False for a dictionary record."""
        return not self.subkey

    def to_wire(self) -> dict[str, Any]:
        """The wire form: a map with exactly the eight fields of SPEC.md §12.5.1."""
        return {
            "key": self.key,
            "subkey": self.subkey,
            "name": self.name,
            "value": self.value,
            "seq": self.seq,
            "expires": self.expires,
            "publisher": self.publisher.raw,
            "sig": self.signature,
        }


def _signing_input(record: Record, value_bytes: bytes) -> bytes:
    # canonical-msgpack([key, subkey, name, value, seq, expires]): fixarray(6) header, then
    # each element encoded on its own; the value in its canonical (sorted, float-free) form.
    return b"".join(
        (
            RECORD_DOMAIN,
            b"\x96",
            encode(record.key),
            encode(record.subkey),
            encode(record.name),
            value_bytes,
            encode(record.seq),
            encode(record.expires),
        )
    )


def _sign(
    identity: Identity,
    key: bytes,
    subkey: bytes,
    name: bytes,
    value: Any,
    *,
    seq: int,
    expires: int,
) -> Record:
    unsigned = Record(
        key=key,
        subkey=subkey,
        name=name,
        value=value,
        seq=seq,
        expires=expires,
        publisher=identity.peer_id,
        signature=bytes(64),
    )
    if len(unsigned.value_bytes) > MAX_VALUE_BYTES:
        raise ValueError(f"value encodes to more than {MAX_VALUE_BYTES} bytes")
    return Record(
        key=key,
        subkey=subkey,
        name=name,
        value=value,
        seq=seq,
        expires=expires,
        publisher=identity.peer_id,
        signature=identity.sign(unsigned.signed_bytes),
    )


def make_named_record(
    identity: Identity, name: bytes, value: Any, *, seq: int, expires: int
) -> Record:
    """Sign a named record; its key is ``named_key(identity.peer_id, name)``.

    Args:
        identity: the publisher.
        name: up to ``MAX_NAME_BYTES`` bytes that name the record.
        value: any msgpack value without floats, at most ``MAX_VALUE_BYTES`` encoded.
        seq: the sequence number; a later version needs a higher one.
        expires: unix time in seconds after which nobody serves the record.

    Returns:
        The signed record.

    Raises:
        TypeError, ValueError: a field is out of range or the value is too large.
    """
    _check_bytes("name", name)
    if len(name) > MAX_NAME_BYTES:
        raise ValueError(f"a name is at most {MAX_NAME_BYTES} bytes")
    return _sign(
        identity, named_key(identity.peer_id, name), b"", name, value, seq=seq, expires=expires
    )


def make_dictionary_record(
    identity: Identity, key: bytes, value: Any, *, seq: int, expires: int
) -> Record:
    """Sign a dictionary record in ``identity``'s own slot under ``key``.

    Args:
        identity: the publisher; its peer id becomes the subkey.
        key: the 32-byte key shared by all publishers of this dictionary.
        value: any msgpack value without floats, at most ``MAX_VALUE_BYTES`` encoded.
        seq: the sequence number; a later version needs a higher one.
        expires: unix time in seconds after which nobody serves the record.

    Returns:
        The signed record.

    Raises:
        TypeError, ValueError: a field is out of range or the value is too large.
    """
    return _sign(identity, key, identity.peer_id.raw, b"", value, seq=seq, expires=expires)


def parse_record(obj: object) -> Record:
    """Build a record from its wire form, checking the schema only (SPEC.md §12.5.1).

    Raises:
        RecordRejected: ``RECORD_INVALID`` for a schema violation.
    """
    if not isinstance(obj, dict) or obj.keys() != _FIELDS:
        raise RecordRejected(ErrorCode.RECORD_INVALID, "a record is a map of eight fields")
    try:
        return Record(
            key=obj["key"],
            subkey=obj["subkey"],
            name=obj["name"],
            value=obj["value"],
            seq=obj["seq"],
            expires=obj["expires"],
            publisher=PeerId.from_bytes(obj["publisher"]),
            signature=obj["sig"],
        )
    except (TypeError, ValueError) as exc:
        raise RecordRejected(ErrorCode.RECORD_INVALID, f"bad record: {exc}") from exc


def validate_record(record: Record, unix_now: float) -> None:
    """Check a record the way both storers and readers must (SPEC.md §12.5.3).

    The checks run in this order, and the first failure decides the code: sizes, slot
    ownership (subkey and key derivation), lifetime, signature.

    Args:
        record: the record, as built by ``parse_record`` or a ``make_*`` function.
        unix_now: the current wall-clock time in unix seconds.

    Raises:
        RecordRejected: with ``RECORD_TOO_LARGE``, ``RECORD_FOREIGN_SUBKEY``,
            ``RECORD_INVALID``, ``RECORD_EXPIRED`` or ``RECORD_BAD_SIGNATURE``.
    """
    if len(record.name) > MAX_NAME_BYTES or len(record.value_bytes) > MAX_VALUE_BYTES:
        raise RecordRejected(ErrorCode.RECORD_TOO_LARGE, "name or value too large")
    if record.is_named:
        if record.key != named_key(record.publisher, record.name):
            raise RecordRejected(ErrorCode.RECORD_INVALID, "key is not SHA-256(publisher‖name)")
    elif record.subkey != record.publisher.raw:
        raise RecordRejected(ErrorCode.RECORD_FOREIGN_SUBKEY, "subkey is not the publisher")
    elif record.name:
        raise RecordRejected(ErrorCode.RECORD_INVALID, "a dictionary record has no name")
    if record.expires <= unix_now:
        raise RecordRejected(ErrorCode.RECORD_EXPIRED, "record expired")
    if record.expires > unix_now + MAX_RECORD_TTL + CLOCK_SKEW:
        raise RecordRejected(ErrorCode.RECORD_INVALID, "expires too far in the future")
    if not record.publisher.verify(record.signature, record.signed_bytes):
        raise RecordRejected(ErrorCode.RECORD_BAD_SIGNATURE, "bad signature")


def record_rank(record: Record) -> tuple[int, int, bytes]:
    """Sort key for ``Select`` (SPEC.md §12.5.4): higher seq, then later expiry, wins.

    The value bytes break the remaining tie (a publisher that signed two values under one
    seq) so that every reader picks the same record.
    """
    return (record.seq, record.expires, record.value_bytes)


def select_best(records: Iterable[Record]) -> dict[tuple[bytes, bytes], Record]:
    """The best record of every slot ``(key, subkey)`` among ``records``."""
    best: dict[tuple[bytes, bytes], Record] = {}
    for record in records:
        slot = (record.key, record.subkey)
        current = best.get(slot)
        if current is None or record_rank(record) > record_rank(current):
            best[slot] = record
    return best
