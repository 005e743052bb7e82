"""Server announcements in the DHT (SPEC.md §13.7).

A server publishes one dictionary record under ``spans_key(model)``, its peer id as the
sub-key, so that every server of a model announces under the same key and none can
overwrite another.  The record is short-lived and refreshed, so that its numbers (free cache,
throughput) stay current and a server that vanished drops out within minutes; a clean
shutdown withdraws it at once by publishing ``nil`` with a higher sequence number.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import trio

from petalproto.core import Address, Identity
from petalproto.core._route import SpanInfo
from petalproto.core.dht import Record, make_dictionary_record

__all__ = ["ANNOUNCE_INTERVAL", "SPANS_PREFIX", "spans_from_records", "spans_key"]

log = logging.getLogger("reference_peer.announce")

SPANS_PREFIX = b"petalproto/spans/v1:"
#: Seconds between refreshes of an announcement.
ANNOUNCE_INTERVAL = 60.0
#: Seconds an announcement stays valid without a refresh.
ANNOUNCE_LIFETIME = 300


def spans_key(model: str) -> bytes:
    """The DHT key under which the servers of ``model`` announce."""
    return hashlib.sha256(SPANS_PREFIX + model.encode()).digest()


def _seq() -> int:
    # Milliseconds since the epoch: increases across restarts of the same identity.
    return int(time.time() * 1000)


def announcement(
    identity: Identity,
    model: str,
    info: dict[str, Any],
    address: Address,
    *,
    lifetime: int = ANNOUNCE_LIFETIME,
) -> Record:
    value = {
        "addr": str(address),
        "start": int(info["start"]),
        "end": int(info["end"]),
        "throughput": int(float(info.get("throughput") or 0.0) * 1000),
        "cache_tokens_free": info.get("cache_tokens_free"),
        "dtype": str(info.get("dtype", "")),
    }
    return make_dictionary_record(
        identity, spans_key(model), value, seq=_seq(), expires=int(time.time()) + lifetime
    )


def withdrawal(identity: Identity, model: str, *, lifetime: int = ANNOUNCE_LIFETIME) -> Record:
    return make_dictionary_record(
        identity, spans_key(model), None, seq=_seq(), expires=int(time.time()) + lifetime
    )


def spans_from_records(records: list[Record], model: str) -> list[SpanInfo]:
    """The live announcements among ``records`` (withdrawn and malformed ones skipped)."""
    spans = []
    for record in records:
        value = record.value
        if not isinstance(value, dict):
            continue
        try:
            address = Address.parse(value["addr"])
            if address.peer_id != record.publisher:
                continue  # a record may only announce its own publisher
            spans.append(
                SpanInfo(
                    address=address,
                    model=model,
                    start=int(value["start"]),
                    end=int(value["end"]),
                    throughput=int(value.get("throughput") or 0) / 1000,
                    cache_tokens_free=value.get("cache_tokens_free"),
                    dtype=str(value.get("dtype", "")),
                )
            )
        except (KeyError, TypeError, ValueError):
            log.debug("skipping a malformed announcement from %s", record.publisher)
    return spans


async def keep_announced(
    dht: Any,
    identity: Identity,
    server: Any,
    address: Address,
    *,
    interval: float = ANNOUNCE_INTERVAL,
    lifetime: int = ANNOUNCE_LIFETIME,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce now, report started, then refresh every ``ANNOUNCE_INTERVAL`` until
    cancelled.  A server alone in its swarm has nobody to store its record yet; it keeps
    trying at every refresh.  Withdrawing is ``withdraw``'s job: it needs the DHT running."""
    try:
        await dht.put(announcement(identity, server.model, server.info(), address, lifetime=lifetime))
    except Exception as exc:
        log.warning("could not announce ourselves yet: %r", exc)
    task_status.started()
    while True:
        await trio.sleep(interval)
        try:
            await dht.put(announcement(identity, server.model, server.info(), address, lifetime=lifetime))
        except Exception as exc:
            log.warning("could not refresh our announcement: %r", exc)


async def withdraw(
    dht: Any, identity: Identity, model: str, *, timeout: float = 5.0, lifetime: int = ANNOUNCE_LIFETIME
) -> bool:
    """Replace our announcement with a withdrawal (SPEC.md §13.7); True if stored."""
    with trio.move_on_after(timeout):
        try:
            stored = await dht.put(withdrawal(identity, model, lifetime=lifetime))
        except Exception as exc:
            log.info("could not withdraw our announcement: %r", exc)
            return False
        log.info("announcement withdrawn (%d nodes)", stored)
        return True
    log.info("withdrawing our announcement timed out")
    return False
