"""``petal status``: what a swarm's DHT knows, seen by a client (SPEC.md §12, §13.7).

    petal status --initial-peers ADDRESS ... [--json] [--key HEX | --model NAME]

The command joins the DHT as a client (it sends no ``listen``, so it enters nobody's routing
table), then prints its routing table, each contact's liveness by ``dht.ping``, and either
the records under ``--key`` or the span announcements of ``--model`` (the dictionary record
of SPEC.md §13.7) as a table of servers and the blocks they cover.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any

import trio

from petalproto.core import Address, Identity
from petalproto.core.dht import Contact, Record
from petalproto.net import ConnectionPool
from petalproto.net._dht import DhtService

from ._common import UsageError, address_list, bounded_float, check_initial_peers, parse_peers

#: The one-line help of ``petal status``.
HELP = "show what a swarm's DHT knows"

#: The key prefix of span announcements (SPEC.md §13.7).
SPANS_PREFIX = b"petalproto/spans/v1:"
#: Liveness pings in flight at once, and how long each may take.
_PING_CONCURRENCY, _PING_TIMEOUT = 32, 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--initial-peers",
        nargs="+",
        required=True,
        type=address_list,
        metavar="ADDRESS",
        help="DHT nodes to join through (PEERID@HOST:PORT)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--key", metavar="HEX", help="show the records under this 32-byte key")
    which.add_argument("--model", metavar="NAME", help="show the servers announcing NAME")
    parser.add_argument(
        "--timeout",
        type=bounded_float(0.0, low_open=True),
        default=20.0,
        metavar="SECONDS",
        help="give up after this long (default 20)",
    )
    parser.add_argument("--no-ping", action="store_true", help="do not ping the contacts")


def spans_key(model: str) -> bytes:
    """The DHT key of a model's span announcements: SHA-256 of the prefix and the name."""
    return hashlib.sha256(SPANS_PREFIX + model.encode()).digest()


def _parse_key(text: str) -> bytes:
    """``--key``'s value (checked in ``run``, after the arguments parsed).

    Raises:
        UsageError: not 64 hex digits.
    """
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise UsageError(
            f"argument --key: --key wants 64 hex digits, got {text!r} "
            "(give a 32-byte key in hex, or --model NAME)"
        )
    return key


# Collecting -------------------------------------------------------------------------------


async def collect(
    initial: list[Address], *, key: bytes | None, model: str | None, ping: bool
) -> dict[str, Any]:
    """Join as a client and gather the report (a JSON-ready dict).

    Raises:
        trio.TooSlowError: only when the caller's deadline passes (joining retries).
    """
    identity = Identity.from_seed(os.urandom(32))
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(nursery, identity)
        dht = DhtService(pool, identity, router=None, listen=None, initial_peers=initial)
        start = trio.current_time()
        await nursery.start(dht.run)
        report: dict[str, Any] = {
            "client": str(identity.peer_id),
            "initial_peers": [str(a) for a in initial],
            "join_s": round(trio.current_time() - start, 4),
        }
        if model is not None:
            key = spans_key(model)
        records = None if key is None else await dht.get(key)
        table = dht.routing_table_snapshot()
        rtts = await _ping_all(dht, [c for cs in table.values() for c in cs]) if ping else {}
        report["routing_table"] = [
            _contact_json(bucket, contact, rtts.get(contact), ping)
            for bucket in sorted(table)
            for contact in table[bucket]
        ]
        if records is not None and key is not None:
            report["key"] = key.hex()
            report["records"] = [_record_json(r) for r in records]
        if model is not None and records is not None:
            report["model"] = model_report(model, records)
        await pool.aclose()
        nursery.cancel_scope.cancel()
    return report


async def _ping_all(dht: DhtService, contacts: list[Contact]) -> dict[Contact, float | None]:
    rtts: dict[Contact, float | None] = {}
    limit = trio.CapacityLimiter(_PING_CONCURRENCY)

    async def one(contact: Contact) -> None:
        rtts[contact] = None
        async with limit:
            with trio.move_on_after(_PING_TIMEOUT):
                try:
                    rtts[contact] = await dht.ping(contact)
                except Exception:  # any failure just means "not alive"
                    return

    async with trio.open_nursery() as nursery:
        for contact in contacts:
            nursery.start_soon(one, contact)
    return rtts


