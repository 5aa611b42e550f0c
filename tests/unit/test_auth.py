"""Unit tests of `ingress.auth` (grants, the credentials file, API key and JWT verification, reloads)
and of the Redis TLS URL options in `shardgate.redisconn`."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from redis.asyncio import Redis

from ingress.app import IngressNode
from ingress.auth import (
    AdminAccess,
    AuthenticationFailed,
    CredentialsError,
    CredentialStore,
    Grant,
    Target,
    TargetResolver,
    Verifier,
)
from ingress.auth.credentials import load_credentials, parse_credentials
from ingress.auth.grant import GrantError, ServicePattern
from ingress.auth.targets import F_HANDLER, F_SCOPE, F_SERVICE, invocation_key
from ingress.config import IngressConfig
from ingress.errors import RegistryUnavailable
from partition import keys
from partition.invocation import HashField
from shardgate import redisconn
from shardgate.envconfig import ConfigError
from shardgate.schema import SchemaSnapshot
from shardgate.sharding import InvocationId

SECRET = "s" * 40
UNKNOWN = "inv_1fvjNosHQLWq590VmVAH6jxQ707nAAAAAA"
OTHER_SECRET = "o" * 40


def _pem(public_key: Any) -> str:
    return str(public_key.public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _token(key: Any, alg: str, kid: str | None = None, exp_in_s: float = 300, **claims: Any) -> str:
    payload = {"sub": "tester", "exp": int(time.time() + exp_in_s), **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def _verifier(doc: dict[str, Any], tmp_path: Path | None = None) -> Verifier:
    return Verifier(parse_credentials(doc, tmp_path or Path(".")))


def _bearer(token: str) -> str:
    return f"Bearer {token}"


# ---- grants ---------------------------------------------------------------------------------------


def test_service_patterns_cover_services_handlers_and_prefixes() -> None:
    grant = Grant.from_fields({"services": ["Greeter", "Counter/add", "billing.*/get*"]}, "t")
    assert grant.allows(Target("Greeter", "greet"))
    assert grant.allows(Target("Greeter", None))  # a whole-service pattern covers unknown handlers
    assert grant.allows(Target("Counter", "add"))
    assert not grant.allows(Target("Counter", "reset"))
    assert not grant.allows(Target("Counter", None))
    assert grant.allows(Target("billing.eu", "get_invoice"))
    assert not grant.allows(Target("billing.eu", "delete"))
    assert not grant.allows(Target("Other", "greet"))
    assert not grant.allows(None)


def test_scopes_are_checked_and_unscoped_needs_no_scope_unless_required() -> None:
    grant = Grant.from_fields({"services": ["*"], "scopes": ["tenant-a", "team-*"]}, "t")
    assert grant.allows(Target("S", "h"))
    assert grant.allows(Target("S", "h", "tenant-a"))
    assert grant.allows(Target("S", "h", "team-blue"))
    assert not grant.allows(Target("S", "h", "tenant-b"))
    strict = Grant.from_fields({"services": ["*"], "scopes": ["tenant-a"], "require_scope": True}, "t")
    assert not strict.allows(Target("S", "h"))
    assert strict.allows(Target("S", "h", "tenant-a"))
    assert not strict.everything and not grant.everything
    assert Grant.from_fields({"services": ["*"], "scopes": ["*"]}, "t").everything


def test_admin_access_levels() -> None:
    read = Grant.from_fields({"admin": "read"}, "t")
    assert read.allows_admin("GET", "/deployments") and read.allows_admin("POST", "/v3/query")
    assert not read.allows_admin("POST", "/deployments")
    assert not read.allows_admin("PATCH", "/invocations/x/kill")
    assert Grant.from_fields({"admin": True}, "t").allows_admin("DELETE", "/deployments/dp_1")
    assert not Grant.from_fields({}, "t").allows_admin("GET", "/services")
    assert Grant.from_fields({"admin": "write"}, "t").admin is AdminAccess.WRITE


@pytest.mark.parametrize("fields", [{"services": "Greeter"}, {"services": ["A/b/c"]}, {"services": ["/x"]},
                                    {"services": ["A/"]}, {"scopes": [1]}, {"admin": "root"},
                                    {"require_scope": "yes"}])
def test_bad_grant_fields_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(GrantError):
        Grant.from_fields(fields, "t")


def test_service_pattern_defaults_to_every_handler() -> None:
    assert ServicePattern.parse("Greeter") == ServicePattern("Greeter", "*")
    assert ServicePattern.parse("Greeter/*") == ServicePattern("Greeter", "*")


# ---- the credentials file --------------------------------------------------------------------------


def test_toml_and_json_files_say_the_same(tmp_path: Path, ed_key: ed25519.Ed25519PrivateKey) -> None:
    (tmp_path / "ed.pem").write_text(_pem(ed_key.public_key()))
    key_hash = hashlib.sha256(b"k-1").hexdigest()
    (tmp_path / "c.toml").write_text(f"""
