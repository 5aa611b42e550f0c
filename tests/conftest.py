"""Shared fixtures: a real restate-sdk deployment (`tests/services/conformance_service.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deployments import serve_sdk_app


@pytest.fixture(scope="session")
def sdk_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve the conformance services (Greeter, Counter, Signup) with hypercorn (HTTP/1.1 and h2c on one port).

    Yields the deployment's base URL, e.g. `http://127.0.0.1:41234`.
    """
    log_path = tmp_path_factory.mktemp("sdk") / "hypercorn.log"
    with serve_sdk_app("tests.services.conformance_service:app", log_path) as url:
        yield url
