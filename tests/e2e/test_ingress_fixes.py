"""Ingress behaviour fixes, checked through a real cluster (`sgtools.dev.DevCluster`: Redis, one
partition worker, one ingress) serving a real restate-sdk deployment
(`tests/services/ingress_fixes_service.py`). Expected answers are the ones Restate 1.7.12 gives:

a. a send with a zero delay (`0`, `0ms`, `PT0S`) still answers `executionTime`;
b. the output of a handler whose manifest declares no output content type carries no
   `Content-Type` (aiohttp would add `application/octet-stream`); declared types are kept;
c. admin paths no route matches answer a JSON 404 in the admin error shape; a known path with
   another method answers a JSON 405 with `allow`.
"""

from __future__ import annotations

import calendar
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from sgtools.dev import ClusterSpec, DevCluster
from tests.clusters import poll
from tests.deployments import serve_sdk_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

SERVICE_APP = "tests.services.ingress_fixes_service:app"


@dataclass
class Env:
    cluster: DevCluster
    http: aiohttp.ClientSession

    async def request(self, method: str, url: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, raw body); JSON body unless None (then no content-type at all)."""
        kwargs: dict[str, Any] = {"json": body} if body is not None else {"skip_auto_headers": {"Content-Type"}}
        async with self.http.request(method, url, headers=headers, **kwargs) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()

    async def ingress(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return await self.request(method, self.cluster.ingress_url + path, body, headers)

    async def admin(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        return await self.request(method, self.cluster.admin_url + path)


@pytest.fixture(scope="module")
def fixes_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_sdk_app(SERVICE_APP, tmp_path_factory.mktemp("fixes-sdk") / "hypercorn.log") as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, fixes_deployment: str) -> AsyncIterator[Env]:
    data_dir: Path = tmp_path_factory.mktemp("fixes-cluster") / "data"
    spec = ClusterSpec(workers=1, partitions=4, ingress_port=0, admin_port=0, data_dir=data_dir,
                       start_timeout_s=45.0)
    async with DevCluster(spec) as cluster, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        e = Env(cluster, http)
        async with http.post(f"{cluster.admin_url}/deployments", json={"uri": fixes_deployment}) as r:
            assert r.status == 201, await r.text()

        async def serving() -> bool | None:
            status, _, _ = await e.ingress("POST", "/restate/call/Outputs/json_str")
            return True if status == 200 else None

        await poll("the ingress to serve the Outputs deployment", 20.0, serving)
        yield e


def _epoch_s(execution_time: str) -> float:
    """Seconds since the epoch of an `executionTime` like `2026-12-01T20:06:16.592000000Z`."""
    return calendar.timegm(time.strptime(execution_time[:19], "%Y-%m-%dT%H:%M:%S")) + int(execution_time[20:23]) / 1000


async def _output(env: Env, invocation_id: str) -> bytes:
    async def done() -> bytes | None:
        status, _, body = await env.ingress("GET", f"/restate/output/{invocation_id}")
        assert status in (200, 470), (status, body)
        return body if status == 200 else None

    return await poll(f"the output of {invocation_id}", 15.0, done)


# ---- a. zero delays ------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", ["0", "0ms", "PT0S"])
async def test_send_with_zero_delay_answers_execution_time(env: Env, delay: str) -> None:
    before_s = time.time()
    status, headers, raw = await env.ingress("POST", f"/restate/send/Outputs/greet?delay={delay}", "Ada")
    assert status == 202, raw
    body = json.loads(raw)
    assert list(body) == ["invocationId", "executionTime", "status"], body  # Restate's key order
    assert body["status"] == "Accepted" and headers["x-restate-id"] == body["invocationId"]
    assert before_s - 1.0 <= _epoch_s(body["executionTime"]) <= time.time() + 1.0, body
    assert body["executionTime"].endswith("000000Z"), body  # ms precision, nine digits
    assert await _output(env, body["invocationId"]) == b'"Hello, Ada!"'  # and it ran at once


async def test_send_without_delay_has_no_execution_time(env: Env) -> None:
    status, _, raw = await env.ingress("POST", "/restate/send/Outputs/greet", "Bob")
    assert status == 202, raw
    assert list(json.loads(raw)) == ["invocationId", "status"]


# ---- b. output content types ---------------------------------------------------------------------


@pytest.mark.parametrize(("handler", "content_type", "body"), [
    ("unannotated", None, b'"hi"'),  # manifest: no output contentType, yet a body
    ("void", None, b""),
    ("json_str", "application/json", b'"hi"'),
    ("text", "text/plain", b"plain text"),
])
async def test_response_content_type_is_the_declared_one_or_none(
    env: Env, handler: str, content_type: str | None, body: bytes
) -> None:
    status, headers, raw = await env.ingress("POST", f"/restate/call/Outputs/{handler}")
    assert (status, raw) == (200, body)
    assert headers.get("content-type") == content_type, headers


async def test_stored_output_of_undeclared_type_has_no_content_type(env: Env) -> None:
    key = f"ik-{uuid.uuid4().hex}"
    status, headers, raw = await env.ingress("POST", "/restate/call/Outputs/unannotated",
                                             headers={"idempotency-key": key})
    assert (status, raw) == (200, b'"hi"') and "content-type" not in headers, headers
    for verb in ("output", "attach"):
        status, headers, raw = await env.ingress("GET", f"/restate/invocation/Outputs/unannotated/{key}/{verb}")
        assert (status, raw) == (200, b'"hi"'), raw
        assert "content-type" not in headers, (verb, headers)


# ---- c. unknown admin paths ----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/nope"), ("GET", "/v4/nope"), ("DELETE", "/nope"), ("POST", "/deployments/xyz/whatever"),
    ("GET", "/deployments/dp_11111111111111111111111/whatever"), ("GET", "/deployments/"),
])
async def test_unknown_admin_path_is_json_404(env: Env, method: str, path: str) -> None:
    status, headers, raw = await env.admin(method, path)
    assert status == 404 and headers["content-type"].startswith("application/json"), headers
    assert json.loads(raw) == {"message": f"no admin route for {method} {path}", "restate_code": None}


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/deployments", "GET,HEAD,POST"),
    ("POST", "/deployments/xyz", "GET,HEAD,DELETE"),  # Restate also lists PATCH, PUT: not served here
    ("POST", "/v2/services/Outputs", "GET,HEAD,PATCH"),
])
async def test_known_admin_path_with_other_method_is_json_405(env: Env, method: str, path: str, allow: str) -> None:
    status, headers, raw = await env.admin(method, path)
    assert (status, headers.get("allow")) == (405, allow)
    assert json.loads(raw) == {"message": f"{method} is not allowed on {path}", "restate_code": None}


async def test_admin_errors_of_known_routes_stay_json(env: Env) -> None:
    status, headers, raw = await env.admin("GET", "/services/Nope")
    assert status == 404 and headers["content-type"].startswith("application/json")
    assert json.loads(raw) == {"message": "The requested service 'Nope' does not exist",
                                             "restate_code": None}
