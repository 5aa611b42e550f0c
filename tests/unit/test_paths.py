"""Unit tests for ingress.paths: Restate URL grammar, exact error texts, key decoding."""

from __future__ import annotations

import pytest

from ingress.errors import BadRequest, NotFound
from ingress.paths import (
    BAD_AWAKEABLES_PATH,
    BAD_INVOCATION_PATH,
    BAD_RESTATE_API_PATH,
    BAD_SERVICE_PATH,
    BAD_WORKFLOW_PATH,
    AttachRequest,
    Awakeable,
    ByIdempotencyKey,
    ByInvocationId,
    ByWorkflow,
    CallRequest,
    Health,
    Lookup,
    OutputRequest,
    SendRequest,
    TargetAttach,
    TargetOutput,
    decode_key,
    parse_path,
    restricted_value_error,
    split_target,
)
from shardgate.schema import ServiceType
from shardgate.sharding import InvocationId, idempotent_invocation_id, workflow_invocation_id

TYPES = {
    "Greeter": ServiceType.SERVICE,
    "Counter": ServiceType.VIRTUAL_OBJECT,
    "Signup": ServiceType.WORKFLOW,
}
ID = "inv_1fvjNosHQLWq590VmVAH6jxQ707nGGCS8v"

# Spelled out here on purpose: these are the exact texts Restate 1.7 answers.
assert BAD_RESTATE_API_PATH == (
    "bad path, expected /restate/call/:service/:handler, /restate/send/:service/:handler, "
    "/restate/scope/:scope/call/:service/:handler, /restate/attach/:invocation_id, "
    "/restate/output/:invocation_id, or /restate/lookup"
)
assert (
    BAD_SERVICE_PATH
    == "bad path, expected either /:service-name/:handler or /:object-name/:object-key/:handler"
)


def parse(path: str):
    return parse_path(path, TYPES.get)


def error_of(path: str) -> tuple[int, str]:
    with pytest.raises((BadRequest, NotFound)) as exc:
        parse(path)
    return exc.value.status, exc.value.message


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/restate/call/Greeter/greet", CallRequest("Greeter", "greet", None)),
        ("/restate/send/Greeter/greet", SendRequest("Greeter", "greet", None)),
        ("/restate/call/Counter/k1/add", CallRequest("Counter", "add", "k1")),
        ("/restate/send/Signup/w1/run", SendRequest("Signup", "run", "w1")),
        ("/restate/call/Counter/a%2Fb/add", CallRequest("Counter", "add", "a/b")),
        ("/restate/call/Counter/%C3%A9+x/add", CallRequest("Counter", "add", "é+x")),
        ("/restate/call/Counter/100%/add", CallRequest("Counter", "add", "100%")),
        ("/restate/call/Counter//add", CallRequest("Counter", "add", "")),
        ("/restate/scope/s1/call/Greeter/greet", CallRequest("Greeter", "greet", None, "s1")),
        ("/restate/scope/s%201/send/Counter/k/add", SendRequest("Counter", "add", "k", "s 1")),
        ("/Greeter/greet", CallRequest("Greeter", "greet", None, None, True)),
        ("/Greeter/greet/send", SendRequest("Greeter", "greet", None, None, True)),
        ("/Counter/k/add", CallRequest("Counter", "add", "k", None, True)),
        ("/Counter/a%2Fb/add/send", SendRequest("Counter", "add", "a/b", None, True)),
        ("/restate/health", Health()),
        ("/restate/health/extra", Health()),
        ("/restate/lookup", Lookup()),
        ("/restate/attach", TargetAttach()),
        ("/restate/output", TargetOutput()),
        ("/restate/awakeables/prom_1/resolve", Awakeable("prom_1", "resolve")),
        ("/restate/a/prom_1/reject", Awakeable("prom_1", "reject")),
        (f"/restate/attach/{ID}", AttachRequest(ByInvocationId(InvocationId.parse(ID)))),
        (f"/restate/output/{ID}", OutputRequest(ByInvocationId(InvocationId.parse(ID)))),
        (f"/restate/invocation/{ID}/attach", AttachRequest(ByInvocationId(InvocationId.parse(ID)), True)),
        (f"/restate/invocation/{ID}/output", OutputRequest(ByInvocationId(InvocationId.parse(ID)), True)),
        (
            "/restate/invocation/Greeter/greet/ik/output",
            OutputRequest(ByIdempotencyKey("Greeter", None, "greet", "ik"), True),
        ),
        (
            "/restate/invocation/Counter/k%2F1/add/ik/attach",
            AttachRequest(ByIdempotencyKey("Counter", "k/1", "add", "ik"), True),
        ),
        (
            "/restate/invocation/Greeter/greet/ik/output/extra",
            OutputRequest(ByIdempotencyKey("Greeter", None, "greet", "ik"), True),
        ),
        ("/restate/workflow/Signup/w%201/output", OutputRequest(ByWorkflow("Signup", "w 1"), True)),
        ("/restate/workflow/Signup/w1/attach", AttachRequest(ByWorkflow("Signup", "w1"), True)),
    ],
)
def test_parses(path: str, expected: object) -> None:
    assert parse(path) == expected


