"""RequestSigner against a real restate-sdk 1.2.0 deployment configured with `identity_keys`.

Serves `tests/services/identity_service.py` with hypercorn in a subprocess (one per key under
test) and checks the statuses of spec §11 / `k_request_identity.json`.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardgate.identity import JWT_HEADER, SIGNATURE_SCHEME_HEADER, RequestSigner
from shardgate.protocol import content_type, decode_frames, input_command, parse_message, start_message
from tests.deployments import serve_sdk_app
from tests.testdata import vector_path

VECTOR = json.loads(vector_path("k_request_identity.json").read_text())
INVOKE_PATH = "/invoke/Greeter/greet"
OUTPUT_TYPE = 0x0401


@dataclass
class Deployment:
    url: str
    signer: RequestSigner


def _request(url: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """`serve(keys)` starts a deployment accepting `keys`; all are stopped at module teardown."""
    with contextlib.ExitStack() as stack:
        def start(keys: list[str]) -> str:
            log_path = tmp_path_factory.mktemp("identity_sdk") / "hypercorn.log"
            return stack.enter_context(
                serve_sdk_app("tests.services.identity_service:app", log_path, {"IDENTITY_KEYS": ",".join(keys)}))

        yield start


@pytest.fixture(scope="module", params=["fresh_key", "vector_key"])
def deployment(request: pytest.FixtureRequest, serve) -> Deployment:
    if request.param == "fresh_key":
        signer = RequestSigner(Ed25519PrivateKey.generate())
    else:
        signer = RequestSigner.from_pem(VECTOR["private_key_pem_pkcs8"].encode())
        assert signer.key_id == VECTOR["identity_key"]
    return Deployment(serve([signer.key_id]), signer)


def _invoke_body() -> bytes:
    start = start_message(bytes(range(24)), "inv_identitytest", 1, None, False, "", 0, 0, 12648430, 6)
    return start + input_command(b'"World"')


def _invoke_headers(extra: dict[str, str]) -> dict[str, str]:
    ct = content_type(6)
    return {"content-type": ct, "accept": ct, "x-restate-invocation-id": "inv_identitytest", **extra}


def _invoke(url: str, identity: dict[str, str], path: str = INVOKE_PATH) -> tuple[int, bytes]:
    return _request(url + path, _invoke_headers(identity), _invoke_body())


def _assert_greeted(status: int, body: bytes) -> None:
    assert status == 200, body
    frames = decode_frames(body)
    outputs = [parse_message(f) for f in frames if f.type == OUTPUT_TYPE]
    assert [o.value.content for o in outputs] == [b'"Hello World!"']


def test_signed_invocation_is_accepted(deployment: Deployment) -> None:
    status, body = _invoke(deployment.url, deployment.signer.headers(INVOKE_PATH))
    _assert_greeted(status, body)
    # a reused (cached) token is accepted as well
    _assert_greeted(*_invoke(deployment.url, deployment.signer.headers(INVOKE_PATH)))


def test_no_identity_headers_is_rejected(deployment: Deployment) -> None:
    assert _invoke(deployment.url, {}) == (401, b"")


def test_unsigned_scheme_is_rejected(deployment: Deployment) -> None:
    assert _invoke(deployment.url, {SIGNATURE_SCHEME_HEADER: "unsigned"})[0] == 401


def test_token_for_another_path_is_rejected(deployment: Deployment) -> None:
    hdrs = deployment.signer.headers("/invoke/Greeter/other")
    assert _invoke(deployment.url, hdrs)[0] == 401
    assert _invoke(deployment.url, deployment.signer.headers("/discover"))[0] == 401


def test_expired_token_is_rejected(deployment: Deployment) -> None:
    hdrs = deployment.signer.headers(INVOKE_PATH, now_s=time.time() - 3600)
    assert _invoke(deployment.url, hdrs)[0] == 401


def test_not_yet_valid_token_is_rejected(deployment: Deployment) -> None:
    hdrs = deployment.signer.headers(INVOKE_PATH, now_s=time.time() + 3600)
    assert _invoke(deployment.url, hdrs)[0] == 401


def test_token_of_another_key_is_rejected(deployment: Deployment) -> None:
    other = RequestSigner(Ed25519PrivateKey.generate())
    assert _invoke(deployment.url, other.headers(INVOKE_PATH))[0] == 401


def test_tampered_signature_is_rejected(deployment: Deployment) -> None:
    hdrs = deployment.signer.headers(INVOKE_PATH)
    head, claims, sig = hdrs[JWT_HEADER].split(".")
    sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert _invoke(deployment.url, {**hdrs, JWT_HEADER: f"{head}.{claims}.{sig}"})[0] == 401


def test_prefixed_path_uses_unprefixed_audience(deployment: Deployment) -> None:
    """The audience is the path from `/invoke` on: a mount prefix is not part of it."""
    status, body = _invoke(deployment.url, deployment.signer.headers(INVOKE_PATH),
                           path="/some/prefix" + INVOKE_PATH)
    _assert_greeted(status, body)


def test_discovery(deployment: Deployment) -> None:
    accept = {"accept": "application/vnd.restate.endpointmanifest.v3+json"}
    assert _request(deployment.url + "/discover", accept)[0] == 401
    assert _request(deployment.url + "/discover", {**accept, **deployment.signer.headers(INVOKE_PATH)})[0] == 401
    status, body = _request(deployment.url + "/discover", {**accept, **deployment.signer.headers("/discover")})
    assert status == 200, body
    assert [s["name"] for s in json.loads(body)["services"]] == ["Greeter"]


def test_deployment_without_identity_keys_accepts_signed_requests(serve) -> None:
    """Signing is harmless towards deployments that do not check identity."""
    url = serve([])
    signer = RequestSigner(Ed25519PrivateKey.generate())
    _assert_greeted(*_invoke(url, signer.headers(INVOKE_PATH)))
    _assert_greeted(*_invoke(url, {}))
