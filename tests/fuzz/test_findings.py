"""Regression tests for the crashes the fuzzing of issue 10 found, one per finding.

* `POST /deployments` with odd bodies answered aiohttp's plain-text 500: now 400/413/422 in the
  admin JSON error shape;
* `POST /restate/attach` with a pathological JSON body answered `{"code":500,...}`: now a 400 in
  the ingress JSON error shape;
* deeply nested JSON raised `RecursionError` past the body parsers: now a 400 on both APIs;
* a `delay` with more digits than Python converts to an int raised `ValueError`: now a 400.
"""

from __future__ import annotations

import json

import pytest

from tests.fuzz.harness import Answer, Served
from tests.fuzz.strategies import deep

JSON = {"content-type": "application/json"}
LONE_ID = "inv_1\\ud800" + "a" * 32  # a lone surrogate escape inside an id-shaped string


def _admin_error(answer: Answer, status: int) -> str:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"message", "restate_code"}
    return str(body["message"])


def _ingress_error(answer: Answer, status: int) -> str:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"code", "message", "source"} and body["code"] == status and body["source"] == "ingress"
    return str(body["message"])


# ---- admin: POST /deployments -------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "message"), [
    (deep(100_000), 400, "Failed to parse the request body as JSON: recursion limit exceeded"),
    (b'{"uri": ' + deep(50_000, b'{"a":', b"}") + b"}", 400, "recursion limit exceeded"),
    (b'{"uri": "http://\\ud800/"}', 400, "lone surrogate"),
    (b'{"uri": "http://h/", "metadata": {"\\udfff": "x"}}', 400, "lone surrogate"),
    (b'{"uri": "http://h/", "additional_headers": {"x": "\\udc80"}}', 400, "lone surrogate"),
    (b'{"uri": "http://xn--/"}', 422, "did not match any variant"),  # yarl fails on .host only
    (b'{"uri": "http://h/", "additional_headers": {"x": "a\\u0000b"}}', 422, "did not match any variant"),
    (b"\xed\xa0\x80", 400, "Failed to parse the request body as JSON"),  # a surrogate in UTF-8 bytes
])
def test_odd_register_bodies_are_json_4xx(admin_http: Served, body: bytes, status: int, message: str) -> None:
    got = _admin_error(admin_http.request("POST", "/deployments", JSON, body), status)
    assert message in got


def test_register_body_past_the_limit_is_a_json_413(admin_http: Served) -> None:
    body = json.dumps({"uri": "http://h/", "metadata": {"x": "y" * (2 * 1024 * 1024)}}).encode()
    got = _admin_error(admin_http.request("POST", "/deployments", JSON, body), 413)
    assert got == "Failed to buffer the request body: length limit exceeded"


# ---- ingress: POST /restate/attach|output|lookup -------------------------------------------------


@pytest.mark.parametrize("target", ["/restate/attach", "/restate/output", "/restate/lookup"])
@pytest.mark.parametrize(("body", "detail"), [
    (deep(100_000), "recursion limit exceeded"),
    (deep(100_000, b'{"target":', b"}"), "recursion limit exceeded"),
    (b'{"target":"invocation","invocationId":"' + LONE_ID.encode() + b'"}', "lone surrogate"),
    (b'{"target":"workflow","workflowName":"Signup","workflowKey":"\\ud800"}', "lone surrogate"),
    (b'{"target":"idempotentInvocation","service":"\\udbff","handler":"h","idempotencyKey":"k"}',
     "lone surrogate"),
    (b'"\xed\xa0\x80"', "invalid continuation byte"),
])
def test_pathological_target_bodies_are_json_400(ingress_http: Served, target: str, body: bytes,
                                                 detail: str) -> None:
    what = "lookup" if target.endswith("lookup") else "request"
    got = _ingress_error(ingress_http.request("POST", target, JSON, body), 400)
    assert got.startswith(f"cannot read body: invalid {what} body: ") and detail in got


def test_surrogate_free_invocation_id_with_non_ascii_is_still_a_bad_id(ingress_http: Served) -> None:
    body = json.dumps({"target": "invocation", "invocationId": "inv_1é" + "a" * 32}).encode()
    got = _ingress_error(ingress_http.request("POST", "/restate/attach", JSON, body), 400)
    assert got.startswith("bad invocation id 'inv_1é") and got.endswith("': bad length")


# ---- ingress: delay ----------------------------------------------------------------------------


def test_delay_with_thousands_of_digits_is_a_400(ingress_http: Served) -> None:
    got = _ingress_error(ingress_http.request("POST", "/restate/send/Greeter/greet?delay=" + "1" * 5000 + "s",
                                              JSON, b'"x"'), 400)
    assert got.startswith("bad delay query parameter") and "too big to parse into 64-bit integer" in got
