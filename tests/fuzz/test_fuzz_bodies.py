"""Properties of the body and header parsers: the JSON decoder shared by the ingress and the admin
API (`load_json`), the attach/output/lookup target body, the admin request fields and the
handlers' content-type rules. Every input gives a typed value or an `IngressError`, never another
exception (`RecursionError` and lone surrogates included); documents round-trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ingress.admin.parsing import duration_ms, flag, normalize_uri, string_map
from ingress.errors import BadRequest, IngressError
from ingress.handlers.attach import parse_target_body
from ingress.handlers.responses import JsonBodyError, json_bytes, load_json
from ingress.handlers.target import InputRule
from ingress.paths import ByIdempotencyKey, ByInvocationId, ByWorkflow
from shardgate.sharding import InvocationId
from tests.fuzz.strategies import FUZZ, deep, json_value, nasty_text, utf8_text

ATTACH_PREFIX = "cannot read body: invalid request body: "
SCOPES = st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=36)


# ---- load_json ----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=64))
@example(deep(100_000))
@example(deep(100_000, b'{"a":', b"}"))
@example(b'"\\ud800"')
@example(b'{"\\udfff": 1}')
@example(b"\xed\xa0\x80")  # a surrogate in UTF-8 bytes
@example('"x"'.encode("utf-16"))
def test_any_bytes_decode_or_raise_json_body_error(body: bytes) -> None:
    try:
        load_json(body)
    except JsonBodyError:
        pass


@FUZZ
@given(json_value)
def test_documents_round_trip_through_the_encoder(doc: Any) -> None:
    assert load_json(json_bytes(doc)) == doc
    assert load_json(json.dumps(doc).encode()) == doc  # \u escapes, surrogate pairs included


def test_json_bytes_escapes_a_lone_surrogate_instead_of_failing() -> None:
    assert json_bytes({"message": "bad \udcff"}) == b'{"message":"bad \\udcff"}'


# ---- target bodies of /restate/attach, /restate/output, /restate/lookup -------------------------


def _target(body: bytes) -> Any:
    try:
        return parse_target_body(body)
    except BadRequest as e:
        assert e.status == 400
        return e


target_docs = st.fixed_dictionaries(
    {"target": st.sampled_from(["invocation", "workflow", "idempotentInvocation"]) | json_value},
    optional={name: json_value | utf8_text for name in
              ("invocationId", "workflowName", "workflowKey", "service", "key", "handler", "idempotencyKey",
               "scope")},
)


@FUZZ
@given(target_docs.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=64))
@example(deep(50_000))
@example(b'{"target":"workflow","workflowName":"W","workflowKey":"\\ud800"}')
@example(b'{"target":"invocation","invocationId":"inv_1\\ud800aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}')
def test_any_target_body_gives_a_query_or_a_400(body: bytes) -> None:
    got = _target(body)
    if not isinstance(got, BadRequest):
        assert isinstance(got.invocation_id(), InvocationId)


@FUZZ
@given(utf8_text, utf8_text, st.none() | SCOPES)
def test_workflow_target_round_trips(name: str, key: str, scope: str | None) -> None:
    doc: dict[str, Any] = {"target": "workflow", "workflowName": name, "workflowKey": key}
    if scope is not None:
        doc["scope"] = scope
    assert _target(json_bytes(doc)) == ByWorkflow(name, key, scope)


@FUZZ
@given(utf8_text, st.none() | utf8_text, utf8_text, utf8_text)
def test_idempotent_target_round_trips(service: str, key: str | None, handler: str, idem: str) -> None:
    doc = {"target": "idempotentInvocation", "service": service, "key": key, "handler": handler,
           "idempotencyKey": idem}
    assert _target(json_bytes(doc)) == ByIdempotencyKey(service, key, handler, idem)


@FUZZ
@given(st.builds(InvocationId, st.integers(0, 2**64 - 1), st.integers(0, 2**128 - 1)))
def test_invocation_target_round_trips(inv: InvocationId) -> None:
    assert _target(json_bytes({"target": "invocation", "invocationId": str(inv)})) == ByInvocationId(inv)


@pytest.mark.parametrize("body", [deep(100_000), deep(100_000, b'{"target":', b"}")])
def test_deeply_nested_target_body_is_a_400(body: bytes) -> None:
    got = _target(body)
    assert isinstance(got, BadRequest) and got.message == ATTACH_PREFIX + "recursion limit exceeded"


# ---- admin request fields -----------------------------------------------------------------------


def _admin(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except IngressError as e:
        assert e.status in (400, 422)
        return e


@FUZZ
@given(json_value | nasty_text.map(lambda t: "http://" + t) | nasty_text.map(lambda t: "https://h" + t))
@example("http://xn--/")  # an empty IDNA label: yarl fails only once the host is read
@example("http://a:99999/")
@example("http://[::1/")
def test_any_uri_is_canonical_or_refused(raw: Any) -> None:
    got = _admin(normalize_uri, raw)
    if isinstance(got, str):
        assert got.startswith(("http://", "https://")) and normalize_uri(got) == got


@FUZZ
@given(json_value, st.booleans())
@example({"x": "a\x00b"}, True)
@example({"x": "\t é"}, True)
@example({"bad name": "v"}, True)
def test_any_string_map_is_a_dict_or_a_422(value: Any, headers: bool) -> None:
    got = _admin(string_map, value, headers)
    if isinstance(got, dict):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in got.items())
        if headers:
            assert all(c == "\t" or " " <= c != "\x7f" for v in got.values() for c in v)


@FUZZ
@given(st.dictionaries(st.sampled_from(["force", "idempotency_retention"]), json_value | utf8_text))
def test_flags_and_durations_are_typed_or_a_422(body: dict[str, Any]) -> None:
    got = _admin(flag, body, "force")
    assert got is None or isinstance(got, (bool, IngressError))
    got = _admin(duration_ms, body, "idempotency_retention")
    assert got is None or isinstance(got, (int, IngressError))


# ---- content-type rules of handler input --------------------------------------------------------


@FUZZ
@given(st.sampled_from([0, 1, 2]), nasty_text, st.none() | nasty_text, st.binary(max_size=8))
def test_input_rules_accept_or_explain(kind: int, declared: str, content_type: str | None, body: bytes) -> None:
    rule = InputRule.parse(kind, declared)
    got = rule.check(content_type, body)
    assert got is None or isinstance(got, str)