[jwt]
audience = "shardgate"
leeway_s = 5

[[jwt_keys]]
kid = "ed"
alg = "EdDSA"
public_key_file = "ed.pem"

[[api_keys]]
id = "ci"
key_sha256 = "{key_hash}"
services = ["Greeter"]
admin = "read"
expires_at = 2099-01-01T00:00:00Z
""")
    (tmp_path / "c.json").write_text(json.dumps({
        "jwt": {"audience": "shardgate", "leeway_s": 5},
        "jwt_keys": [{"kid": "ed", "alg": "EdDSA", "public_key_file": "ed.pem"}],
        "api_keys": [{"id": "ci", "key": "k-1", "services": ["Greeter"], "admin": "read",
                      "expires_at": "2099-01-01T00:00:00+00:00"}],
    }))
    toml, js = load_credentials(tmp_path / "c.toml"), load_credentials(tmp_path / "c.json")
    assert toml.api_keys == js.api_keys and toml.jwt == js.jwt
    assert [(k.kid, k.alg) for k in toml.jwt_keys] == [("ed", "EdDSA")]


@pytest.mark.parametrize(("doc", "message"), [
    ({"api_keys": [{"id": "a"}]}, "exactly one of key, key_sha256"),
    ({"api_keys": [{"id": "a", "key_sha256": "abc"}]}, "not hex"),
    ({"api_keys": [{"id": "a", "key": "x"}, {"id": "b", "key": "x"}]}, "listed twice"),
    ({"api_keys": [{"id": "a", "key": "x", "expires_at": "2030-01-01T00:00:00"}]}, "time zone"),
    ({"jwt_keys": [{"alg": "none"}]}, "alg must be one of"),
    ({"jwt_keys": [{"alg": "HS256", "secret": "short"}]}, "at least 32 bytes"),
    ({"jwt_keys": [{"alg": "RS256", "public_key": "nope"}]}, "not a PEM public key"),
    ({"jwt": {"leeway_s": -1}}, "leeway_s"),
    ({"users": []}, "unknown credentials section"),
])
def test_bad_files_name_the_entry_but_never_the_secret(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(CredentialsError, match=message) as info:
        parse_credentials(doc, Path("."))
    assert "short" not in str(info.value)  # the HS256 secret's value is never echoed


def test_a_key_of_the_wrong_type_for_its_algorithm_is_refused(ed_key: ed25519.Ed25519PrivateKey) -> None:
    with pytest.raises(CredentialsError, match="not a key for RS256"):
        parse_credentials({"jwt_keys": [{"alg": "RS256", "public_key": _pem(ed_key.public_key())}]}, Path("."))


def test_unparsable_file_is_a_credentials_error(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"api_keys": [')
    with pytest.raises(CredentialsError, match="does not parse"):
        load_credentials(path)
    with pytest.raises(CredentialsError, match="cannot read"):
        load_credentials(tmp_path / "missing.json")
    assert issubclass(CredentialsError, ConfigError)


# ---- verification -----------------------------------------------------------------------------------


def _fails(verifier: Verifier, header: str | None, message: str, error: str | None = "invalid_token") -> None:
    with pytest.raises(AuthenticationFailed, match=message) as info:
        verifier.authenticate(header)
    assert info.value.status == 401 and info.value.error == error
    assert info.value.challenge().startswith('Bearer realm="shardgate"')


def test_every_algorithm_is_accepted(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    verifier = _verifier({"jwt_keys": [
        {"alg": "HS256", "secret": SECRET},
        {"alg": "RS256", "public_key": _pem(rsa_key.public_key())},
        {"alg": "EdDSA", "public_key": _pem(ed_key.public_key())},
    ]})
    for key, alg in ((SECRET, "HS256"), (rsa_key, "RS256"), (ed_key, "EdDSA")):
        grant = verifier.authenticate(_bearer(_token(key, alg, services=[f"{alg}Svc"], admin="read")))
        assert grant.subject == "tester" and grant.admin is AdminAccess.READ
        assert grant.allows(Target(f"{alg}Svc", "h")) and not grant.allows(Target("Other", "h"))


def test_api_key_is_accepted_and_expires() -> None:
    now = [1000.0]
    creds = parse_credentials({"api_keys": [
        {"id": "a", "key": "key-a", "services": ["A"]},
        {"id": "b", "key": "key-b", "expires_at": "1970-01-01T00:20:00+00:00"},
    ]}, Path("."))
    verifier = Verifier(creds, clock=lambda: now[0])
    assert verifier.authenticate("Bearer key-a").subject == "a"
    assert verifier.authenticate("bearer   key-b ").subject == "b"  # scheme case-insensitive
    now[0] = 1200.0
    _fails(verifier, "Bearer key-b", "credentials expired")  # also when it was cached before
    _fails(verifier, "Bearer key-c", "invalid credentials")


def test_missing_malformed_expired_and_wrongly_signed(ed_key: ed25519.Ed25519PrivateKey) -> None:
    verifier = _verifier({"jwt_keys": [{"alg": "HS256", "secret": SECRET},
                                       {"alg": "EdDSA", "public_key": _pem(ed_key.public_key())}]})
    _fails(verifier, None, "missing credentials", error=None)
    _fails(verifier, "Basic dXNlcjpwYXNz", "malformed", error="invalid_request")
    _fails(verifier, "Bearer", "malformed", error="invalid_request")
    _fails(verifier, "Bearer a.b.c", "not a JWT")
    _fails(verifier, _bearer(_token(SECRET, "HS256", exp_in_s=-120)), "credentials expired")
    _fails(verifier, _bearer(_token(OTHER_SECRET, "HS256")), "signature verification failed")
    other_ed = ed25519.Ed25519PrivateKey.generate()
    _fails(verifier, _bearer(_token(other_ed, "EdDSA")), "signature verification failed")
    unsigned = jwt.encode({"exp": int(time.time()) + 60}, "", algorithm="none")
    _fails(verifier, _bearer(unsigned), "no verification key")
    no_exp = jwt.encode({"sub": "x"}, SECRET, algorithm="HS256")
    _fails(verifier, _bearer(no_exp), "exp")


def test_issuer_audience_and_claim_shapes_are_checked() -> None:
    verifier = _verifier({"jwt": {"issuer": "iss-1", "audience": "shardgate"},
                          "jwt_keys": [{"alg": "HS256", "secret": SECRET}]})
    good = _token(SECRET, "HS256", iss="iss-1", aud="shardgate", services=["*"])
    assert verifier.authenticate(_bearer(good)).allows(Target("Any", "h"))
    _fails(verifier, _bearer(_token(SECRET, "HS256", iss="iss-2", aud="shardgate")), "issuer")
    _fails(verifier, _bearer(_token(SECRET, "HS256", iss="iss-1", aud="other")), "(?i)audience")
    _fails(verifier, _bearer(_token(SECRET, "HS256", iss="iss-1", aud="shardgate", services="A")), "claim")


def test_kid_selects_the_key_and_overlapping_keys_both_verify() -> None:
    verifier = _verifier({"jwt_keys": [{"kid": "old", "alg": "HS256", "secret": SECRET},
                                       {"kid": "new", "alg": "HS256", "secret": OTHER_SECRET}]})
    assert verifier.authenticate(_bearer(_token(SECRET, "HS256", kid="old")))
    assert verifier.authenticate(_bearer(_token(OTHER_SECRET, "HS256", kid="new")))
    assert verifier.authenticate(_bearer(_token(OTHER_SECRET, "HS256")))  # no kid: every HS256 key is tried
    _fails(verifier, _bearer(_token(SECRET, "HS256", kid="new")), "signature verification failed")
    _fails(verifier, _bearer(_token(SECRET, "HS256", kid="gone")), "no verification key")


def test_verified_tokens_are_cached_until_they_expire_in_a_bounded_cache() -> None:
    now = [time.time()]
    verifier = Verifier(parse_credentials({"jwt_keys": [{"alg": "HS256", "secret": SECRET}],
                                           "jwt": {"leeway_s": 0}}, Path(".")),
                        clock=lambda: now[0], cache_entries=2)
    tokens = [_token(SECRET, "HS256", exp_in_s=100 + i, services=[f"S{i}"]) for i in range(3)]
    first = verifier.authenticate(_bearer(tokens[0]))
    assert verifier.authenticate(_bearer(tokens[0])) is first  # from the cache
    grants = [verifier.authenticate(_bearer(t)) for t in tokens[1:]]
    assert len(verifier._cache) == 2
    assert verifier.authenticate(_bearer(tokens[0])) is not first  # dropped (least recently used)
    assert verifier.authenticate(_bearer(tokens[2])) is grants[1]
    now[0] += 200  # past every exp (per the verifier's clock): the cached entry no longer counts,
    again = verifier.authenticate(_bearer(tokens[2]))  # so the token is verified again (PyJWT's
    assert again == grants[1] and again is not grants[1]  # clock still says it is valid)


def test_a_token_with_a_string_exp_leaves_the_cache_when_it_expires() -> None:
    """PyJWT accepts `"exp": "<digits>"`; the cache must end at that time too, not never."""
    now = [time.time()]
    verifier = Verifier(parse_credentials({"jwt_keys": [{"alg": "HS256", "secret": SECRET}],
                                           "jwt": {"leeway_s": 0}}, Path(".")), clock=lambda: now[0])
    token = jwt.encode({"sub": "tester", "exp": str(int(time.time() + 100))}, SECRET, algorithm="HS256")
    first = verifier.authenticate(_bearer(token))
    assert verifier.authenticate(_bearer(token)) is first  # cached
    now[0] += 200
    assert verifier.authenticate(_bearer(token)) is not first  # past its exp: verified again


# ---- reloading ----------------------------------------------------------------------------------------


def _write(path: Path, doc: dict[str, Any]) -> None:
    """Replace the file atomically (a new inode), as a rotation should."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def test_store_reloads_a_changed_file_and_keeps_the_old_one_when_the_new_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    _write(path, {"api_keys": [{"id": "old", "key": "old-key"}]})
    store = CredentialStore.open(path)
    assert store.verifier.authenticate("Bearer old-key").subject == "old"
    assert not store.reload_if_changed()
    _write(path, {"api_keys": [{"id": "old", "key": "old-key"}, {"id": "new", "key": "new-key"}]})
    assert store.reload_if_changed()
    assert store.verifier.authenticate("Bearer new-key").subject == "new"
    assert store.verifier.authenticate("Bearer old-key").subject == "old"  # the overlap
    _write(path, {"api_keys": [{"id": "new", "key": "new-key"}]})
    assert store.reload_if_changed()
    with pytest.raises(AuthenticationFailed):
        store.verifier.authenticate("Bearer old-key")  # removed: no longer valid, cache or not
    path.write_text("{broken")
    assert not store.reload_if_changed()
    assert store.verifier.authenticate("Bearer new-key").subject == "new"


