"""Unit tests for ingress.delay: ISO 8601 / jiff friendly durations, bare-integer milliseconds."""

from __future__ import annotations

import pytest

from ingress.delay import BAD_DELAY, DelayError, delay_from_query, parse_delay_ms
from ingress.errors import BadRequest


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("PT60S", 60_000),
        ("PT1M", 60_000),
        ("P1D", 86_400_000),
        ("P1W", 7 * 86_400_000),
        ("p1d", 86_400_000),
        ("pt5s", 5_000),
        ("PT0.5S", 500),
        ("PT5,5S", 5_500),
        ("PT1H30M", 5_400_000),
        ("P1DT2H", 93_600_000),
        ("PT0S", 0),
        ("P0Y", 0),
        ("-PT0S", 0),
        ("10s", 10_000),
        ("60sec", 60_000),
        ("60 sec", 60_000),
        ("60+sec".replace("+", " "), 60_000),
        ("60000ms", 60_000),
        ("500ms", 500),
        ("1m 30s", 90_000),
        ("1h 30m", 5_400_000),
        ("1h30m", 5_400_000),
        ("1h, 30m", 5_400_000),
        ("1 hour, 30 minutes", 5_400_000),
        ("2 days", 172_800_000),
        ("1.5h", 5_400_000),
        ("1.5s", 1_500),
        ("2 weeks", 14 * 86_400_000),
        ("5wk", 5 * 7 * 86_400_000),
        ("5hrs", 18_000_000),
        ("5mins", 300_000),
        ("5msec", 5),
        ("1500us", 1),
        ("1500µs", 1),
        ("5ns", 0),
        ("1h1m1s1ms1us1ns", 3_661_001),
        ("01:30:00", 5_400_000),
        ("1:00:00.25", 3_600_250),
        ("1d 01:00:00", 90_000_000),
        ("5s ", 5_000),
        ("5  s", 5_000),
        ("+5s", 5_000),
        ("-0s", 0),
        ("0", 0),
        # deliberate deviation: a bare integer is milliseconds
        ("1500", 1_500),
        ("5000", 5_000),
        ("+1500", 1_500),
        ("-0", 0),
    ],
)
def test_accepted_delays(value: str, ms: int) -> None:
    assert parse_delay_ms(value) == ms


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("", "an empty string is not a valid duration"),
        ("abc", 'failed to parse input in the "friendly" duration format: expected duration to start'),
        ("5x", "expected to find unit designator suffix"),
        ("5S", "expected to find unit designator suffix"),  # friendly designators are case-sensitive
        ("1h30", "expected to find unit designator suffix"),
        ("1.1234567891s", "expected to find unit designator suffix"),
        (" 5s", "expected duration to start with a unit value"),
        ("+ 5s", "expected duration to start with a unit value"),
        ("1s 1h", "found value with unit hour after unit second, but units must be written from largest"),
        ("5s5s", "found value with unit second after unit second"),
        ("1.5d", "fractional days are not supported"),
        ("1.5w", "fractional weeks are not supported"),
        ("1.5h30m", 'unparsed input "30m" remains'),
        ("5s foo", 'unparsed input "foo" remains'),
        ("5sec,foo", "expected whitespace after comma, but found `f`"),
        ("5s,", "expected whitespace after comma, but found end of input"),
        ("1h 01:00:00", "`HH:MM:SS` can only appear after years, months, weeks or days"),
        ("1y", "please use units of days or smaller"),
        ("1mo", "please use units of days or smaller"),
        ("P1Y", "please use units of days or smaller"),
        ("P1M", "please use units of days or smaller"),
        ("P", "no parsed duration components"),
        ("PT", "found a time designator (`T` or `t`)"),
        ("P1DT", "found a time designator (`T` or `t`)"),
        ("PT1.5H30M", "fractional values are only allowed on the smallest unit"),
        ("PT5S ", "unparsed input"),
        ("PT1M1H", "unparsed input"),
        ("999999999999999999s", "failed to set value for second unit on span"),
        ("-5s", "negative"),
        ("-PT5S", "negative"),
        ("5s ago", "negative"),
        ("-1500", "negative"),
    ],
)
def test_rejected_delays(value: str, detail: str) -> None:
    with pytest.raises(DelayError) as exc:
        parse_delay_ms(value)
    assert detail in str(exc.value)


def test_negative_detail_starts_with_negative() -> None:
    with pytest.raises(DelayError) as exc:
        parse_delay_ms("-5s")
    assert str(exc.value) == "negative signed durations cannot be converted to an unsigned duration"


@pytest.mark.parametrize(
    ("query", "ms"),
    [
        (None, None),
        ("", None),
        ("foo=bar", None),
        ("delay=5s", 5_000),
        ("DELAY=PT0.5S", 500),
        ("Delay=1m%2030s", 90_000),
        ("delay=60+sec", 60_000),  # form-urlencoded: + is a space
        ("foo=1&delay=2s&delay=9s", 2_000),  # first occurrence wins
        ("delayed=1&delay=1s", 1_000),
        ("delay=1500", 1_500),
    ],
)
def test_delay_from_query(query: str | None, ms: int | None) -> None:
    assert delay_from_query(query) == ms


def test_delay_from_query_error_message() -> None:
    with pytest.raises(BadRequest) as exc:
        delay_from_query("delay=abc")
    assert exc.value.status == 400
    assert exc.value.message.startswith(BAD_DELAY + 'failed to parse input in the "friendly" duration format')
    with pytest.raises(BadRequest) as exc:
        delay_from_query("delay")
    assert exc.value.message == BAD_DELAY + (
        'an empty string is not a valid duration in either the ISO 8601 format or Jiff\'s "friendly" format'
    )