def test_service_and_handler_names_are_not_decoded() -> None:
    with pytest.raises(NotFound) as exc:
        parse("/restate/call/Gr%65eter/greet")
    assert (
        exc.value.message
        == "service 'Gr%65eter' not found, make sure to register the service before calling it."
    )
    assert parse("/restate/call/Greeter/gr%65et") == CallRequest("Greeter", "gr%65et", None)
    assert parse("/restate/invocation/Greeter/greet/i%20k/output").query.idempotency_key == "i%20k"


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/", 400, "bad path: /"),
        ("/Greeter", 400, "bad path: /Greeter"),
        ("/restate", 400, "bad path: /restate"),
        ("/openapi", 400, "bad path: /openapi"),
        ("/a/b/c/d/e/f/g/h", 400, "bad path: /a/b/c/d/e/f/g/h"),
        ("/openapi/x", 404, "not found"),
        ("/restate/unknown/Greeter/greet", 404, "not found"),
        ("/restate/call", 400, BAD_RESTATE_API_PATH),
        ("/restate/call/Greeter", 400, BAD_RESTATE_API_PATH),
        ("/restate/call/Counter/add", 400, BAD_RESTATE_API_PATH),  # VO without key
        ("/restate/call/Greeter/somekey/greet", 400, BAD_RESTATE_API_PATH),  # service with key
        ("/restate/call/Counter/k/add/extra", 400, BAD_RESTATE_API_PATH),
        ("/restate/scope/abc", 400, BAD_RESTATE_API_PATH),
        ("/restate/scope/abc/foo/Greeter/greet", 400, BAD_RESTATE_API_PATH),
        (f"/restate/attach/{ID}/extra", 400, BAD_RESTATE_API_PATH),
        ("/restate/lookup/x", 400, BAD_RESTATE_API_PATH),
        (
            "/restate/call/NoSuch/greet",
            404,
            "service 'NoSuch' not found, make sure to register the service before calling it.",
        ),
        (
            "/restate/scope/abc/call/NoSuch/greet",
            404,
            "service 'NoSuch' not found, make sure to register the service before calling it.",
        ),
        (
            "/NoSuch/greet",
            404,
            "service 'NoSuch' not found, make sure to register the service before calling it.",
        ),
        ("/Greeter/greet/foo", 400, BAD_SERVICE_PATH),
        ("/Counter/add", 400, BAD_SERVICE_PATH),
        ("/Counter/k/add/extra/segment", 400, BAD_SERVICE_PATH),
        ("/Counter/k/add/send/extra", 400, BAD_SERVICE_PATH),
        (f"/restate/invocation/{ID}", 400, BAD_INVOCATION_PATH),
        (f"/restate/invocation/{ID}/foo", 404, "not found"),
        ("/restate/invocation/Counter/k/add/output", 400, BAD_INVOCATION_PATH),
        ("/restate/invocation/Greeter/greet/ik/foo", 404, "not found"),
        (
            "/restate/invocation/NoSuch/greet/ik/output",
            404,
            "service 'NoSuch' not found, make sure to register the service before calling it.",
        ),
        ("/restate/workflow/Signup/k", 400, BAD_WORKFLOW_PATH),
        ("/restate/workflow/Signup/k/foo", 404, "not found"),
        ("/restate/awakeables/x", 400, BAD_AWAKEABLES_PATH),
        ("/restate/a/x/foo", 404, "not found"),
        ("/restate/invocation/not-an-id/output", 400, "bad invocation id 'not-an-id': bad format"),
        ("/restate/attach/xyz", 400, "bad invocation id 'xyz': bad format"),
        (
            "/restate/output/inv_1fvjNosHQLWq590VmVAH6jxQ707nAAAAA",
            400,
            "bad invocation id 'inv_1fvjNosHQLWq590VmVAH6jxQ707nAAAAA': bad length",
        ),
        (
            "/restate/output/inv_2fvjNosHQLWq590VmVAH6jxQ707nAAAAAA",
            400,
            "bad invocation id 'inv_2fvjNosHQLWq590VmVAH6jxQ707nAAAAAA': unrecognized codec version",
        ),
        (
            "/restate/call/Counter/%FF/get",
            400,
            (
                "bad path, cannot decode key: FromUtf8Error { bytes: [255], error: Utf8Error "
                "{ valid_up_to: 0, error_len: Some(1) } }"
            ),
        ),
        (
            "/restate/scope/%FF/call/Greeter/greet",
            400,
            (
                "bad path, cannot decode key: FromUtf8Error { bytes: [255], error: Utf8Error "
                "{ valid_up_to: 0, error_len: Some(1) } }"
            ),
        ),
    ],
)
def test_errors(path: str, status: int, message: str) -> None:
    assert error_of(path) == (status, message)


