"""Request identity through a real cluster: a deployment that requires signed requests (restate-sdk
`identity_keys`) can be registered and invoked when shardgate has the key, and refuses it otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sgtools.dev import ClusterSpec, DevCluster
from shardgate.identity import RequestSigner
from tests.deployments import serve_sdk_app

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = tmp_path_factory.mktemp("identity") / "key.pem"
    path.write_bytes(pem)
    return path


@pytest.fixture(scope="module")
def signed_deployment(key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The identity test service, accepting only requests signed with `key_file`."""
    key_id = RequestSigner.from_file(key_file).key_id
    log = tmp_path_factory.mktemp("identity-sdk") / "hypercorn.log"
    with serve_sdk_app("tests.services.identity_service:app", log, {"IDENTITY_KEYS": key_id}) as url:
        yield url


async def _cluster(tmp_path: Path, env: dict[str, str]) -> DevCluster:
    spec = ClusterSpec(workers=1, partitions=4, ingress_port=0, admin_port=0, data_dir=tmp_path / "cluster",
                       extra_env=env)
    cluster = DevCluster(spec)
    await cluster.start()
    return cluster


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_signed_deployment_is_registered_and_invoked(
    key_file: Path, signed_deployment: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = await _cluster(tmp_path, {"SHARDGATE_REQUEST_IDENTITY_KEY_FILE": str(key_file)})
    try:
        async with http.post(f"{cluster.admin_url}/deployments", json={"uri": signed_deployment}) as r:
            assert r.status == 201, await r.text()
        async with http.post(f"{cluster.ingress_url}/restate/call/Greeter/greet", json="Ada") as r:
            assert r.status == 200, await r.text()
            assert await r.json() == "Hello Ada!"
    finally:
        await cluster.stop()


async def test_unsigned_cluster_is_refused_by_the_deployment(
    signed_deployment: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = await _cluster(tmp_path, {})
    try:
        async with http.post(f"{cluster.admin_url}/deployments", json={"uri": signed_deployment}) as r:
            assert r.status >= 400
            body = await r.json()
            assert "401" in body["message"], body
    finally:
        await cluster.stop()
