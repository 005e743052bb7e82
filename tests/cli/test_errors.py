"""Every mistake on the ``petal`` command line is one line on stderr, never a traceback.

Each case runs the real command in a subprocess and checks the exit status (2: the command
line is wrong; 1: the run failed), that stderr is exactly one line ``petal CMD: error:
...`` without a traceback or an exception group, and that the line names the argument.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from petalproto.core import Address, Identity

from ._support import NOBODY, dht_node, one_error_line, petal, read_line, running

pytestmark = pytest.mark.slow

#: A llama config of six blocks: enough for ``petal serve`` to get as far as its network
#: (no weights: nothing here loads a span).
TINY_CONFIG = {
    "model_type": "llama",
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    for name, config in [("model", TINY_CONFIG), ("untyped", {"hidden_size": 4})]:
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
    (root / "empty").mkdir()
    (root / "badkey").write_text("not a key\n")
    (root / "key").write_bytes(Identity.from_seed(bytes(range(32))).to_pem())
    return {path.name: path for path in root.iterdir()}


@pytest.fixture(scope="module")
def dht() -> Iterator[Address]:
    with dht_node() as address:
        yield address


def _refused_port() -> int:
    """A loopback port where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# Bad values: argparse's types reject them before anything runs (exit 2). ----------------

_MODEL = "{model}"
BAD_VALUES = [
    (["serve", "--model", "/nonexistent", "--blocks", "0:2"], "--model"),
    (
        ["generate", "--model", "/nonexistent", "--prompt", "hi", "--initial-peers", "{peer}"],
        "--model",
    ),
    (["serve", "--model", "{empty}", "--blocks", "0:2"], "--model"),
    (
        ["serve", "--model", _MODEL, "--blocks", "0:2", "--initial-peers", "garbage"],
        "--initial-peers",
    ),
    (["dht", "--initial-peers", "garbage"], "--initial-peers"),
    (["generate", "--prompt", "hi", "--initial-peers", "h:1"], "--initial-peers"),
    (["serve", "--model", _MODEL, "--blocks", "0:2", "--identity", "{badkey}"], "--identity"),
    (["dht", "--identity", "{badkey}"], "--identity"),
    (["dht", "--identity", "/nonexistent/key"], "--identity"),
    (["dht", "--address-file", "/nonexistent/addr"], "--address-file"),
    (["dht", "--listen", "garbage"], "--listen"),
    (
        ["generate", "--prompt", "hi", "--initial-peers", "{peer}", "--max-new-tokens", "-1"],
        "--max-new-tokens",
    ),
    (["generate", "--prompt", "hi", "--initial-peers", "{peer}", "--top-p", "0"], "--top-p"),
    (["chat", "--initial-peers", "{peer}", "--temperature", "-1"], "--temperature"),
    (["serve", "--model", _MODEL, "--blocks", "0:2", "--max-sessions", "0"], "--max-sessions"),
    (["serve", "--model", _MODEL, "--blocks", "0:2", "--cache-tokens", "-5"], "--cache-tokens"),
    (["serve", "--model", _MODEL, "--num-blocks", "0"], "--num-blocks"),
    (["serve", "--model", _MODEL, "--blocks", "2:1"], "--blocks"),
    (["serve", "--model", _MODEL, "--blocks", "0:2", "--device", "gpu"], "--device"),
    (["serve", "--model", _MODEL, "--num-blocks", "many"], "--num-blocks"),
    (["serve", "--model", _MODEL, "--blocks", "0:2", "--num-blocks", "2"], "--blocks"),
    (["serve", "--model", _MODEL, "--memory", "0"], "--memory"),
    (["serve", "--model", _MODEL, "--memory", "lots"], "--memory"),
    (["serve", "--model", _MODEL, "--quantize", "int4"], "--quantize"),
    (["status", "--initial-peers", "{peer}", "--timeout", "0"], "--timeout"),
    (["status", "--initial-peers", "{peer}", "--key", "abcd"], "--key"),
    (["keygen", "{key}"], "--force"),
    (["keygen", "/nonexistent/key"], "file"),
    (["demo", "--peers", "0"], "--peers"),
    (["bench", "dht", "--nodes", "0"], "--nodes"),
    (["bench", "nothing"], "kind"),
    (["ping", "garbage"], "address"),
    (["ping", "{peer}", "--count", "0"], "--count"),
    (["ping", "{peer}", "--payload-bytes", "-1"], "--payload-bytes"),
]