def test_store_refuses_to_open_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError):
        CredentialStore.open(tmp_path / "none.json")


# ---- the mirrored worker names --------------------------------------------------------------------------


def test_invocation_hash_names_match_the_worker() -> None:
    assert (F_SERVICE, F_HANDLER, F_SCOPE) == (HashField.SERVICE.value, HashField.HANDLER.value,
                                               HashField.SCOPE.value)
    assert invocation_key(3, "inv_1abc") == keys.invocation(3, "inv_1abc")


# ---- Redis TLS options --------------------------------------------------------------------------------------


def test_tls_settings_become_url_options_and_reach_the_client() -> None:
    url = redisconn.tls_url("rediss://u:p@h:6380/0", ca_file="/etc/ca.pem", cert_file="/c.pem",
                            key_file="/k.pem", verify_peer=False)
    assert url == ("rediss://u:p@h:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/c.pem"
                   "&ssl_keyfile=/k.pem&ssl_cert_reqs=none")
    kwargs = redisconn.connect(url, timeout_s=1, max_connections=2).connection_pool.connection_kwargs
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == ("/etc/ca.pem", "/c.pem", "/k.pem")
    assert kwargs["ssl_cert_reqs"] == "none" and kwargs["password"] == "p"
    assert redisconn.tls_url("redis://h:1/0") == "redis://h:1/0"
    with pytest.raises(ValueError, match="rediss://"):
        redisconn.tls_url("redis://h:1/0", ca_file="/ca.pem")


