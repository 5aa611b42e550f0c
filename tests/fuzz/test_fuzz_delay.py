"""Properties of the delay parser (ingress.delay): any value gives milliseconds or `DelayError`,
any query gives a delay, None or `BadRequest`; the formats the project writes parse back."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import example, given
from hypothesis import strategies as st

from ingress.admin.render import friendly_ms
from ingress.delay import BAD_DELAY, DelayError, delay_from_query, parse_delay_ms
from ingress.errors import BadRequest
from tests.fuzz.strategies import FUZZ, nasty_text

MAX_MS = 631_107_417_600_000  # jiff's millisecond limit
UNITS = ["y", "mo", "w", "d", "h", "m", "s", "ms", "us", "ns", "sec", "days", "hours", "minutes", " ", ",",
         ":", ".", "ago", "P", "T", "H", "M", "S", "D", "W", "Y", "+", "-", "0", "9", "00", "١", "²"]
duration_like = st.lists(st.sampled_from(UNITS) | st.integers(0, 10**25).map(str), max_size=10).map("".join)
"""Text assembled from the pieces durations are made of, so most examples get deep into the parser."""


def _parse(value: str) -> int | str:
    try:
        return parse_delay_ms(value)
    except DelayError as e:
        return str(e)


@FUZZ
@given(duration_like | nasty_text)
@example("1" * 5000)  # longer than Python converts to int: a DelayError, not a ValueError
@example("PT" + "9" * 5000 + "S")
@example("-" + "1" * 5000)
@example("١٢s")  # other scripts' digits are not digits here
def test_any_value_is_milliseconds_or_a_delay_error(value: str) -> None:
    got = _parse(value)
    if isinstance(got, int):
        assert 0 <= got
        assert value.isascii() or "µ" in value or "μ" in value


@FUZZ
@given(st.integers(min_value=0, max_value=MAX_MS))
def test_bare_milliseconds_and_friendly_durations_round_trip(ms: int) -> None:
    assert parse_delay_ms(str(ms)) == ms
    assert parse_delay_ms(friendly_ms(ms)) == ms  # what the admin API writes, read back


@FUZZ
@given(st.integers(0, 10_000), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_iso_durations_parse_to_their_value(d: int, h: int, m: int, s: int, ms: int) -> None:
    expected = (((d * 24 + h) * 60 + m) * 60 + s) * 1000 + ms
    assert parse_delay_ms(f"P{d}DT{h}H{m}M{s}.{ms:03d}S") == expected
    assert parse_delay_ms(f"p{d}dt{h}h{m}m{s},{ms:03d}s") == expected


@FUZZ
@given(st.none() | nasty_text | duration_like.map(lambda v: "delay=" + quote(v)))
def test_any_query_gives_a_delay_none_or_a_400(query: str | None) -> None:
    try:
        got = delay_from_query(query)
    except BadRequest as e:
        assert e.status == 400 and e.message.startswith(BAD_DELAY)
    else:
        assert got is None or got >= 0
