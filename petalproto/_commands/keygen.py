"""``petal keygen FILE``: write a new Ed25519 identity key file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from petalproto.core import Identity

from ._common import UsageError, new_file, write_atomic

#: The one-line help of ``petal keygen``.
HELP = "create an identity key file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", type=new_file, help="where to write the key (PKCS#8 PEM, mode 0600)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.exists() and not args.force:
        raise UsageError(f"argument file: {path} exists (use --force to overwrite it)")
    if path.is_dir():
        raise UsageError(f"argument file: {path} is a directory (give a file name)")
    identity = Identity.from_seed(os.urandom(32))
    try:
        write_atomic(path, identity.to_pem(), mode=0o600)
    except OSError as exc:
        raise UsageError(f"argument file: cannot write {path}: {exc.strerror}") from None
    print(identity.peer_id)
    return 0
