"""HTTP-level fuzz of the real ingress and admin aiohttp apps: random methods, paths, headers and
bodies. Every answer is below 500 or one the spec lists (ingress: 503 and 470; admin: the 500s of a
failed discovery, which carry Restate's `META00xx` code or its undecodable-manifest text, and the
501 of a DELETE without `force`, empty as Restate sends it), and every error body is JSON in the
API's own shape."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from shardgate.sharding import InvocationId
from tests.fuzz.harness import Answer, Served
from tests.fuzz.strategies import FUZZ_HTTP, deep, json_value, path, utf8_text

# Weighted towards the methods the routes take; a method llhttp does not know (`FOO`) never reaches the
# app (aiohttp answers it with its own text/plain 400), so only known ones are drawn.
METHODS = st.sampled_from(["GET", "POST", "GET", "POST", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
                           "PROPFIND"])
HEADER_NAMES = st.sampled_from(["content-type", "idempotency-key", "x-restate-limit-key", "accept", "origin",
                                "x-custom", "expect", "content-encoding", "access-control-request-method"])
HEADER_VALUES = st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-8", "",
                                 "*/*", "application/", "/json", "100-continue", "gzip", "é", "k1/k2", "a/b/c",
                                 "idem-1"]) | st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF),
                                                       max_size=20)
headers = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4)
INGRESS_WORDS = st.sampled_from([
    "/restate/call/Greeter/greet", "/restate/send/Greeter/greet", "/restate/call/Counter/k/add",
    "/restate/send/Signup/w/run", "/restate/attach", "/restate/output", "/restate/lookup",
    "/restate/attach/inv_1fvjNosHQLWq590VmVAH6jxQ707nGGCS8v", "/restate/workflow/Signup/w/output",
    "/restate/invocation/Greeter/greet/idem/attach", "/restate/awakeables/sign_1AAAA/resolve",
    "/restate/scope/s/call/Greeter/greet", "/Greeter/greet/send", "/restate/health", "/openapi",
])
queries = st.sampled_from(["", "?delay=5s", "?delay=P1D", "?delay=1" + "0" * 30, "?delay=%ff", "?limit-key=a",
                           "?delay=&delay=1s", "?%", "?delay=-1s"])
ids = st.builds(InvocationId, st.integers(0, 2**64 - 1), st.integers(0, 2**128 - 1)).map(str)
target_docs = st.one_of(
    st.fixed_dictionaries({"target": st.just("invocation"), "invocationId": ids | utf8_text}),
    st.fixed_dictionaries({"target": st.just("workflow"), "workflowName": st.sampled_from(["Signup", "W"]),
                           "workflowKey": st.sampled_from(["w", ""]) | utf8_text},
                          optional={"scope": st.sampled_from(["s", "a.b-c", "", "bad scope"])}),
    st.fixed_dictionaries({"target": st.just("idempotentInvocation"), "service": st.sampled_from(["Greeter"]),
                           "handler": st.sampled_from(["greet", "nope"]), "idempotencyKey": utf8_text},
                          optional={"key": st.none() | utf8_text}),
    st.fixed_dictionaries(
        {"target": st.sampled_from(["invocation", "workflow", "idempotentInvocation"]) | json_value},
        optional={k: utf8_text | json_value for k in ("invocationId", "workflowName", "workflowKey", "service",
                                                        "key", "handler", "idempotencyKey", "scope")}),
)
target_bodies = target_docs.map(lambda d: json.dumps(d).encode())
bodies = st.none() | st.binary(max_size=64) | json_value.map(lambda v: json.dumps(v).encode()) | target_bodies \
    | st.sampled_from([deep(20_000), deep(20_000, b'{"a":', b"}"), b'"\\ud800"', b"\xed\xa0\x80"])


def _header_safe(hdrs: dict[str, str]) -> dict[str, str]:
    """What an HTTP client can send at all (no line breaks, Latin-1 only)."""
    return {k: v for k, v in hdrs.items() if "\r" not in v and "\n" not in v and v.isprintable()}


def _check_ingress(method: str, answer: Answer) -> None:
    event(f"ingress {answer.status}")
    assert answer.status < 500 or answer.status == 503, (answer.status, answer.body[:300])
    if answer.status >= 400 and method != "HEAD":
        body = answer.json()
        assert set(body) == {"code", "message", "source"} and body["code"] == answer.status
        assert answer.headers["x-restate-error-source"] == body["source"]


@FUZZ_HTTP
@given(METHODS, INGRESS_WORDS | path, queries, headers, bodies)
def test_ingress_answers_every_request_without_a_5xx(ingress_http: Served, method: str, target: str,
                                                       query: str, hdrs: dict[str, str],
                                                       body: bytes | None) -> None:
    answer = ingress_http.request(method, _encodable(target) + query, _header_safe(hdrs), body)
    _check_ingress(method, answer)


@FUZZ_HTTP
@given(st.sampled_from(["/restate/attach", "/restate/output", "/restate/lookup"]), bodies)
def test_target_bodies_are_answered_or_refused_with_a_400(ingress_http: Served, target: str,
                                                          body: bytes | None) -> None:
    answer = ingress_http.request("POST", target, {"content-type": "application/json"}, body)
    _check_ingress("POST", answer)
    if answer.status >= 500 or answer.status == 470:
        return
    assert answer.status in (200, 400, 404), answer.body[:300]


# ---- admin API ----------------------------------------------------------------------------------

ADMIN_PATHS = st.sampled_from([
    "/deployments", "/deployments/dp_1AAAAAAAAAAAAAAAAAAAAAA", "/deployments/x", "/services", "/services/Greeter",
    "/services/Greeter/handlers", "/services/Greeter/handlers/greet", "/services/Greeter/openapi",
    "/services/Nope", "/health", "/version", "/openapi", "/v2/deployments", "/v3/services", "/v4/deployments",
    "/invocations/inv_1fvjNosHQLWq590VmVAH6jxQ707nGGCS8v", "/deployments?force=true",
])
admin_headers = st.dictionaries(st.sampled_from(["x-a", "authorization", "bad name", "content-length", "é"]),
                                utf8_text | st.sampled_from(["a\x00b", "\t", "ok"]), max_size=3)


def _register_bodies(deployment: str) -> st.SearchStrategy[bytes]:
    uris = st.sampled_from([deployment, deployment + "/", deployment + "/nope", "http://xn--/", "http://[::1/",
                            "http://a:99999/", "ftp://x/", "127.0.0.1:1", ""]) | json_value
    well_typed = st.fixed_dictionaries({"uri": st.sampled_from([deployment, deployment + "/"])}, optional={
        "additional_headers": st.dictionaries(st.sampled_from(["x-a", "authorization"]), HEADER_VALUES, max_size=2),
        "metadata": st.dictionaries(utf8_text, utf8_text, max_size=3), "force": st.booleans(),
        "dry_run": st.booleans(), "breaking": st.booleans(), "use_http_11": st.booleans()})
    anything = st.fixed_dictionaries({"uri": uris}, optional={
        "additional_headers": admin_headers | json_value, "metadata": st.dictionaries(utf8_text, utf8_text) | json_value,
        "force": st.booleans() | json_value, "dry_run": st.booleans(), "breaking": json_value,
        "use_http_11": json_value, "arn": utf8_text})
    docs = st.one_of(well_typed, well_typed, anything).map(lambda d: json.dumps(d).encode())
    return st.one_of(docs, docs, docs, bodies.map(lambda b: b or b""))  # mostly ones that get as far as Redis


def _check_admin(method: str, answer: Answer) -> None:
    event(f"admin {answer.status}")
    if answer.status == 501:
        assert method == "DELETE" and answer.body == b""
        return
    if answer.status == 500:
        body = answer.json()
        assert (body["restate_code"] or "").startswith("META00") or body["message"].startswith(
            "received a bad response"), body
    assert answer.status < 500 or answer.status in (500, 503), (answer.status, answer.body[:300])
    if answer.status >= 400 and method != "HEAD":
        assert set(answer.json()) == {"message", "restate_code"}


@FUZZ_HTTP
@given(st.data())
def test_admin_register_answers_every_body_without_an_unlisted_5xx(admin_http: Served, sdk_deployment: str,
                                                                 data: st.DataObject) -> None:
    body = data.draw(_register_bodies(sdk_deployment))
    path_ = data.draw(st.sampled_from(["/deployments", "/v2/deployments", "/v3/deployments"]))
    answer = admin_http.request("POST", path_, {"content-type": "application/json"}, body)
    _check_admin("POST", answer)


@FUZZ_HTTP
@given(METHODS, ADMIN_PATHS | path, st.sampled_from(["application/json", "text/plain", "application/x+json"]),
       bodies)
def test_admin_answers_every_request_without_an_unlisted_5xx(admin_http: Served, method: str, target: str,
                                                            content_type: str, body: Any) -> None:
    answer = admin_http.request(method, _encodable(target), {"content-type": content_type}, body)
    _check_admin(method, answer)


def _encodable(target: str) -> str:
    """A target an HTTP client can put on the request line: non-ASCII percent-encoded, controls
    and spaces too (the raw-bytes tests above cover what a client will not send)."""
    return "".join(c if 0x21 <= ord(c) < 0x7F and c != "#" else "".join(f"%{b:02X}" for b in c.encode())
                   for c in target)
