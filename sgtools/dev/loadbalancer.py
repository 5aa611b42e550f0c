"""The load balancer of `shardgate dev --load-balancer`: haproxy in front of N ingress nodes.

haproxy (Debian package `haproxy`, installed by `make lb-tools`) listens on the cluster's ingress
and admin ports and spreads requests round-robin over the ingress nodes, which listen on free
ports. Every node is health-checked (`GET /restate/health` on its ingress port, `GET /health` on
its admin port) every 500 ms; two failures take it out, one success brings it back. A request
whose connection to a node fails (the node is down and not yet marked so) is sent to another
node (`retry-on conn-failure`, `option redispatch`); a request a node already received is never
re-sent by haproxy, since it may have been accepted (clients retry those with an idempotency key).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sgtools.dev.errors import DevError
from sgtools.dev.process import ChildProcess
from sgtools.dev.spec import LOOPBACK

HAPROXY_ENV = "SHARDGATE_HAPROXY"
"""Path of the haproxy executable to use instead of searching PATH and /usr/sbin."""
_SBIN_CANDIDATES = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
INSTALL_HINT = "run `make lb-tools` (it runs apt-get install -y haproxy), or set SHARDGATE_HAPROXY to its path"
CHECK_INTERVAL_MS = 500
"""How often haproxy checks each ingress node's health."""
REQUEST_TIMEOUT_S = 3600
"""Client/server inactivity timeout of the proxy: a call may wait this long for its result
(the ingress's own SHARDGATE_CALL_TIMEOUT_S default)."""


class LoadBalancerNotFound(DevError):
    """No haproxy executable: the message says how to install one."""


@dataclass(frozen=True)
class Backend:
    """One ingress node as the load balancer sees it."""

    name: str
    ingress_port: int
    admin_port: int


def find_haproxy(env: Mapping[str, str] | None = None) -> str:
    """The haproxy executable: $SHARDGATE_HAPROXY, else PATH, else /usr/sbin; raises LoadBalancerNotFound."""
    env = os.environ if env is None else env
    explicit = env.get(HAPROXY_ENV, "")
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise LoadBalancerNotFound(f"{HAPROXY_ENV}={explicit} is not an executable file; {INSTALL_HINT}")
    found = shutil.which("haproxy", path=env.get("PATH", os.defpath))
    if found:
        return found
    for candidate in _SBIN_CANDIDATES:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise LoadBalancerNotFound(f"--load-balancer needs haproxy, which is not installed; {INSTALL_HINT}")


def _backend(name: str, health_path: str, servers: list[str]) -> list[str]:
    return [
        f"backend {name}",
        "    balance roundrobin",
        f"    option httpchk GET {health_path}",
        "    http-check expect status 200",
        *servers,
        "",
    ]


ERROR_CODES = (502, 503, 504)
_ERROR_TEXT = {
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def error_page(code: int) -> str:
    """A whole HTTP response haproxy sends for `code`, in the ingress's JSON error shape."""
    body = json.dumps({"code": code, "message": f"no ingress node answered ({_ERROR_TEXT[code].lower()}); "
                       "the request may not have run: retry it with an idempotency key", "source": "load-balancer"})
    return (f"HTTP/1.1 {code} {_ERROR_TEXT[code]}\r\ncontent-type: application/json\r\n"
            f"cache-control: no-cache\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n{body}")


def write_error_pages(errors_dir: Path) -> None:
    errors_dir.mkdir(parents=True, exist_ok=True)
    for code in ERROR_CODES:
        (errors_dir / f"{code}.http").write_text(error_page(code))


def haproxy_config(ingress_port: int, admin_port: int, backends: Sequence[Backend],
                   errors_dir: Path = Path("haproxy-errors")) -> str:
    """The haproxy.cfg text: frontends on the two public ports, one backend each over every node;
    its JSON error pages are in `errors_dir` (`write_error_pages`)."""
    if not backends:
        raise ValueError("the load balancer needs at least one ingress node")
    check = f"check inter {CHECK_INTERVAL_MS}ms fastinter {CHECK_INTERVAL_MS // 2}ms rise 1 fall 2"
    ingress_servers = [f"    server {b.name} {LOOPBACK}:{b.ingress_port} {check}" for b in backends]
    admin_servers = [f"    server {b.name} {LOOPBACK}:{b.admin_port} {check}" for b in backends]
    lines = [
        "# Written by `shardgate dev --load-balancer`; rewritten at every start.",
        "global",
        "    maxconn 4096",
        "    log stdout format raw local0 notice",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlog-normal",
        "    timeout connect 2s",
        f"    timeout client {REQUEST_TIMEOUT_S}s",
        f"    timeout server {REQUEST_TIMEOUT_S}s",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 60s",
        "    timeout check 2s",
        "    retries 3",
        "    option redispatch 1",
        # A request with an idempotency key is safe to send again: if its node died before
        # answering (connection refused, or closed with no byte of a response), it goes to
        # another node. Without a key, only a connection failure (nothing was sent) is retried.
        "    retry-on conn-failure empty-response response-timeout",
        *(f"    errorfile {code} {errors_dir / f'{code}.http'}" for code in ERROR_CODES),
        "",
        "frontend ingress",
        f"    bind {LOOPBACK}:{ingress_port}",
        "    http-request disable-l7-retry unless { req.hdr(idempotency-key) -m found }",
        "    default_backend ingress_nodes",
        "",
        "frontend admin",
        f"    bind {LOOPBACK}:{admin_port}",
        "    http-request disable-l7-retry",
        "    default_backend admin_nodes",
        "",
        *_backend("ingress_nodes", "/restate/health", ingress_servers),
        *_backend("admin_nodes", "/health", admin_servers),
    ]
    return "\n".join(lines)


def load_balancer_child(data_dir: Path, binary: str, ingress_port: int, admin_port: int,
                        backends: Sequence[Backend]) -> ChildProcess:
    """haproxy in the foreground (`-db`) with `<data-dir>/haproxy.cfg`, which this writes."""
    config_path = data_dir / "haproxy.cfg"
    errors_dir = data_dir / "haproxy-errors"
    write_error_pages(errors_dir)
    config_path.write_text(haproxy_config(ingress_port, admin_port, backends, errors_dir) + "\n")
    argv = [binary, "-db", "-f", str(config_path)]
    return ChildProcess("load-balancer", "load-balancer", argv, dict(os.environ),
                        {"ingress": ingress_port, "admin": admin_port}, data_dir / "logs" / "load-balancer.log")