def test_undecodable_key_truncated_sequence() -> None:
    with pytest.raises(BadRequest) as exc:
        decode_key("ab%C3")
    assert exc.value.message == (
        "bad path, cannot decode key: FromUtf8Error { bytes: [97, 98, 195], error: Utf8Error "
        "{ valid_up_to: 2, error_len: None } }"
    )


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/restate/call/Greeter/greet", "/restate/call/Greeter/greet", None),
        ("/restate/call/Greeter/greet/", "/restate/call/Greeter/greet", None),
        ("/restate/call/Greeter/greet//?a=1", "/restate/call/Greeter/greet", "a=1"),
        ("/restate/", "/restate", None),
        ("//", "/", None),
        ("/", "/", None),
        ("//restate/health", "/restate/health", None),
        ("/x?", "/x", ""),
        ("/a%2F/b?delay=1m%2030s&x=/", "/a%2F/b", "delay=1m%2030s&x=/"),
    ],
)
def test_split_target(raw: str, path: str, query: str | None) -> None:
    assert split_target(raw) == (path, query)


def test_query_ids_match_sharding() -> None:
    assert ByWorkflow("Signup", "k").invocation_id() == workflow_invocation_id("Signup", "k")
    assert ByIdempotencyKey("Counter", "k", "add", "ik").invocation_id() == idempotent_invocation_id(
        "Counter", "k", "add", "ik"
    )
    # recorded from Restate 1.7.12 (spec section 15)
    assert str(ByWorkflow("Signup", "w5-ec678c").invocation_id()) == "inv_19z6ImeDk4lv34PPkzUYKSgk44JPesZ6pv"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("abc-1.2_X", None),
        ("a" * 36, None),
        ("", "value cannot be empty"),
        ("a" * 37, "value too long: 37 bytes (max 36)"),
        ("bad scope!", "value contains characters outside the allowed set [a-zA-Z0-9_.-]"),
        ("é", "value contains characters outside the allowed set [a-zA-Z0-9_.-]"),
    ],
)
def test_restricted_values(value: str, error: str | None) -> None:
    assert restricted_value_error(value) == error