def test_cluster_urls_take_tls_options_only_with_tls() -> None:
    address = redisconn.parse_cluster_url("rediss+cluster://h:1,h:2?ssl_ca_certs=/ca.pem&ssl_check_hostname=false")
    assert address.tls and dict(address.tls_options) == {"ssl_ca_certs": "/ca.pem", "ssl_check_hostname": False}
    with pytest.raises(ValueError, match="no query options"):
        redisconn.parse_cluster_url("redis+cluster://h:1?ssl_ca_certs=/ca.pem")
    with pytest.raises(ValueError, match="unknown"):
        redisconn.parse_cluster_url("rediss+cluster://h:1?socket_timeout=1")


def test_env_tls_settings_fold_into_the_url_and_fail_without_tls() -> None:
    env = {"SHARDGATE_REDIS_URL": "rediss://h:6380/0", "SHARDGATE_REDIS_TLS_CA_FILE": "/ca.pem"}
    assert redisconn.redis_url_from_env(env, "redis://x") == "rediss://h:6380/0?ssl_ca_certs=/ca.pem"
    with pytest.raises(ConfigError, match="SHARDGATE_REDIS_TLS"):
        redisconn.redis_url_from_env({"SHARDGATE_REDIS_URL": "redis://:secret@h/0",
                                      "SHARDGATE_REDIS_TLS_CA_FILE": "/ca.pem"}, "redis://x")


