"""Running the chart's containers outside Kubernetes and checking their probes.

`run_chart` starts what the rendered manifests describe (the bundled Redis as a local
redis-server, then one worker and one ingress with their rendered command and environment),
checks every probe, registers a deployment, makes a call, and stops everything with SIGTERM
within each pod's terminationGracePeriodSeconds. How a shardgate container is started is the
caller's `Launcher`: as a local process (tests/helm/test_chart_processes.py) or in the image
with podman (tests/helm/test_image.py).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from sgtools.redis_bin import find_redis_server
from tests.helm.chart import (
    FULLNAME,
    NAMESPACE,
    REPO_ROOT,
    Doc,
    Rendering,
    container,
    container_port,
    pod_spec,
    resolve_env,
)

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
START_DEADLINE_S = 45.0
POLL_S = 0.1
HTTP_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def poll(what: str, deadline_s: float, probe: Callable[[], T | None], proc: subprocess.Popen[bytes] | None = None,
         log: Path | None = None) -> T:
    """`probe()` until it returns non-None; fail after `deadline_s` or when `proc` exits."""
    end = time.monotonic() + deadline_s
    while True:
        result = probe()
        if result is not None:
            return result
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited {proc.returncode}\n{_tail(log)}")
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline_s}s waiting for {what}\n{_tail(log)}")
        time.sleep(POLL_S)


def _tail(log: Path | None) -> str:
    return "" if log is None or not log.exists() else "\n".join(log.read_text().splitlines()[-30:])


def http_status(url: str, body: Any = None) -> tuple[int, str] | None:
    """(status, text) of a GET (or a JSON POST when `body` is given); None when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class Running:
    name: str
    ctr: Doc
    grace_s: int
    proc: subprocess.Popen[bytes]
    log: Path


def local_argv(ctr: Doc, replacements: dict[str, str]) -> list[str]:
    """The container's command + args, with each element found in `replacements` swapped."""
    argv = [*ctr["command"], *ctr.get("args", [])]
    return [replacements.get(a, a) for a in argv]


def start(name: str, workload: Doc, ctr: Doc, argv: list[str], env: dict[str, str], workdir: Path) -> Running:
    """`argv` with exactly `env` (plus TMPDIR), in `workdir`, output to `<workdir>/<name>.log`."""
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env={"TMPDIR": str(workdir), **env}, cwd=workdir, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Running(name, ctr, int(pod_spec(workload)["terminationGracePeriodSeconds"]), proc, log)


def stop(running: Running) -> int:
    """SIGTERM, then the exit code; fails when the process outlives its grace period."""
    if running.proc.poll() is None:
        running.proc.send_signal(signal.SIGTERM)
    try:
        return running.proc.wait(running.grace_s)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait()
        pytest.fail(f"{running.name} ignored SIGTERM for its {running.grace_s}s grace period\n{_tail(running.log)}")


def check_probes(running: Running, redis_cli: str) -> None:
    """Every probe of the container passes (httpGet 200, exec exit 0 with PONG, tcpSocket connects)."""
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = running.ctr.get(kind)
        assert probe is not None, f"{running.name} has no {kind}"
        if "httpGet" in probe:
            port = container_port(running.ctr, probe["httpGet"]["port"])
            url = f"http://{LOOPBACK}:{port}{probe['httpGet']['path']}"
            poll(f"{running.name} {kind} {url}", START_DEADLINE_S, functools.partial(_http_ok, url),
                 running.proc, running.log)
        elif "exec" in probe:
            argv = [redis_cli if a == "redis-cli" else a for a in probe["exec"]["command"]]
            poll(f"{running.name} {kind} {argv}", START_DEADLINE_S, functools.partial(_exec_ok, argv),
                 running.proc, running.log)
        else:
            port = container_port(running.ctr, probe["tcpSocket"]["port"])
            with socket.create_connection((LOOPBACK, port), timeout=HTTP_TIMEOUT_S):
                pass


def _http_ok(url: str) -> bool | None:
    answer = http_status(url)
    return True if answer is not None and answer[0] == 200 else None


def _exec_ok(argv: list[str]) -> bool | None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=HTTP_TIMEOUT_S, check=False)
    return True if done.returncode == 0 and "PONG" in done.stdout else None




