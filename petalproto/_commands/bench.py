"""``petal bench KIND``: JSON figures, as ratios against a baseline taken in the same run.

``transport``, ``dht`` and ``route`` are ours; a package above registers more kinds in the
entry-point group ``petal.bench`` (the reference peer adds ``swarm``): NAME = a module with
``HELP``, ``add_arguments(parser)`` (optional) and ``bench(args)`` returning the JSON figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from ._common import positive_int

#: The one-line help of ``petal bench``.
HELP = "measure transport, DHT, routing and swarm performance (JSON)"
#: The entry-point group of the kinds other packages add.
GROUP = "petal.bench"


def _transport(args: argparse.Namespace) -> Any:
    from petalproto._bench_transport import run

    return run()


def _dht(args: argparse.Namespace) -> Any:
    from petalproto._bench_dht import run

    kwargs: dict[str, Any] = {"nodes": args.nodes, "seed": args.seed}
    if args.lookups:
        kwargs["lookups"] = args.lookups
    return run(**kwargs)


def _dht_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=positive_int(), default=10_000, help="dht: simulated nodes")
    parser.add_argument(
        "--lookups", type=positive_int(), default=None, help="dht: lookups per scenario"
    )
    # Shared with ``route`` (one parser holds every kind's options): defined here only.
    parser.add_argument("--seed", type=int, default=0, help="dht, route: random seed")


def _route(args: argparse.Namespace) -> Any:
    from petalproto._bench_route import run

    return run(servers=args.servers, blocks=args.blocks, plans=args.plans, seed=args.seed)


def _route_arguments(parser: argparse.ArgumentParser) -> None:
    # ``--seed`` comes from ``_dht_arguments``.
    parser.add_argument("--servers", type=positive_int(), default=1000, help="route: servers")
    parser.add_argument("--blocks", type=positive_int(), default=100, help="route: model blocks")
    parser.add_argument("--plans", type=positive_int(), default=200, help="route: plans to time")


# kind -> (help, add_arguments, bench)
_OWN = {
    "transport": ("handshake time and encrypted throughput", None, _transport),
    "dht": ("10,000-node DHT lookup simulation", _dht_arguments, _dht),
    "route": ("chain planning over 1,000 servers x 100 blocks", _route_arguments, _route),
}


def _registered() -> dict[str, ModuleType]:
    kinds = {}
    for ep in entry_points(group=GROUP):
        if ep.name not in _OWN:
            kinds[ep.name] = importlib.import_module(ep.value)
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    others = _registered()
    helps = {name: help_text for name, (help_text, _, _) in _OWN.items()}
    helps |= {name: str(getattr(mod, "HELP", "")) for name, mod in others.items()}
    parser.add_argument(
        "kind",
        choices=sorted(helps),
        help="what to measure: " + "; ".join(f"{k}: {helps[k]}" for k in sorted(helps)),
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON figures")
    for _, add, _ in _OWN.values():
        if add is not None:
            add(parser)
    for mod in others.values():
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(parser)
    parser.set_defaults(_bench_kinds=others)


def run(args: argparse.Namespace) -> int:
    if args.kind in _OWN:
        result = _OWN[args.kind][2](args)
    else:
        result = args._bench_kinds[args.kind].bench(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0
