"""Factories for DHT tests: deterministic identities, contacts and records."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from petalproto.core._identity import Identity, PeerId
from petalproto.core.dht import (
    Contact,
    Record,
    common_prefix_length,
    make_dictionary_record,
    make_named_record,
    node_id_of,
)

NOW = 1_700_000_000  # a unix time for record tests


@functools.cache
def identity(i: int) -> Identity:
    """The i-th test identity (always the same key)."""
    return Identity.from_seed(hashlib.sha256(b"dht-test-%d" % i).digest())


def peer(i: int) -> PeerId:
    return identity(i).peer_id


def host_of(i: int) -> str:
    """A public IPv4 address in its own /16 for every i < 46,000."""
    return f"{20 + i // 256}.{i % 256}.0.1"


def contact(i: int, host: str | None = None, port: int = 4001) -> Contact:
    return Contact(peer_id=peer(i), host=host or host_of(i), port=port)


@functools.cache
def in_bucket(owner: int, index: int, count: int, start: int = 1000) -> tuple[int, ...]:
    """``count`` identity numbers whose node ids share exactly ``index`` bits with ``owner``."""
    ours = node_id_of(peer(owner))
    found: list[int] = []
    i = start
    while len(found) < count:
        if i != owner and common_prefix_length(ours, node_id_of(peer(i))) == index:
            found.append(i)
        i += 1
    return tuple(found)


def named(
    i: int = 1, name: bytes = b"n", value: Any = "v", *, seq: int = 1, expires: int = NOW + 3600
) -> Record:
    return make_named_record(identity(i), name, value, seq=seq, expires=expires)


def dictionary(
    i: int = 1, key: bytes = bytes(32), value: Any = "v", *, seq: int = 1, expires: int = NOW + 3600
) -> Record:
    return make_dictionary_record(identity(i), key, value, seq=seq, expires=expires)


def with_fields(record: Record, **changes: Any) -> Record:
    """A copy of ``record`` with some fields changed and the old signature kept."""
    fields = {
        "key": record.key,
        "subkey": record.subkey,
        "name": record.name,
        "value": record.value,
        "seq": record.seq,
        "expires": record.expires,
        "publisher": record.publisher,
        "signature": record.signature,
    }
    fields.update(changes)
    return Record(**fields)
