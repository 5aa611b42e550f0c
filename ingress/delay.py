"""Parse the `delay` query parameter of sends into milliseconds.

Restate parses it with jiff's `Span` (`util/time/src/duration.rs` `FriendlyDuration`): an
ISO 8601 duration (`PT5S`, `P1DT2H`, case-insensitive, `.` or `,` fractions on the smallest
time unit) or jiff's "friendly" format (`10s`, `60 sec`, `1m 30s`, `1h, 30m`, `2 days`,
`01:30:00`, `5s ago`), plus the literal `0`. Years and months are refused, a day is 24 hours,
negative spans are refused. Error texts mirror jiff's where a client is likely to meet them.

shardgate deviation (deliberate, spec section 3): a bare non-negative integer is a number of
milliseconds (`?delay=1500`), which is how the official Python SDK client sends delays.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from ingress.errors import BadRequest

__all__ = ["DelayError", "delay_from_query", "parse_delay_ms"]

BAD_DELAY = "bad delay query parameter, must be a ISO8601 duration: "
_FRIENDLY = 'failed to parse input in the "friendly" duration format: '
_EMPTY = 'an empty string is not a valid duration in either the ISO 8601 format or Jiff\'s "friendly" format'
_NEGATIVE = "negative signed durations cannot be converted to an unsigned duration"
_BAD_UNITS = "please use units of days or smaller"
_NO_START = (
    "expected duration to start with a unit value (a decimal integer) after an optional sign, "
    "but no integer was found"
)
_NO_DESIGNATOR = "expected to find unit designator suffix (e.g., `years` or `secs`) after parsing integer"

_NS = 1_000_000_000
_MS_NS = 1_000_000
# unit -> (rank: larger units first, nanoseconds per unit, jiff's maximum magnitude)
_UNITS: dict[str, tuple[int, int, int]] = {
    "year": (0, 0, 19_998),
    "month": (1, 0, 239_976),
    "week": (2, 7 * 86_400 * _NS, 1_043_497),
    "day": (3, 86_400 * _NS, 7_304_484),
    "hour": (4, 3_600 * _NS, 175_307_616),
    "minute": (5, 60 * _NS, 10_518_456_960),
    "second": (6, _NS, 631_107_417_600),
    "millisecond": (7, _MS_NS, 631_107_417_600_000),
    "microsecond": (8, 1_000, 631_107_417_600_000_000),
    "nanosecond": (9, 1, 9_223_372_036_854_775_807),
}
_DESIGNATORS: dict[str, str] = {}
for _unit, _names in {
    "year": "y yr yrs year years",
    "month": "mo mos month months",
    "week": "w wk wks week weeks",
    "day": "d day days",
    "hour": "h hr hrs hour hours",
    "minute": "m min mins minute minutes",
    "second": "s sec secs second seconds",
    "millisecond": "ms msec msecs millisecond milliseconds",
    "microsecond": "us µs μs usec usecs microsecond microseconds",
    "nanosecond": "ns nsec nsecs nanosecond nanoseconds",
}.items():
    for _name in _names.split():
        _DESIGNATORS[_name] = _unit

# ASCII digits only (`re.ASCII`): `\d` alone would also take other scripts' digits, which jiff refuses.
_BARE_INT = re.compile(r"\d+", re.ASCII)
_UNIT_VALUE = re.compile(r"(\d+)(?:[.,](\d{1,9}))?[ \t]*([a-zA-Zµμ]*)", re.ASCII)
_HMS = re.compile(r"(\d+):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?", re.ASCII)
_ISO = re.compile(
    r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    r"(?:(T)(?:(\d+)(?:[.,](\d{1,9}))?H)?(?:(\d+)(?:[.,](\d{1,9}))?M)?(?:(\d+)(?:[.,](\d{1,9}))?S)?)?",
    re.IGNORECASE | re.ASCII,
)
_DIGITS = frozenset("0123456789")
_I64_DIGITS = 19  # more significant digits than this cannot be an i64, which jiff parses into
_ISO_UNITS = ("year", "month", "week", "day")
_ISO_TIME_UNITS = ("hour", "minute", "second")


class DelayError(ValueError):
    """A delay value could not be parsed; `str()` is the detail shown after `BAD_DELAY`."""


def delay_from_query(query: str | None) -> int | None:
    """Return the delay in ms from a raw query string (first `delay`, any case), or None.

    Raises `BadRequest` with Restate's message when the value does not parse.
    """
    if not query or "delay" not in query.lower():
        return None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.lower() == "delay":
            try:
                return parse_delay_ms(value)
            except DelayError as e:
                raise BadRequest(BAD_DELAY + str(e)) from None
    return None


def parse_delay_ms(value: str) -> int:
    """Parse one delay value into non-negative milliseconds (sub-ms remainders truncated).

    Raises `DelayError` (and nothing else) for any value that does not parse or is out of range."""
    if not value:
        raise DelayError(_EMPTY)
    if _BARE_INT.fullmatch(value):  # deviation: bare integer = milliseconds ("0" included)
        ms = _integer(value)
        if ms > _UNITS["millisecond"][2]:
            raise DelayError(_range_error("millisecond", ms))
        return ms
    i = 1 if value[0] in "+-" else 0
    negative = value[0] == "-"
    if i and _BARE_INT.fullmatch(value, 1):  # signed bare integer: milliseconds too
        if negative and _integer(value[1:]):
            raise DelayError(_NEGATIVE)
        return parse_delay_ms(value[1:])
    if value[i : i + 1] in ("P", "p"):
        total_ns = _parse_iso(value[i:])
    else:
        total_ns, ago = _parse_friendly(value, i)
        negative = negative or ago
    if negative and total_ns:
        raise DelayError(_NEGATIVE)
    return total_ns // _MS_NS


def _integer(digits: str) -> int:
    """The value of a run of ASCII digits; one too long for an i64 raises DelayError (jiff's text),
    before Python's own limit on converting long digit strings could."""
    if len(digits.lstrip("0")) > _I64_DIGITS:
        raise DelayError(f"number `{digits[:40]}` too big to parse into 64-bit integer")
    return int(digits)


def _range_error(unit: str, n: int) -> str:
    limit = _UNITS[unit][2]
    return f"failed to set value for {unit} unit on span: parameter '{unit}s' with value {n} is not in the required range of -{limit}..={limit}"


def _amount_ns(unit: str, whole: str, frac: str | None) -> int:
    """Nanoseconds of `whole[.frac]` units; years/months and out-of-range values raise."""
    _, unit_ns, limit = _UNITS[unit]
    n = _integer(whole)
    if n > limit:
        raise DelayError(_range_error(unit, n))
    if unit_ns == 0:  # year or month
        if n or frac:
            raise DelayError(_BAD_UNITS)
        return 0
    ns = n * unit_ns
    if frac:
        ns += int(frac.ljust(9, "0")) * unit_ns // _NS
    return ns


def _parse_iso(s: str) -> int:
    m = _ISO.match(s)
    assert m is not None  # every group is optional: "P" alone matches
    if m.end() != len(s):
        raise DelayError(
            f'parsed value {s[: m.end()]!r}, but unparsed input "{s[m.end() :]}" remains (expected no unparsed input)'
        )
    y, mo, w, d, t, h, hf, mi, mif, sec, sf = m.groups()
    if t and h is None and mi is None and sec is None:
        raise DelayError(
            "found a time designator (`T` or `t`) in an ISO 8601 duration string, but did not find any time units"
        )
    if not any(m.groups()):
        raise DelayError("no parsed duration components")
    if (hf and (mi or sec)) or (mif and sec):
        raise DelayError("fractional values are only allowed on the smallest unit of an ISO 8601 duration")
    total = 0
    for unit, whole in zip(_ISO_UNITS, (y, mo, w, d)):
        if whole is not None:
            total += _amount_ns(unit, whole, None)
    for unit, whole, frac in zip(_ISO_TIME_UNITS, (h, mi, sec), (hf, mif, sf)):
        if whole is not None:
            total += _amount_ns(unit, whole, frac)
    return total


def _parse_friendly(s: str, pos: int) -> tuple[int, bool]:
    """Parse jiff's friendly format from `pos`; returns (nanoseconds, has `ago` suffix)."""
    n = len(s)
    if pos >= n or s[pos] not in _DIGITS:
        raise DelayError(_FRIENDLY + _NO_START)
    total = 0
    last_unit: str | None = None
    while True:
        hms = _HMS.match(s, pos)
        if hms is not None:
            if last_unit is not None and _UNITS[last_unit][0] > _UNITS["day"][0]:
                raise DelayError(
                    _FRIENDLY + f"found `HH:MM:SS` after unit {last_unit}, but `HH:MM:SS` "
                    "can only appear after years, months, weeks or days"
                )
            hh, mm, ss, frac = hms.groups()
            total += _amount_ns("hour", hh, None) + _amount_ns("minute", mm, None)
            total += _amount_ns("second", ss, frac)
            pos = hms.end()
            break
        m = _UNIT_VALUE.match(s, pos)
        if m is None:  # cannot happen: callers guarantee a digit at pos
            raise DelayError(_FRIENDLY + _NO_START)
        whole, frac, designator = m.groups()
        unit = _DESIGNATORS.get(designator)
        if unit is None:
            raise DelayError(_FRIENDLY + _NO_DESIGNATOR)
        if last_unit is not None and _UNITS[unit][0] <= _UNITS[last_unit][0]:
            raise DelayError(
                _FRIENDLY + f"found value with unit {unit} after unit {last_unit}, but units must "
                "be written from largest to smallest (and they can't be repeated)"
            )
        if frac and _UNITS[unit][0] <= _UNITS["day"][0]:
            raise DelayError(_FRIENDLY + f"fractional {unit}s are not supported")
        total += _amount_ns(unit, whole, frac)
        last_unit = unit
        pos = m.end()
        while pos < n and s[pos] in " \t":
            pos += 1
        if pos < n and s[pos] == ",":
            pos += 1
            if pos >= n:
                raise DelayError(_FRIENDLY + "expected whitespace after comma, but found end of input")
            if s[pos] not in " \t":
                raise DelayError(_FRIENDLY + f"expected whitespace after comma, but found `{s[pos]}`")
            while pos < n and s[pos] in " \t":
                pos += 1
        if frac or pos >= n or s[pos] not in _DIGITS:
            break
    rest = s[pos:].strip(" \t")
    if not rest:
        return total, False
    if rest == "ago":
        return total, True
    raise DelayError(_FRIENDLY + f'unparsed input "{s[pos:]}" remains (expected no unparsed input)')
