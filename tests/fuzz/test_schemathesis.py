"""schemathesis against the admin API's own OpenAPI document (`GET /openapi`): requests generated
from the document get no 5xx, and answers conform to it (status codes, content types, schemas).

schemathesis calls the API with a blocking HTTP client, so the admin app runs on a thread of its
own (`tests.fuzz.harness.serve_admin_in_thread`), over the session's real Redis. `POST /deployments`
is left to `test_fuzz_http`: the URIs schemathesis makes up name hosts on the internet, whose
discovery answers the listed 500 `META0003` after DNS lookups and retries.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any, cast

import aiohttp
import pytest
import schemathesis
from hypothesis import settings
from redis.asyncio import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ingress.admin import build_admin_app
from ingress.admin.apidoc import admin_document
from shardgate.registry import RegistryCache, RegistryStore
from tests.fuzz.harness import ADMIN_SETTINGS, serve_admin_in_thread
from tests.fuzz.strategies import FUZZ

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def admin_url(_redis_server: str) -> Iterator[str]:
    with serve_admin_in_thread(_redis_server) as url:
        yield url


def _admin_openapi() -> dict[str, Any]:
    """The document `GET /openapi` serves, built from the app's router at collection time (the
    Redis client is never connected: only the routes are read)."""
    store = RegistryStore(Redis.from_url("redis://127.0.0.1:1"))
    app = build_admin_app(store, RegistryCache(store), cast(aiohttp.ClientSession, None), ADMIN_SETTINGS)
    routes = [(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None]
    return admin_document(routes, ADMIN_SETTINGS.server_version)


DOCUMENT = _admin_openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_document_tested_is_the_one_served(admin_url: str) -> None:
    with urllib.request.urlopen(f"{admin_url}/openapi", timeout=10) as resp:
        assert json.loads(resp.read()) == DOCUMENT


@schema.exclude(method="POST", path_regex=r"/deployments$").parametrize()
@settings(FUZZ, max_examples=15)
def test_admin_api_conforms_to_its_openapi_document(case: schemathesis.Case, admin_url: str) -> None:
    case.call_and_validate(base_url=admin_url, checks=CHECKS, timeout=10)