@pytest.mark.parametrize(
    ("argv", "argument"), BAD_VALUES, ids=[" ".join(argv) for argv, _ in BAD_VALUES]
)
def test_a_bad_value_is_one_line_naming_the_argument(
    argv: list[str], argument: str, dirs: dict[str, Path]
) -> None:
    names = {name: str(path) for name, path in dirs.items()}
    result = petal(*(a.format(peer=f"{NOBODY}@127.0.0.1:9", **names) for a in argv))
    assert result.returncode == 2, result.stderr
    assert argument in one_error_line(result, argv[0])
    assert result.stdout == ""


# What shows only once the command runs. --------------------------------------------------


def test_a_config_transformers_cannot_read_is_a_usage_error(dirs: dict[str, Path]) -> None:
    result = petal("serve", "--model", str(dirs["untyped"]), "--blocks", "0:2")
    assert result.returncode == 2
    assert "--model" in one_error_line(result, "serve")


def test_blocks_beyond_the_model_are_a_usage_error(dirs: dict[str, Path]) -> None:
    result = petal("serve", "--model", str(dirs["model"]), "--blocks", "0:9")
    assert result.returncode == 2
    line = one_error_line(result, "serve")
    assert "--blocks" in line and "6 blocks" in line


def test_dht_on_a_port_in_use_names_listen(dht: Address) -> None:
    result = petal("dht", "--listen", f"127.0.0.1:{dht.port}")
    assert result.returncode == 1
    line = one_error_line(result, "dht")
    assert "--listen" in line and str(dht.port) in line


def test_serve_on_a_port_in_use_names_listen(dht: Address, dirs: dict[str, Path]) -> None:
    result = petal(
        "serve",
        "--model",
        str(dirs["model"]),
        "--blocks",
        "0:2",
        "--listen",
        f"127.0.0.1:{dht.port}",
    )
    assert result.returncode == 1
    assert "--listen" in one_error_line(result, "serve")


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_client_without_a_swarm_fails_within_seconds(command: str) -> None:
    address = f"{NOBODY}@127.0.0.1:{_refused_port()}"
    started = time.monotonic()
    argv = ["--prompt", "hi"] if command == "generate" else []
    result = petal(command, *argv, "--initial-peers", address)
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    line = one_error_line(result, command)
    assert address.partition("@")[2] in line and "--initial-peers" in line


def test_generate_names_a_wrong_peer_id(dht: Address) -> None:
    result = petal("generate", "--prompt", "hi", "--initial-peers", f"{NOBODY}@{dht.host_port()}")
    assert result.returncode == 1
    line = one_error_line(result, "generate")
    assert f"{dht.host_port()} is peer {dht.peer_id}, not {NOBODY}" in line


@pytest.mark.parametrize("command", ["serve", "dht"])
def test_a_node_logs_a_wrong_peer_id_and_keeps_trying(
    command: str, dht: Address, dirs: dict[str, Path]
) -> None:
    argv = ["--model", str(dirs["model"]), "--blocks", "0:2"] if command == "serve" else []
    with running(command, *argv, "--initial-peers", f"{NOBODY}@{dht.host_port()}") as proc:
        deadline = time.monotonic() + 60
        line = read_line(proc, "stderr", deadline)
        assert "WARNING" in line, line
        assert f"{dht.host_port()} is peer {dht.peer_id}, not {NOBODY}" in line
        assert "--initial-peers" in line
        assert "no initial peer answered" in read_line(proc, "stderr", deadline)
        assert proc.poll() is None


def test_ping_names_a_wrong_peer_id(dht: Address) -> None:
    result = petal("ping", f"{NOBODY}@{dht.host_port()}")
    assert result.returncode == 1
    assert f"is peer {dht.peer_id}, not {NOBODY}" in one_error_line(result, "ping")


def test_ping_without_a_peer_names_the_address() -> None:
    where = f"127.0.0.1:{_refused_port()}"
    result = petal("ping", f"{NOBODY}@{where}", "--timeout", "2")
    assert result.returncode == 1
    assert f"cannot reach {where}" in one_error_line(result, "ping")


def test_help_lists_every_command_and_the_exit_statuses() -> None:
    result = petal("--help")
    assert result.returncode == 0
    for name in ["demo", "serve", "dht", "generate", "chat", "status", "ping", "keygen", "bench"]:
        assert name in result.stdout
    assert "exit status" in result.stdout
