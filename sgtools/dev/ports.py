"""Port planning: explicit ports checked free and unique, zeros replaced by free ports."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from sgtools.dev.errors import DevError
from sgtools.dev.spec import LOOPBACK, ClusterSpec


@dataclass
class PortPlan:
    """Every port of a cluster, resolved (explicit ones checked free, zeros picked)."""

    redis: int
    ingress: int
    admin: int
    grpc: list[int]
    metrics: list[int]
    node_ingress: list[int] = field(default_factory=list)
    """Ingress ports of the nodes behind the load balancer (empty without one)."""
    node_admin: list[int] = field(default_factory=list)
    """Admin ports of the nodes behind the load balancer (empty without one)."""


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True if a listener already holds host:port (checked the way servers bind, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def pick_free_port(taken: set[int]) -> int:
    """A port the kernel considers free right now on 127.0.0.1, not already in `taken`."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port
    raise DevError("could not pick a free port")


def _explicit_ports(spec: ClusterSpec) -> list[tuple[str, int]]:
    ports = [("ingress", spec.ingress_port), ("admin", spec.admin_port)]
    if spec.redis_url is None:
        ports.append(("redis", spec.redis_port))
    ports += [(f"worker-{i} grpc", p) for i, p in enumerate(spec.worker_grpc_ports)]
    ports += [(f"worker-{i} metrics", p) for i, p in enumerate(spec.worker_metrics_ports)]
    return [(label, port) for label, port in ports if port]


def check_explicit_ports(spec: ClusterSpec) -> set[int]:
    """Fail fast on duplicate or busy explicit ports; return them."""
    seen: dict[int, str] = {}
    for label, port in _explicit_ports(spec):
        if port in seen:
            raise DevError(f"port {port} is given twice ({seen[port]} and {label})")
        seen[port] = label
        if port_in_use(port):
            raise DevError(f"port {port} ({label}) is already in use on {LOOPBACK}; pick another one")
    return set(seen)


def plan_ports(spec: ClusterSpec) -> PortPlan:
    """Resolve every port of the cluster."""
    taken = check_explicit_ports(spec)

    def resolve(port: int) -> int:
        return port or pick_free_port(taken)

    grpc = spec.worker_grpc_ports or [0] * spec.workers
    metrics = spec.worker_metrics_ports or [0] * spec.workers
    nodes = spec.ingress_nodes if spec.load_balancer else 0
    return PortPlan(
        redis=0 if spec.redis_url is not None else resolve(spec.redis_port),
        ingress=resolve(spec.ingress_port),
        admin=resolve(spec.admin_port),
        grpc=[resolve(p) for p in grpc],
        metrics=[resolve(p) for p in metrics],
        node_ingress=[resolve(0) for _ in range(nodes)],
        node_admin=[resolve(0) for _ in range(nodes)],
    )