def _contact_json(bucket: int, contact: Contact, rtt: float | None, pinged: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bucket": bucket,
        "peer_id": str(contact.peer_id),
        "host": contact.host,
        "port": contact.port,
    }
    if pinged:
        out["alive"] = rtt is not None
        out["rtt_ms"] = None if rtt is None else round(rtt * 1000, 3)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _name_text(name: bytes) -> str:
    try:
        return name.decode()
    except UnicodeDecodeError:
        return "0x" + name.hex()


def _record_json(record: Record) -> dict[str, Any]:
    return {
        "kind": "named" if record.is_named else "dictionary",
        "key": record.key.hex(),
        "subkey": record.subkey.hex(),
        "name": _name_text(record.name),
        "publisher": str(record.publisher),
        "seq": record.seq,
        "expires": record.expires,
        "expires_in_s": round(record.expires - time.time(), 1),
        "value": _jsonable(record.value),
    }


def _announcement(record: Record) -> dict[str, Any]:
    """A span announcement's fields, checked (SPEC.md §13.7).

    Raises:
        ValueError: the value is not an announcement of its own publisher.
    """
    value = record.value
    if record.is_named or not isinstance(value, dict):
        raise ValueError("not a dictionary record holding a map")
    addr, start, end = value.get("addr"), value.get("start"), value.get("end")
    if not isinstance(addr, str) or type(start) is not int or type(end) is not int:
        raise ValueError("addr, start or end missing or of the wrong type")
    if not 0 <= start < end:
        raise ValueError(f"empty span {start}:{end}")
    if Address.parse(addr).peer_id != record.publisher:
        raise ValueError("addr names another peer than the publisher")
    throughput = value.get("throughput")
    return {
        "peer_id": str(record.publisher),
        "addr": addr,
        "start": start,
        "end": end,
        "throughput": throughput / 1000 if type(throughput) is int else None,
        "cache_tokens_free": value.get("cache_tokens_free"),
        "dtype": value.get("dtype"),
        "quantization": value.get("quantization"),
        "precision": _precision(value.get("dtype"), value.get("quantization")),
        "seq": record.seq,
        "expires_in_s": round(record.expires - time.time(), 1),
    }


def _precision(dtype: Any, quantization: Any) -> str | None:
    """SPEC.md §13.8: the quantization when there is one, else the dtype (None if neither
    is text)."""
    for value in (quantization, dtype):
        if isinstance(value, str) and value:
            return value
    return None


def model_report(model: str, records: list[Record]) -> dict[str, Any]:
    """The servers of ``model`` and the blocks they cover, from its announcement records."""
    servers, withdrawn, malformed = [], [], []
    for record in records:
        if record.value is None:
            withdrawn.append(str(record.publisher))
            continue
        try:
            servers.append(_announcement(record))
        except ValueError as exc:
            malformed.append({"publisher": str(record.publisher), "reason": str(exc)})
    servers.sort(key=lambda s: (s["start"], s["end"], s["peer_id"]))
    return {
        "name": model,
        "key": spans_key(model).hex(),
        "servers": servers,
        "withdrawn": withdrawn,
        "malformed": malformed,
        "covered": _union([(s["start"], s["end"]) for s in servers]),
    }


