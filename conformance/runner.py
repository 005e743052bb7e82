"""``petal-conformance``: run the conformance cases against a live peer.

    petal-conformance --target PEERID@HOST:PORT [--cases GLOB[,GLOB]] [--exclude GLOB]
                      [--report FILE] [--strict] [--list] [--timeout SECONDS]
                      [--deadline SECONDS] [--handshake-timeout SECONDS]

One line per case on stdout; the last line is exactly ``N passed, N failed``.  The exit
status is 0 when nothing failed, 1 when a case failed (NON-STRICT counts only with
``--strict``), and 2 when nothing failed but a case could not run (ERROR: the harness or
the network let us down, which says nothing about the target either way).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import trio

from petalproto import __version__
from petalproto.core import Address, split_host_port

from ._harness import Case, Options, Result, Verdict, count, run_cases
from .cases import load_cases

__all__ = ["main"]

AGENT = f"petal-conformance/{__version__}"
EXIT_FAILED = 1
EXIT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petal-conformance",
        description="Check a petalproto peer against SPEC.md, case by case.",
    )
    parser.add_argument(
        "--target",
        metavar="ADDRESS",
        help="PEERID@HOST:PORT (or HOST:PORT, which skips the peer id check)",
    )
    parser.add_argument(
        "--cases",
        action="append",
        metavar="GLOB",
        help="case ids or sections to run, comma-separated globs such as "
        "'6.*,8.2/1' (default: all); may be repeated",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="case ids or sections to leave out, as for --cases",
    )
    parser.add_argument("--report", metavar="FILE", help="write a JSON report here")
    parser.add_argument(
        "--strict", action="store_true", help="count NON-STRICT (SHOULD violated) as failed"
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long each case waits for its outcome (default 2)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="for the whole run; later cases get ERROR (default 600)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="the responder handshake timeout of SPEC.md §6.7 (default 5)",
    )
    return parser


def parse_target(text: str, **kwargs: Any) -> Options:
    """``PEERID@HOST:PORT`` or ``HOST:PORT`` as run options.

    Raises:
        ValueError: neither form.
    """
    if "@" in text:
        return Options.for_address(Address.parse(text), **kwargs)
    host, port = split_host_port(text)
    return Options(host=host, port=port, **kwargs)


def _split(patterns: Sequence[str] | None) -> list[str]:
    return [p for item in patterns or () for p in item.split(",")]


def select(patterns: Sequence[str] | None, exclude: Sequence[str] | None = None) -> list[Case]:
    """The cases ``--cases`` and ``--exclude`` name, in id order."""
    registry = load_cases()
    chosen = registry.select(_split(patterns)) if patterns else registry.all()
    dropped = {c.id for c in registry.select(_split(exclude))}
    return [c for c in chosen if c.id not in dropped]


def _list(cases: list[Case], out: TextIO) -> None:
    for c in cases:
        tag = " (self-check)" if c.self_check else ""
        print(f"{c.id:<8} {c.level.value:<6} {c.description}{tag}", file=out)
        print(f"{'':<15} requirement: {c.requirement}", file=out)
        print(f"{'':<15} expected: {c.expected}", file=out)


def format_result(result: Result) -> str:
    """The console line of one result."""
    line = (
        f"{result.verdict.value:<13} {result.case.id:<8} {result.case.description} "
        f"({result.duration_ms:.0f} ms)"
    )
    if result.verdict is not Verdict.PASS:
        line += f" -- {result.observed}"
    return line


def report(
    results: list[Result], options: Options, *, strict: bool, started: str, duration_ms: float
) -> dict[str, Any]:
    """The JSON report, Autobahn's index and per-case reports in one document."""
    passed, failed = count(results, strict=strict)
    tally: dict[str, int] = {v.value: 0 for v in Verdict}
    for r in results:
        tally[r.verdict.value] += 1
    return {
        "agent": AGENT,
        "target": {
            "host": options.host,
            "port": options.port,
            "peer_id": None if options.peer_id is None else str(options.peer_id),
        },
        "strict": strict,
        "timeout_s": options.timeout,
        "started": started,
        "duration_ms": round(duration_ms, 3),
        "summary": {"passed": passed, "failed": failed, "verdicts": tally},
        "cases": {r.case.id: r.to_json() for r in results},
    }


async def run(cases: list[Case], options: Options, *, deadline: float, out: TextIO) -> list[Result]:
    """Run ``cases``, printing each result as it comes."""

    def show(result: Result) -> None:
        print(format_result(result), file=out, flush=True)

    return await run_cases(cases, options, deadline=deadline, on_result=show)


def exit_status(results: list[Result], *, strict: bool) -> int:
    _, failed = count(results, strict=strict)
    if failed:
        return EXIT_FAILED
    if any(r.verdict is Verdict.ERROR for r in results):
        return EXIT_ERROR
    return 0


def main(argv: list[str] | None = None) -> int:
    """The console script. Returns: the exit status."""
    args = _parser().parse_args(argv)
    out = sys.stdout
    cases = select(args.cases, args.exclude)
    if args.list:
        _list(cases, out)
        return 0
    if not args.target:
        print("petal-conformance: --target is required (or use --list)", file=sys.stderr)
        return EXIT_ERROR
    try:
        options = parse_target(
            args.target, timeout=args.timeout, handshake_timeout=args.handshake_timeout
        )
    except ValueError as exc:
        print(f"petal-conformance: bad --target: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not cases:
        print(f"petal-conformance: no case matches {args.cases}", file=sys.stderr)
        return EXIT_ERROR
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    results = trio.run(lambda: run(cases, options, deadline=args.deadline, out=out))
    elapsed = (time.perf_counter() - t0) * 1000
    if args.report:
        doc = report(results, options, strict=args.strict, started=started, duration_ms=elapsed)
        Path(args.report).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    passed, failed = count(results, strict=args.strict)
    print(f"{passed} passed, {failed} failed", file=out, flush=True)
    return exit_status(results, strict=args.strict)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
