"""A swarm of real processes on this machine: one DHT node and N peers, each serving an
equal share of a model's blocks (or the spans given).  Used by ``petal demo``, ``petal bench``
and tests.  Several swarms may share one DHT node: each one after the first joins it.

With ``delay_ms`` > 0 every process listens behind a ``DelayProxy`` (one loop thread hosts
them all) and announces the proxy's port, so that every link to it, from clients, peers or
the DHT node, crosses an emulated wide-area link in both directions."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from petalproto.core import Address
from petalproto.testing import ProxyThread

__all__ = ["LocalSwarm", "split_blocks"]


def split_blocks(num_blocks: int, peers: int) -> list[tuple[int, int]]:
    """``peers`` contiguous spans covering ``[0, num_blocks)`` as evenly as possible."""
    if not 0 < peers <= num_blocks:
        raise ValueError(f"cannot split {num_blocks} blocks among {peers} peers")
    bounds = [round(i * num_blocks / peers) for i in range(peers + 1)]
    return list(itertools.pairwise(bounds))


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    address_file: Path
    log_file: Path
    spawned: float
    address: Address | None = None
    ready_after: float | None = None
    #: The port of the delay proxy in front of it (with ``delay_ms``), else None.
    proxy_port: int | None = None


@dataclass
class LocalSwarm:
    """Start with ``start()``, stop with ``stop()`` (or use it as a context manager)."""

    model_path: Path
    peers: int = 3
    model_name: str | None = None
    extra_serve_args: list[str] = field(default_factory=list)
    startup_timeout: float = 120.0
    #: Start peers one after another (each then has the machine to itself, so its start
    #: time is its own) rather than all at once.
    one_by_one: bool = False
    #: The peers' spans; by default ``peers`` equal shares of the model's blocks.
    spans: list[tuple[int, int]] | None = None
    #: A DHT node to join instead of starting one (this swarm then stops only its peers).
    join: Address | None = None
    #: One-way delay of every link to a process of ours, in milliseconds (0: no proxies).
    delay_ms: float = 0.0
    #: Uniform jitter of that delay, in milliseconds (only with ``delay_ms`` > 0).
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="petal-swarm-"))
        self._procs: list[_Process] = []
        self._launched: list[_Process] = []  # the peers of ``spans``, in order
        self.dht: Address | None = None
        self.servers: list[tuple[Address, tuple[int, int]]] = []
        self.proxies: ProxyThread | None = None

    def _behind_proxy(self, args: list[str]) -> tuple[list[str], int | None]:
        """``args`` with the listen and announced ports of a process behind a delay proxy
        (and that proxy's port), or unchanged (and None) without ``delay_ms``."""
        if self.delay_ms <= 0:
            return args, None
        if self.proxies is None:
            self.proxies = ProxyThread()
        # The process must listen on a port we know before it announces the proxy's, so
        # take a free one; another process could take it first, which is unlikely enough
        # for tests and benchmarks.
        with socket.create_server(("127.0.0.1", 0)) as probe:
            listen = probe.getsockname()[1]
        port = self.proxies.add(
            "127.0.0.1", listen, delay_ms=self.delay_ms, jitter_ms=self.jitter_ms
        )
        args = [a if a != "127.0.0.1:0" else f"127.0.0.1:{listen}" for a in args]
        return [*args, "--announce-port", str(port)], port

    def _spawn(self, name: str, args: list[str]) -> _Process:
        address_file, log_file = self._dir / f"{name}.addr", self._dir / f"{name}.log"
        args, proxy_port = self._behind_proxy(args)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log_file.open("wb") as log:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "petalproto.cli",
                    *args,
                    "--address-file",
                    str(address_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        proc = _Process(name, popen, address_file, log_file, time.perf_counter())
        proc.proxy_port = proxy_port
        self._procs.append(proc)
        return proc

    def _wait(self, procs: list[_Process]) -> None:
        deadline = time.perf_counter() + self.startup_timeout
        pending = [p for p in procs if p.address is None]
        while pending:
            for proc in list(pending):
                if proc.address_file.exists() and proc.address_file.read_text().strip():
                    proc.address = Address.parse(proc.address_file.read_text())
                    proc.ready_after = time.perf_counter() - proc.spawned
                    pending.remove(proc)
                elif proc.popen.poll() is not None:
                    tail = proc.log_file.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{[p.name for p in pending]} did not start in time")
            time.sleep(0.02)

    def _spawn_peer(self, start: int, end: int) -> _Process:
        assert self.dht is not None, "the DHT node starts first"
        args = ["serve", "--model", str(self.model_path), "--blocks", f"{start}:{end}"]
        args += ["--listen", "127.0.0.1:0", "--initial-peers", str(self.dht), "--no-progress"]
        if self.model_name:
            args += ["--model-name", self.model_name]
        peers = sum(1 for p in self._procs if p.name.startswith("peer"))
        return self._spawn(f"peer{peers}", args + self.extra_serve_args)

    def start(self) -> LocalSwarm:
        """Start the DHT node and the peers; return when every peer has announced."""
        return self.launch().wait()

    def launch(self) -> LocalSwarm:
        """Start the DHT node (or take ``join``), then spawn the peers without waiting for
        them (unless ``one_by_one``); ``wait`` waits."""
        from ._arch import load_config, num_layers

        if self.join is not None:
            self.dht = self.join
        else:
            dht = self._spawn("dht", ["dht", "--listen", "127.0.0.1:0"])
            self._wait([dht])
            assert dht.address is not None
            self.dht = dht.address
        if self.spans is None:
            self.spans = split_blocks(num_layers(load_config(str(self.model_path))), self.peers)
        for start, end in self.spans:
            self._launched.append(self._spawn_peer(start, end))
            if self.one_by_one:
                self._wait(self._launched[-1:])
        return self

    def wait(self) -> LocalSwarm:
        """Wait until every launched peer has announced itself."""
        self._wait(self._launched)
        assert self.spans is not None
        self.servers = [
            (p.address, span)
            for p, span in zip(self._launched, self.spans, strict=True)
            if p.address is not None
        ]
        return self

    @property
    def peer_start_seconds(self) -> list[float]:
        """Seconds from spawn to announced, per peer."""
        return [p.ready_after or 0.0 for p in self._procs if p.name.startswith("peer")]

    def processes(self) -> list[tuple[str, int]]:
        return [(p.name, p.popen.pid) for p in self._procs]

    def add_peer(self, start: int, end: int) -> Address:
        """Start one more peer serving blocks ``[start, end)``; returns its address."""
        proc = self._spawn_peer(start, end)
        self._wait([proc])
        assert proc.address is not None
        self.servers.append((proc.address, (start, end)))
        return proc.address

    def restart(self, address: Address) -> Address:
        """Kill the peer at ``address`` and start a new one on the same blocks (a crash and
        an operator's restart: a new port, a new identity); returns the new address."""
        span = next(span for a, span in self.servers if a == address)
        self.kill(address)
        self.servers = [(a, s) for a, s in self.servers if a != address]
        return self.add_peer(*span)

    def stall(self, address: Address) -> None:
        """Hold every byte to and from the process at ``address`` (behind its proxy, so
        only with ``delay_ms``) until ``resume``; its connections stay open."""
        port = self._proxy_port(address)
        assert self.proxies is not None
        self.proxies.stall(port)

    def resume(self, address: Address) -> None:
        """Undo ``stall``."""
        port = self._proxy_port(address)
        assert self.proxies is not None
        self.proxies.resume(port)

    def _proxy_port(self, address: Address) -> int:
        proc = next(p for p in self._procs if p.address == address)
        if proc.proxy_port is None:
            raise ValueError("only a swarm with delay_ms > 0 has proxies to stall")
        return proc.proxy_port

    def kill(self, address: Address) -> None:
        """Kill the peer at ``address`` abruptly (for failure tests)."""
        proc = next(p for p in self._procs if p.address == address)
        proc.popen.kill()
        proc.popen.wait()

    def pause(self, address: Address) -> None:
        """Freeze the peer at ``address`` (SIGSTOP): it keeps its connections and answers
        nothing, like a hung host."""
        proc = next(p for p in self._procs if p.address == address)
        proc.popen.send_signal(signal.SIGSTOP)

    def unpause(self, address: Address) -> None:
        """Let a paused peer run again (SIGCONT)."""
        proc = next(p for p in self._procs if p.address == address)
        proc.popen.send_signal(signal.SIGCONT)

    def stop_peer(self, address: Address) -> int:
        """Stop the peer at ``address`` the way an operator would (SIGTERM); its exit code."""
        proc = next(p for p in self._procs if p.address == address)
        proc.popen.terminate()
        return proc.popen.wait(timeout=30)

    def stop(self) -> None:
        """Stop every process: the peers together first, while the DHT node can still take
        their withdrawals, then the DHT node."""
        peers = [p for p in self._procs if p.name != "dht"]
        for group in (peers, [p for p in self._procs if p.name == "dht"]):
            for proc in group:
                if proc.popen.poll() is None:
                    proc.popen.send_signal(signal.SIGCONT)  # a paused peer must hear SIGTERM
                    proc.popen.terminate()
            for proc in group:
                try:
                    proc.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
        self._procs.clear()
        if self.proxies is not None:
            self.proxies.close()
            self.proxies = None

    def __enter__(self) -> LocalSwarm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