def _union(spans: list[tuple[int, int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


# Rendering --------------------------------------------------------------------------------


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def render(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [
        f"client {report['client'][:10]} joined through "
        f"{len(report['initial_peers'])} initial peer(s) in {report['join_s']:.2f} s",
        "",
    ]
    lines += _render_table(report["routing_table"])
    if "model" in report:
        lines += ["", *_render_model(report["model"])]
    elif "records" in report:
        lines += ["", *_render_records(report["key"], report["records"])]
    return "\n".join(lines)


def _render_table(contacts: list[dict[str, Any]]) -> list[str]:
    buckets = {c["bucket"] for c in contacts}
    head = f"routing table: {len(contacts)} contacts in {len(buckets)} buckets"
    if contacts and "alive" in contacts[0]:
        head += f" ({sum(c['alive'] for c in contacts)} answered dht.ping)"
    if not contacts:
        return [head]
    rows = [["bucket", "peer id", "address", "rtt"]]
    for c in contacts:
        rtt = c.get("rtt_ms")
        shown = "-" if "alive" not in c else ("no answer" if rtt is None else f"{rtt:.1f} ms")
        host = f"[{c['host']}]" if ":" in c["host"] else c["host"]
        rows.append([str(c["bucket"]), c["peer_id"][:10], f"{host}:{c['port']}", shown])
    return [head, *_table(rows)]


def _render_precision(server: dict[str, Any]) -> str:
    """``bfloat16``, or a quantization with its compute dtype: ``nf4 (bfloat16)``."""
    precision, dtype = server.get("precision"), server.get("dtype")
    if precision is None:
        return "-"
    if precision != dtype and isinstance(dtype, str) and dtype:
        return f"{precision} ({dtype})"
    return str(precision)


def _render_model(model: dict[str, Any]) -> list[str]:
    servers = model["servers"]
    lines = [f"model {model['name']!r} (key {model['key'][:16]}…): {len(servers)} server(s)"]
    if servers:
        rows = [["peer id", "address", "blocks", "tok/s", "cache free", "precision", "expires in"]]
        for s in servers:
            tput = "-" if s["throughput"] is None else f"{s['throughput']:.1f}"
            cache = "-" if s["cache_tokens_free"] is None else str(s["cache_tokens_free"])
            addr = s["addr"].partition("@")[2]
            rows.append(
                [
                    s["peer_id"][:10],
                    addr,
                    f"{s['start']}:{s['end']}",
                    tput,
                    cache,
                    _render_precision(s),
                    f"{s['expires_in_s']:.0f} s",
                ]
            )
        lines += _table(rows)
    covered = model["covered"]
    lines.append("blocks covered: " + (", ".join(f"{a}:{b}" for a, b in covered) or "none"))
    if len(covered) > 1 or (covered and covered[0][0] > 0):
        gaps, last = [], 0
        for a, b in covered:
            if a > last:
                gaps.append(f"{last}:{a}")
            last = b
        lines.append("gaps: " + ", ".join(gaps))
    if model["withdrawn"]:
        lines.append(f"withdrawn: {', '.join(p[:10] for p in model['withdrawn'])}")
    for bad in model["malformed"]:
        lines.append(f"malformed announcement from {bad['publisher'][:10]}: {bad['reason']}")
    return lines


def _render_records(key: str, records: list[dict[str, Any]]) -> list[str]:
    lines = [f"key {key[:16]}…: {len(records)} record(s)"]
    if records:
        rows = [["kind", "publisher", "name", "seq", "expires in", "value"]]
        for r in records:
            value = json.dumps(r["value"], sort_keys=True)
            value = value if len(value) <= 60 else value[:59] + "…"
            rows.append(
                [
                    r["kind"],
                    r["publisher"][:10],
                    r["name"] or "-",
                    str(r["seq"]),
                    f"{r['expires_in_s']:.0f} s",
                    value,
                ]
            )
        lines += _table(rows)
    return lines


def run(args: argparse.Namespace) -> int:
    initial = parse_peers(args.initial_peers)
    key = None if args.key is None else _parse_key(args.key)

    async def main() -> dict[str, Any]:
        with trio.fail_after(args.timeout):
            # A swarm that is down, or an address with another peer's id, is one line at
            # once rather than the DHT's retries until the timeout.
            await check_initial_peers(initial, strict=True, timeout=args.timeout)
            return await collect(initial, key=key, model=args.model, ping=not args.no_ping)

    try:
        report = trio.run(main)
    except trio.TooSlowError:
        print(
            f"petal status: error: no answer within {args.timeout:g} s (is the swarm "
            "running at --initial-peers? or raise --timeout)",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else render(report))
    return 0