# ---- wiring: nothing installed when off -------------------------------------------------------------------


async def test_the_guards_are_installed_only_when_auth_is_on(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    _write(path, {"api_keys": [{"id": "a", "key": "k", "admin": True}]})
    off = IngressNode.create(IngressConfig(partitions=4))
    on = IngressNode.create(IngressConfig(partitions=4, ingress_auth_file=str(path), admin_auth_file=str(path)))
    assert off.credential_stores() == [] and on.credential_stores() == [on.ingress_auth]  # one store, one file
    async with aiohttp.ClientSession() as http:
        for node in (off, on):
            node.http = http
        try:
            def names(app: web.Application) -> list[str]:
                return [getattr(m, "__name__", "") for m in app.middlewares]

            assert "ingress_auth" not in names(off.ingress_app()) and "admin_auth" not in names(off.admin_app())
            assert "ingress_auth" in names(on.ingress_app()) and "admin_auth" in names(on.admin_app())
        finally:
            for node in (off, on):
                await node.redis.aclose()


@dataclass(frozen=True)
class _NamesAnInvocation:
    """A parsed request of a kind the resolver has no case for, naming one invocation by id."""

    invocation_id: InvocationId


async def test_any_request_naming_an_invocation_is_checked_against_its_stored_target() -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)  # nothing listens there
    resolver = TargetResolver(SchemaSnapshot.empty, dead, 4)
    try:
        with pytest.raises(RegistryUnavailable):  # it went to read the invocation's hash
            await resolver.target(cast(web.Request, None), cast(Any, _NamesAnInvocation(InvocationId.parse(UNKNOWN))))
        assert await resolver.target(cast(web.Request, None), cast(Any, object())) is None  # unknown kind: closed
    finally:
        await dead.aclose()
