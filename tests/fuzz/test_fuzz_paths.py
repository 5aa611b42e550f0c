"""Properties of the URL parsers (ingress.paths): every request target gives a typed request or an
`IngressError` (400/404), never another exception; key encoding round-trips."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ingress.errors import BadRequest, IngressError
from ingress.paths import (
    BAD_TARGET_ENCODING,
    AttachRequest,
    ByIdempotencyKey,
    CallRequest,
    OutputRequest,
    ParsedRequest,
    decode_key,
    parse_path,
    restricted_value_error,
    split_target,
)
from shardgate.schema import ServiceType
from shardgate.sharding import InvocationId
from tests.fuzz.strategies import FUZZ, nasty_text, path, utf8_text

TYPES = {"Greeter": ServiceType.SERVICE, "Counter": ServiceType.VIRTUAL_OBJECT, "Signup": ServiceType.WORKFLOW}


def _typed(got: object) -> bool:
    """A typed request or an ingress error: the only two things a parse may give."""
    return isinstance(got, (IngressError, ParsedRequest))


def _parse_target(raw: str) -> ParsedRequest | IngressError:
    """What the ingress does with a raw target: split, parse, and derive the id it names."""
    try:
        normalised, _ = split_target(raw)
        parsed = parse_path(normalised, TYPES.get)
        if isinstance(parsed, (AttachRequest, OutputRequest)):
            assert isinstance(parsed.query.invocation_id(), InvocationId)
        return parsed
    except IngressError as e:
        assert e.status in (400, 404)
        return e


@FUZZ
@given(path, st.none() | nasty_text)
@example("/restate/invocation/Greeter/greet/\udcff/attach", None)
@example("/Counter/%ff/add", None)
@example("/restate/workflow/Signup/%E2%82/attach", None)
def test_any_target_parses_or_is_an_ingress_error(raw_path: str, query: str | None) -> None:
    raw = raw_path if query is None else f"{raw_path}?{query}"
    assert _typed(_parse_target(raw))


@FUZZ
@given(nasty_text)
def test_any_text_as_a_target_is_handled(raw: str) -> None:
    assert _typed(_parse_target(raw))


@FUZZ
@given(st.text(min_size=1, max_size=30).filter(lambda s: "\ud800" not in s))
def test_a_target_with_a_lone_surrogate_is_a_400(prefix: str) -> None:
    with pytest.raises(BadRequest) as exc:
        split_target("/" + prefix + "\udcff")
    assert exc.value.message == BAD_TARGET_ENCODING


@FUZZ
@given(utf8_text)
def test_key_percent_encoding_round_trips(key: str) -> None:
    assert decode_key(quote(key, safe="")) == key


@FUZZ
@given(utf8_text, utf8_text)
def test_object_key_from_the_path_round_trips(key: str, handler: str) -> None:
    encoded_handler = quote(handler, safe="")
    got = _parse_target(f"/restate/call/Counter/{quote(key, safe='')}/{encoded_handler}")
    if isinstance(got, CallRequest):
        assert (got.service, got.key, got.handler) == ("Counter", key, encoded_handler)
    else:
        assert isinstance(got, BadRequest) and not handler  # only an empty handler is refused


@FUZZ
@given(utf8_text, utf8_text, utf8_text)
def test_legacy_idempotency_target_names_the_same_id(key: str, handler: str, idem: str) -> None:
    h, i = quote(handler, safe="") or "h", quote(idem, safe="") or "i"
    got = _parse_target(f"/restate/invocation/Counter/{quote(key, safe='')}/{h}/{i}/output")
    assert isinstance(got, OutputRequest) and isinstance(got.query, ByIdempotencyKey)
    assert (got.query.key, got.query.handler, got.query.idempotency_key) == (key, h, i)


@FUZZ
@given(nasty_text)
def test_restricted_values_are_checked_without_crashing(value: str) -> None:
    err = restricted_value_error(value)
    assert err is None or isinstance(err, str)
    if err is None:
        assert value.isascii() and 0 < len(value) <= 36
