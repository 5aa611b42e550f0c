"""Fuzz fixtures: the ingress and admin apps served in-process (`tests.fuzz.harness`), one per module.

The admin API needs a real Redis: the session's redis-server of the integration tests is reused.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.harness import Served, serve_admin, serve_ingress
from tests.integration.conftest import _redis_server  # noqa: F401  (the session's redis-server fixture)


@pytest.fixture(scope="module")
def ingress_http() -> Iterator[Served]:
    served = serve_ingress()
    try:
        yield served
    finally:
        served.close()


@pytest.fixture(scope="module")
def admin_http(_redis_server: str) -> Iterator[Served]:  # noqa: F811
    served = serve_admin(_redis_server)
    try:
        yield served
    finally:
        served.close()
