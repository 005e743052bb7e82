"""``petal-conformance``: run the conformance cases against a live peer.

    petal-conformance --target PEERID@HOST:PORT [--cases GLOB[,GLOB]] [--exclude GLOB]
                      [--report FILE] [--strict] [--list] [--timeout SECONDS]
                      [--deadline SECONDS] [--handshake-timeout SECONDS]
    petal-conformance --role client --dial-command "CMD … {address} …" [same options]

The first form checks a responder (the target listens, the suite dials); the second checks
a client: the suite listens and runs the command for each case, with ``{address}`` replaced
by its dialable address (``conformance._client``).

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
from importlib import import_module
from pathlib import Path
from typing import Any, TextIO

import trio

from petalproto import __version__
from petalproto.core import Address, split_host_port

from ._client import CLIENT_REGISTRY, ClientOptions, run_client_cases
from ._harness import Case, Options, Registry, Result, Verdict, count, run_cases
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
        "--role",
        choices=("responder", "client"),
        default="responder",
        help="check a peer that listens (responder, the default: give --target) or a client "
        "that dials (client: give --dial-command)",
    )
    parser.add_argument(
        "--target",
        metavar="ADDRESS",
        help="PEERID@HOST:PORT (or HOST:PORT, which skips the peer id check)",
    )
    parser.add_argument(
        "--dial-command",
        metavar="COMMAND",
        help="for --role client: the client under test, run once per case with {address} "
        "replaced by the suite's PEERID@HOST:PORT, e.g. "
        "'petal ping {address} --count 3 --payload-bytes 60000'",
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
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="how long each case waits for its outcome (default 2)",
    )
    parser.add_argument(
        "--deadline",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="for the whole run; later cases get ERROR (default 600)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="the responder handshake timeout of SPEC.md §6.7 (default 5)",
    )
    return parser


def _seconds(text: str) -> float:
    """A positive number of seconds, for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


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


def select(
    patterns: Sequence[str] | None,
    exclude: Sequence[str] | None = None,
    *,
    role: str = "responder",
) -> list[Case]:
    """The cases of ``role`` that ``--cases`` and ``--exclude`` name, in id order."""
    registry = _registry(role)
    chosen = registry.select(_split(patterns)) if patterns else registry.all()
    dropped = {c.id for c in registry.select(_split(exclude))}
    return [c for c in chosen if c.id not in dropped]


def _registry(role: str) -> Registry:
    if role == "client":
        import_module("conformance.client_cases")  # its cases register themselves
        return CLIENT_REGISTRY
    return load_cases()


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
    results: list[Result],
    options: Options | ClientOptions,
    *,
    strict: bool,
    started: str,
    duration_ms: float,
) -> dict[str, Any]:
    """The JSON report, Autobahn's index and per-case reports in one document."""
    passed, failed = count(results, strict=strict)
    tally: dict[str, int] = {v.value: 0 for v in Verdict}
    for r in results:
        tally[r.verdict.value] += 1
    target: dict[str, Any]
    if isinstance(options, ClientOptions):
        role, target = "client", {"dial_command": options.dial_command}
    else:
        role = "responder"
        target = {
            "host": options.host,
            "port": options.port,
            "peer_id": None if options.peer_id is None else str(options.peer_id),
        }
    return {
        "agent": AGENT,
        "role": role,
        "target": target,
        "strict": strict,
        "timeout_s": options.timeout,
        "started": started,
        "duration_ms": round(duration_ms, 3),
        "summary": {"passed": passed, "failed": failed, "verdicts": tally},
        "cases": {r.case.id: r.to_json() for r in results},
    }


async def run(
    cases: list[Case], options: Options | ClientOptions, *, deadline: float, out: TextIO
) -> list[Result]:
    """Run ``cases``, printing each result as it comes."""

    def show(result: Result) -> None:
        print(format_result(result), file=out, flush=True)

    if isinstance(options, ClientOptions):
        return await run_client_cases(cases, options, deadline=deadline, on_result=show)
    return await run_cases(cases, options, deadline=deadline, on_result=show)


def exit_status(results: list[Result], *, strict: bool) -> int:
    _, failed = count(results, strict=strict)
    if failed:
        return EXIT_FAILED
    if any(r.verdict is Verdict.ERROR for r in results):
        return EXIT_ERROR
    return 0


def _options(args: argparse.Namespace) -> Options | ClientOptions | str:
    """The run's options from the command line, or what is wrong with it."""
    if args.role == "client":
        if not args.dial_command or "{address}" not in args.dial_command:
            return "--role client needs --dial-command with {address} in it"
        return ClientOptions(args.dial_command, timeout=args.timeout)
    if not args.target:
        return "--target is required (or use --list, or --role client)"
    try:
        return parse_target(
            args.target, timeout=args.timeout, handshake_timeout=args.handshake_timeout
        )
    except ValueError as exc:
        return f"bad --target: {exc}"


def main(argv: list[str] | None = None) -> int:
    """The console script. Returns: the exit status."""
    args = _parser().parse_args(argv)
    out = sys.stdout
    cases = select(args.cases, args.exclude, role=args.role)
    if args.list:
        _list(cases, out)
        return 0
    options = _options(args)
    if args.report and not Path(args.report).resolve().parent.is_dir():
        options = f"--report {args.report}: its directory does not exist"
    if isinstance(options, str):
        print(f"petal-conformance: {options}", file=sys.stderr)
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
        try:
            Path(args.report).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            print(f"petal-conformance: cannot write --report: {exc}", file=sys.stderr)
            return EXIT_ERROR
    passed, failed = count(results, strict=args.strict)
    print(f"{passed} passed, {failed} failed", file=out, flush=True)
    return exit_status(results, strict=args.strict)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
