"""Server announcements in the DHT (SPEC.md §13.7).

A server publishes one dictionary record under ``spans_key(model)``, its peer id as the
sub-key, so that every server of a model announces under the same key and none can
overwrite another.  The record is short-lived and refreshed, so that its numbers (free cache,
throughput, open sessions) stay current and a server that vanished drops out within minutes;
a clean shutdown withdraws it at once by publishing ``nil`` with a higher sequence number.
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

__all__ = [
    "ANNOUNCE_INTERVAL",
    "SPANS_PREFIX",
    "quantization_of",
    "sessions_of",
    "spans_from_records",
    "spans_key",
]

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
        "quantization": info.get("quantization"),
        # Load, for the clients' planners (§13.6): open sessions and the most it takes.
        "sessions": int(info.get("sessions") or 0),
        "max_sessions": _int_or_none(info.get("max_sessions")),
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
                    quantization=quantization_of(value.get("quantization")),
                    sessions=sessions_of(value.get("sessions")) or 0,
                    max_sessions=sessions_of(value.get("max_sessions")),
                )
            )
        except (KeyError, TypeError, ValueError):
            log.debug("skipping a malformed announcement from %s", record.publisher)
    return spans


def quantization_of(value: Any) -> str | None:
    """SPEC.md §13.8: nil or text (an unknown text ranks below every precision)."""
    if value is not None and not isinstance(value, str):
        raise TypeError("quantization must be text or nil")
    return value


def sessions_of(value: Any) -> int | None:
    """SPEC.md §13.7: a session count, or None when the value is missing or malformed (a
    reader ignores a bad ``sessions`` or ``max_sessions`` rather than the announcement)."""
    if type(value) is not int or value < 0:
        return None
    return value


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


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
    """Announce now, report started, then refresh every ``interval`` seconds until
    cancelled.  Each announcement is a put that must be acknowledged by a quorum of the
    nodes closest to the key (SPEC.md §12.8.3); it is tried again a few times, and a warning
    names how many nodes took it when too few did.  A server alone in its swarm (no initial
    peers, nobody in its table) keeps the record in its own store and says so at INFO.
    Withdrawing is ``withdraw``'s job: it needs the DHT running."""
    await _announce(
        dht,
        announcement(identity, server.model, server.info(), address, lifetime=lifetime),
        interval,
    )
    task_status.started()
    while True:
        await trio.sleep(interval)
        await _announce(
            dht,
            announcement(identity, server.model, server.info(), address, lifetime=lifetime),
            interval,
        )


async def _announce(dht: Any, record: Record, interval: float) -> None:
    try:
        # Alone, nobody can acknowledge: one try, so a lone server starts at once.
        attempts = 1 if not dht.initial_peers and not len(dht.node.table) else 3
        result = await dht.publish(record, attempts=attempts, backoff=min(1.0, interval / 8))
    except Exception as exc:
        log.warning("could not announce ourselves: %r", exc)
        return
    if result.ok:
        log.debug("announcement acknowledged by %d of %d nodes", result.acked, result.targets)
    elif _alone(dht, result):
        log.info("no other DHT node known: the announcement is in our own store only")
    else:
        log.warning(
            "announcement acknowledged by %d of %d nodes (quorum %d): clients may not find us",
            result.acked,
            result.targets,
            result.quorum,
        )


def _alone(dht: Any, result: Any) -> bool:
    # A swarm of one: we were given nobody to join and nobody found us yet.
    return result.targets == 0 and not dht.initial_peers and not len(dht.node.table)


async def withdraw(
    dht: Any,
    identity: Identity,
    model: str,
    *,
    timeout: float = 5.0,
    lifetime: int = ANNOUNCE_LIFETIME,
) -> bool:
    """Replace our announcement with a withdrawal (SPEC.md §13.7).

    Returns:
        True when a quorum of the nodes closest to the key acknowledged it; the log says
        how many did ("withdrawn (N nodes)" counts only those, never our own store).
    """
    with trio.move_on_after(timeout):
        try:
            result = await dht.publish(withdrawal(identity, model, lifetime=lifetime))
        except Exception as exc:
            log.warning("could not withdraw our announcement: %r", exc)
            return False
        if result.ok:
            log.info("announcement withdrawn (%d nodes)", result.acked)
        elif _alone(dht, result):
            log.info("announcement withdrawn (0 nodes: no other DHT node known)")
        else:
            log.warning(
                "withdrawal acknowledged by %d of %d nodes (quorum %d): "
                "clients may still find our announcement until it expires",
                result.acked,
                result.targets,
                result.quorum,
            )
        return bool(result.ok)
    log.warning("withdrawing our announcement timed out")
    return False
