"""``petal bench {transport,dht,swarm}``: JSON figures, as ratios against a baseline taken
in the same run."""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from ._common import positive_int

# kind -> (module, help)
_KINDS = {
    "transport": ("petalproto._bench_transport", "handshake time and encrypted throughput"),
    "dht": ("petalproto._bench_dht", "10,000-node DHT lookup simulation"),
    "swarm": ("reference_peer._bench_swarm", "the default model through local peers"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(_KINDS), help="what to measure")
    parser.add_argument("--json", action="store_true", help="print only the JSON figures")
    parser.add_argument("--nodes", type=positive_int(), default=10_000, help="dht: simulated nodes")
    parser.add_argument(
        "--lookups", type=positive_int(), default=None, help="dht: lookups per scenario"
    )
    parser.add_argument("--seed", type=int, default=0, help="dht: simulation seed")
    parser.add_argument("--peers", type=positive_int(), default=3, help="swarm: peer processes")
    parser.add_argument(
        "--tokens", type=positive_int(), default=None, help="swarm: tokens to generate"
    )


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(_KINDS[args.kind][0])
    kwargs: dict[str, Any] = {}
    if args.kind == "dht":
        kwargs = {"nodes": args.nodes, "seed": args.seed}
        if args.lookups:
            kwargs["lookups"] = args.lookups
    elif args.kind == "swarm":
        kwargs = {"peers": args.peers}
        if args.tokens:
            kwargs["tokens"] = args.tokens
    result = module.run(**kwargs)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0
