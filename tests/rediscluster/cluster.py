"""A real Redis Cluster for the tests: 3 primaries and 3 replicas from `redis-server` binaries.

No `redis-cli --cluster create`: the cluster is formed from Python with the cluster commands
themselves (CLUSTER MEET, ADDSLOTS, REPLICATE), on free loopback ports (each node's bus port,
port + 10000, free too), with AOF on (`appendfsync everysec`, Redis's default) and a short
`cluster-node-timeout`, so a killed primary is replaced within a few seconds.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_py

from sgtools.redis_bin import find_redis_server

LOOPBACK = "127.0.0.1"
SLOTS = 16384
BUS_OFFSET = 10000
NODE_TIMEOUT_MS = 1000
FORM_DEADLINE_S = 30.0
POLL_S = 0.05


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_node_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port + BUS_OFFSET < 65536 and port not in taken and _port_free(port + BUS_OFFSET):
            return port


@dataclass
class Node:
    """One redis-server of the cluster."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def client(self, timeout_s: float = 2.0) -> redis_py.Redis:
        return redis_py.Redis(host=LOOPBACK, port=self.port, socket_timeout=timeout_s)

    def start(self, binary: str) -> None:
        """Start (or restart, from its AOF and nodes.conf) this node."""
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the child keeps the fd
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.workdir),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-replica-validity-factor", "0",
             "--appendonly", "yes", "--save", "", "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self) -> None:
        """SIGKILL (no chance to flush or hand over)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RedisClusterProcs:
    """The six nodes and how to reach them."""

    nodes: list[Node]
    binary: str
    ids: dict[int, str] = field(default_factory=dict)  # port -> node id

    @property
    def url(self) -> str:
        """`redis+cluster://` URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{n.port}" for n in self.nodes)

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def roles(self) -> dict[int, str]:
        """Port -> 'master' or 'slave' for every running node (as each one says of itself)."""
        out: dict[int, str] = {}
        for n in self.nodes:
            if not n.running:
                continue
            with contextlib.closing(n.client()) as c, contextlib.suppress(redis_py.RedisError):
                out[n.port] = str(c.info("replication")["role"])
        return out

    def replica_of(self, primary_port: int) -> int:
        """Port of a running replica of the primary on `primary_port`."""
        with contextlib.closing(self.node(primary_port).client()) as c:
            info = c.info("replication")
        for i in range(int(info["connected_slaves"])):
            entry = info[f"slave{i}"]
            return int(entry["port"])
        raise AssertionError(f"primary {primary_port} has no connected replica")

    def primary_for_slot(self, slot: int) -> int:
        """Port of the primary serving `slot` (asked of any running node)."""
        for n in self.nodes:
            if not n.running:
                continue
            with contextlib.closing(n.client()) as c, contextlib.suppress(redis_py.RedisError):
                for start, end, primary, *_ in command(c, "CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return int(primary[1])
        raise AssertionError(f"no running node knows who serves slot {slot}")

    def wait_healthy(self, deadline_s: float = FORM_DEADLINE_S) -> None:
        """Until every running node says cluster_state:ok, knows 3 primaries with slots, and
        every running replica's link to its primary is up. Raises AssertionError after the deadline."""
        wait_until("the cluster to be healthy", deadline_s, self._healthy)

    def _healthy(self) -> bool:
        for n in self.nodes:
            if not n.running:
                continue
            with contextlib.closing(n.client()) as c:
                try:
                    if not _state_ok(command(c, "CLUSTER INFO")):
                        return False
                    repl = c.info("replication")
                    if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                        return False
                except redis_py.RedisError:
                    return False
        return True

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def command(c: redis_py.Redis, *args: object) -> Any:
    """One raw command (redis-py leaves `execute_command` untyped)."""
    return c.execute_command(*args)  # type: ignore[no-untyped-call]


def wait_until(what: str, deadline_s: float, probe: object) -> None:
    """Poll `probe()` (a callable returning bool) until true; AssertionError after `deadline_s`."""
    assert callable(probe)
    end = time.monotonic() + deadline_s
    while not probe():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(POLL_S)


def _slot_ranges(primaries: int) -> list[range]:
    size = SLOTS // primaries
    bounds = [i * size for i in range(primaries)] + [SLOTS]
    return [range(bounds[i], bounds[i + 1]) for i in range(primaries)]


def _form(cluster: RedisClusterProcs, primaries: int) -> None:
    """MEET every node, give the first `primaries` nodes a third of the slots each, make the
    others replicas of them (in order), and wait for a healthy cluster."""
    clients = [n.client() for n in cluster.nodes]
    try:
        for n, c in zip(cluster.nodes, clients):
            wait_until(f"node {n.port} to answer", 10.0, lambda c=c: _pings(c))
            cluster.ids[n.port] = command(c, "CLUSTER MYID").decode()
        for n in cluster.nodes[1:]:
            command(clients[0], "CLUSTER MEET", LOOPBACK, n.port)
        for c, slots in zip(clients, _slot_ranges(primaries)):
            command(c, "CLUSTER ADDSLOTS", *slots)
        wait_until("every node to know every other", FORM_DEADLINE_S,
                   lambda: all(_known(c) >= len(clients) for c in clients))
        for i, c in enumerate(clients[primaries:]):
            primary_id = cluster.ids[cluster.nodes[i % primaries].port]
            wait_until("the replica to learn its primary", FORM_DEADLINE_S,
                       lambda c=c, pid=primary_id: _replicate(c, pid))
    finally:
        for c in clients:
            c.close()
    cluster.wait_healthy()


def _state_ok(info: object) -> bool:
    """CLUSTER INFO says cluster_state:ok (redis-py parses it into a dict; raw text otherwise)."""
    if isinstance(info, dict):
        value = info.get("cluster_state", info.get(b"cluster_state"))
        return value in ("ok", b"ok")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def _pings(c: redis_py.Redis) -> bool:
    try:
        return bool(c.ping())
    except redis_py.RedisError:
        return False


def _known(c: redis_py.Redis) -> int:
    raw = command(c, "CLUSTER NODES")
    if isinstance(raw, dict):  # redis-py parses it: address -> node
        return sum(1 for v in raw.values() if "handshake" not in str(v.get("flags", "")))
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return sum(1 for line in text.splitlines() if line.strip() and "handshake" not in line)


def _replicate(c: redis_py.Redis, primary_id: str) -> bool:
    try:
        command(c, "CLUSTER REPLICATE", primary_id)
    except redis_py.ResponseError:
        return False  # "Unknown node": gossip has not reached this node yet
    return True


@contextlib.contextmanager
def redis_cluster(workdir: Path, primaries: int = 3, replicas_per_primary: int = 1) -> Iterator[RedisClusterProcs]:
    """Start and form a cluster; stop every node on exit."""
    binary = find_redis_server()
    taken: set[int] = set()
    nodes: list[Node] = []
    for i in range(primaries * (1 + replicas_per_primary)):
        port = free_node_port(taken)
        taken.add(port)
        node_dir = workdir / f"node-{i}"
        node_dir.mkdir(parents=True, exist_ok=True)
        nodes.append(Node(port, node_dir))
    cluster = RedisClusterProcs(nodes, binary)
    try:
        for n in nodes:
            n.start(binary)
        _form(cluster, primaries)
        yield cluster
    finally:
        cluster.stop()


def flush_primaries(cluster: RedisClusterProcs) -> None:
    """FLUSHALL on every running primary (replicas follow)."""
    for port, role in cluster.roles().items():
        if role == "master":
            with contextlib.closing(cluster.node(port).client(10.0)) as c:
                c.flushall()
