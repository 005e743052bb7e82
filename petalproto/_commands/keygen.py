"""``petal keygen FILE``: write a new Ed25519 identity key file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from petalproto.core import Identity

from ._common import write_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="where to write the key (PKCS#8 PEM, mode 0600)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.exists() and not args.force:
        print(f"{path} exists; use --force to overwrite", file=sys.stderr)
        return 1
    identity = Identity.from_seed(os.urandom(32))
    write_atomic(path, identity.to_pem(), mode=0o600)
    print(identity.peer_id)
    return 0
