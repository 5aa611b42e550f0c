"""Deployments registered for h2c, as Restate reaches `http://` deployments unless told otherwise.

A real cluster (`DevCluster`: Redis, 2 workers, the ingress with its admin API) and real SDK
deployments: the Python SDK under hypercorn (HTTP/1.1 and h2c on one port), and the TypeScript
SDK under node served the way its `endpoint().listen()` serves (h2c only: HTTP/1.1 gets no
answer), or over HTTP/1.1 only. Which client an attempt took is read from the workers'
`shardgate_partition_deployment_attempts_total{transport}`.

* registered without `use_http_11`, the Python SDK is discovered over h2c and says
  `BIDI_STREAM`: it lists as `BidiStream` / `HTTP/2.0` (as in Restate); since it answers
  HTTP/1.1 as well, its request-response attempts take the cheaper HTTP/1.1 client
  (decision 39), `ctx.run` and a durable sleep included;
* with `use_http_11` it is discovered over HTTP/1.1 (`RequestResponse` / `HTTP/1.1`);
* an h2c-only TypeScript deployment registers and its attempts run over h2c, a suspended and
  re-invoked `ctx.run` included; asked over HTTP/1.1 it cannot be discovered (500 `META0003`,
  as in Restate);
* an HTTP/1.1-only TypeScript deployment registered without the flag answers the h2c preface in
  HTTP/1.1, so it is discovered and invoked over HTTP/1.1 (Restate would refuse it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from sgtools.dev import ClusterSpec, DevCluster
from tests.clusters import attempts_by_transport, poll, unique
from tests.deployments import ensure_ts_sdk, serve_ts_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

PARTITIONS = 4
DEADLINE_S = 30.0


class Env:
    def __init__(self, cluster: DevCluster, http: aiohttp.ClientSession) -> None:
        self.cluster, self.http = cluster, http

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.cluster.admin_url}{path}", json=body,
                                     timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            raw = await r.read()
            return r.status, json.loads(raw) if raw else None

    async def call(self, target: str, body: Any) -> tuple[int, Any]:
        async with self.http.post(f"{self.cluster.ingress_url}/restate/call/{target}", json=body,
                                  timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
            raw = await r.read()
            return r.status, json.loads(raw) if raw else None

    async def register(self, uri: str, **body: Any) -> dict[str, Any]:
        """Register `uri` (force) and return its row in GET /deployments."""
        status, reg = await self.admin("POST", "/deployments", {"uri": uri, "force": True, "breaking": True, **body})
        assert status in (200, 201), reg
        status, listing = await self.admin("GET", "/deployments")
        assert status == 200
        return next(d for d in listing["deployments"] if d["id"] == reg["id"])

    async def attempts(self) -> dict[str, float]:
        """Attempts sent so far by all workers, per transport (`..._deployment_attempts_total`)."""
        return await attempts_by_transport(
            self.http, [f"http://127.0.0.1:{w.metrics_port}/metrics" for w in self.cluster.workers])

    async def transports_of(self, target: str, body: Any, expected: Any) -> set[str]:
        """Call `target` (it must answer 200 `expected`); the transports whose counters moved."""
        return set(await self.attempts_of(target, body, expected))

    async def attempts_of(self, target: str, body: Any, expected: Any) -> dict[str, int]:
        """Call `target` (it must answer 200 `expected`); the attempts it took, per transport."""
        before = await self.attempts()
        assert await self.call(target, body) == (200, expected)
        after = await self.attempts()
        return {t: int(n - before.get(t, 0.0)) for t, n in after.items() if n > before.get(t, 0.0)}

    async def ready(self, target: str, body: Any, expected: Any) -> None:
        """Wait until the workers' registry has the deployment: `target` answers 200 `expected`
        (both SDKs serve a Greeter; their with_run answers differ)."""
        async def probe() -> bool | None:
            return True if await self.call(target, body) == (200, expected) else None

        await poll(f"{target} to answer {expected!r}", DEADLINE_S, probe)


@pytest.fixture(scope="module")
def ts_root() -> Path:
    return ensure_ts_sdk()


@pytest.fixture(scope="module")
def ts_h2c(ts_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_ts_app(ts_root, tmp_path_factory.mktemp("ts-h2c") / "node.log", h2c=True) as url:
        yield url


@pytest.fixture(scope="module")
def ts_http1(ts_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_ts_app(ts_root, tmp_path_factory.mktemp("ts-http1") / "node.log", h2c=False) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    spec = ClusterSpec(workers=2, partitions=PARTITIONS, ingress_port=0, admin_port=0,
                       data_dir=tmp_path_factory.mktemp("h2c-cluster") / "data", start_timeout_s=45.0,
                       log_level="INFO")
    async with aiohttp.ClientSession() as http, DevCluster(spec) as cluster:
        yield Env(cluster, http)


async def test_the_python_sdk_registers_for_h2c_and_streams_what_goes_on(env: Env, sdk_deployment: str) -> None:
    """A plain call stays request-response over HTTP/1.1; a handler replayed soon after its
    journal grew (a run's result stored, then the next attempt) streams from then on: one
    bidirectional attempt."""
    dep = await env.register(sdk_deployment)
    assert (dep["protocol_type"], dep["http_version"]) == ("BidiStream", "HTTP/2.0")
    name = unique("h2c")
    await env.ready("Greeter/greet", name, f"Hello, {name}!")
    assert await env.attempts_of("Greeter/greet", name, f"Hello, {name}!") == {"http1": 1}
    first = await env.attempts_of("Greeter/with_run", name, f"side-effect for {name}")
    assert first in ({"http1": 1, "h2c_bidi": 1}, {"h2c_bidi": 1}), first  # (another worker may have learned it)
    async def streamed() -> bool | None:  # each worker learns it from one resumed attempt of its own
        other = unique("run")
        got = await env.attempts_of("Greeter/with_run", other, f"side-effect for {other}")
        return True if got == {"h2c_bidi": 1} else None

    await poll("with_run in one bidirectional attempt", DEADLINE_S, streamed)
    # a 1 s sleep: the replay comes within the learning window, so the handler streams too
    assert await env.transports_of("Greeter/sleepy", 1, "slept 1s") <= {"http1", "h2c_bidi"}
    status, body = await env.call("Greeter/fail", "no")
    assert status == 409 and "failed on purpose: no" in body["message"], body


async def test_use_http_11_reaches_the_python_sdk_over_http1(env: Env, sdk_deployment: str) -> None:
    dep = await env.register(sdk_deployment, use_http_11=True)
    assert (dep["protocol_type"], dep["http_version"]) == ("RequestResponse", "HTTP/1.1")
    name = unique("http1")
    await env.ready("Greeter/with_run", name, f"side-effect for {name}")
    async def over_http1() -> bool | None:  # until every worker has the re-registration
        got = await env.attempts_of("Greeter/with_run", name, f"side-effect for {name}")
        return True if got == {"http1": 2} else None  # the run suspends and is replayed: never streamed

    await poll("with_run over HTTP/1.1", DEADLINE_S, over_http1)


async def test_an_h2c_only_typescript_deployment_registers_and_serves(env: Env, ts_h2c: str) -> None:
    status, body = await env.admin("POST", "/deployments", {"uri": ts_h2c, "force": True, "use_http_11": True})
    assert status == 500 and body["restate_code"] == "META0003", body  # it does not speak HTTP/1.1
    dep = await env.register(ts_h2c)
    assert (dep["protocol_type"], dep["http_version"]) == ("BidiStream", "HTTP/2.0")
    assert dep["sdk_version"].startswith("restate-sdk-typescript/")
    name = unique("ts")
    await env.ready("Greeter/with_run", name, f"Hello, {name.upper()}!")
    # h2c only: the plain call stays request-response; ctx.run streams once a worker saw it go on
    other = unique("ts")
    assert await env.attempts_of("Greeter/greet", other, f"Hello, {other}!") == {"h2c": 1}
    async def streamed() -> bool | None:
        n = unique("ts")
        got = await env.attempts_of("Greeter/with_run", n, f"Hello, {n.upper()}!")
        return True if got == {"h2c_bidi": 1} else None

    await poll("with_run in one bidirectional attempt", DEADLINE_S, streamed)


async def test_an_http1_only_deployment_registered_without_the_flag_falls_back(env: Env, ts_http1: str) -> None:
    dep = await env.register(ts_http1)
    assert (dep["protocol_type"], dep["http_version"]) == ("RequestResponse", "HTTP/1.1")
    name = unique("ts1")
    await env.ready("Greeter/with_run", name, f"Hello, {name.upper()}!")
    async def over_http1() -> bool | None:  # the h2c-only registration of the same Greeter came before
        with_run = await env.transports_of("Greeter/with_run", name, f"Hello, {name.upper()}!")
        return True if with_run == {"http1"} else None

    await poll("with_run over HTTP/1.1", DEADLINE_S, over_http1)