Launcher = Callable[[str, Doc, dict[str, str]], tuple[list[str], dict[str, str]]]
"""(component, container, resolved env) -> (argv, environment of the started process)."""


def local_launcher(component: str, ctr: Doc, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The container's command as a local process: `python` is this interpreter, the checkout on PYTHONPATH."""
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    return local_argv(ctr, {"python": sys.executable}), {**base, **env}


def chart_values(ports: dict[str, int]) -> list[str]:
    """The `--set` values of a rendering whose pods all bind 127.0.0.1 on the given free ports."""
    return ["bindHost=127.0.0.1", "partitions=4", "partition.replicaCount=1", "partition.advertise=podIP",
            f"redis.bundled.port={ports['redis']}", f"ingress.ports.http={ports['http']}",
            f"ingress.ports.admin={ports['admin']}", f"partition.ports.grpc={ports['grpc']}",
            f"partition.ports.metrics={ports['metrics']}", "logJson=false"]


def free_ports() -> dict[str, int]:
    return {name: free_port() for name in ("redis", "http", "admin", "grpc", "metrics")}


def _start_redis(docs: Rendering, workdir: Path, redis_server: str) -> Running:
    """The bundled Redis StatefulSet's container, run by the local redis-server."""
    sts = docs.workload("redis")
    text = docs.one("ConfigMap", f"{FULLNAME}-redis")["data"]["redis.conf"]
    assert "\ndir /data\n" in text
    (workdir / "redis-data").mkdir()
    conf = workdir / "redis.conf"
    conf.write_text(text.replace("\ndir /data\n", f"\ndir {workdir / 'redis-data'}\n"))
    ctr = container(sts, "redis")
    argv = local_argv(ctr, {"redis-server": redis_server, "/etc/redis/redis.conf": str(conf)}) + ["--bind", LOOPBACK]
    return start("redis", sts, ctr, argv, {"PATH": os.environ["PATH"]}, workdir)


def run_chart(docs: Rendering, ports: dict[str, int], sdk_deployment: str, workdir: Path, launch: Launcher) -> None:
    """Start Redis, a worker and an ingress as the rendering describes; check probes, a call, SIGTERM."""
    redis_server = find_redis_server()
    redis_cli = str(Path(redis_server).with_name("redis-cli"))
    started: list[Running] = []
    try:
        started.append(_start_redis(docs, workdir, redis_server))
        check_probes(started[-1], redis_cli)
        client = redis.Redis(host=LOOPBACK, port=ports["redis"], socket_timeout=HTTP_TIMEOUT_S)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.close()

        service_host = f"{FULLNAME}-redis.{NAMESPACE}.svc.cluster.local"
        for component in ("partition", "ingress"):
            workload = docs.workload(component)
            ctr = container(workload, component)
            env = resolve_env(docs, ctr, pod_name=f"{workload['metadata']['name']}-0", pod_ip=LOOPBACK)
            assert service_host in env["SHARDGATE_REDIS_URL"]
            env["SHARDGATE_REDIS_URL"] = env["SHARDGATE_REDIS_URL"].replace(service_host, LOOPBACK)
            argv, proc_env = launch(component, ctr, env)
            started.append(start(component, workload, ctr, argv, proc_env, workdir))
            check_probes(started[-1], redis_cli)

        ready = http_status(f"http://{LOOPBACK}:{ports['metrics']}/ready")
        assert ready is not None and json.loads(ready[1])["owned_partitions"] == 4

        # The composed processes serve: register the deployment (admin port), call it (ingress port).
        admin, ingress = f"http://{LOOPBACK}:{ports['admin']}", f"http://{LOOPBACK}:{ports['http']}"
        registered = http_status(f"{admin}/deployments", {"uri": sdk_deployment})
        assert registered is not None and registered[0] in (200, 201), registered

        def greeted() -> tuple[int, str] | None:
            answer = http_status(f"{ingress}/restate/call/Greeter/greet", "Helm")
            return answer if answer is not None and answer[0] == 200 else None

        assert json.loads(poll("a call through the ingress", START_DEADLINE_S, greeted)[1]) == "Hello, Helm!"
    finally:
        codes = {r.name: stop(r) for r in reversed(started)}
    assert codes.get("ingress") == 0 and codes.get("partition") == 0, codes
