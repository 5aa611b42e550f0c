"""Schedules, the pure model: parsing and validation of a definition, next fire times, catch-up.

A schedule fires its target at *nominal times* given by one recurrence:

- `cron`: five fields (minute hour day-of-month month day-of-week), or six with a leading seconds
  field, or a name (`@hourly`, `@daily` ...), read by `croniter` on the wall clock of `timezone`;
- `every`: an ISO 8601 duration (`PT15M`, `P1D`) counted from `start_at`, else from 1970-01-01T00:00
  on the wall clock of `timezone` (so `PT15M` fires at :00, :15, :30, :45);
- `every` as an ISO 8601 repeating interval: `R/2026-12-01T00:00:00Z/PT1H`, `R5/<start>/<duration>`
  or `R[n]/<start>/<end>` (the period is end - start).

Daylight-saving time follows Vixie cron, which is what cron users expect. A *wildcard* cron (its
minute or hour field starts with `*`) runs on elapsed time: wall times skipped by a spring-forward
do not run, wall times repeated by a fall-back run in both passes. Any other cron is a *fixed-time*
job: a wall time in a spring-forward gap runs at the end of the gap (02:30 -> 03:00), a repeated
wall time runs once (first pass). Durations: the date part (Y, M, W, D) is calendar arithmetic on the
wall clock (P1D keeps the local time of day across a DST change), the time part is elapsed time; a
wall time in a gap moves forward by the gap, a repeated one takes the first pass.

Catch-up: a tick whose fire time is more than `catch_up_window` after its nominal time was *missed*
(the schedule's partition had no leader, or the loop was stopped). `none` skips every missed tick,
`one` runs the last missed one and skips the rest, `all` runs every missed tick, up to
`catch_up_limit` (the most recent ones). Ticks inside the window always run, late.

Everything here is pure: times are integer milliseconds since the epoch, passed in.
"""

from __future__ import annotations

import calendar
import functools
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import (
    CroniterBadCronError,
    CroniterBadDateError,
    CroniterError,
    croniter,
)

MIN_PERIOD_MS = 1000  # the shortest `every`; also the finest cron resolution (seconds)
DEFAULT_CATCH_UP_WINDOW_MS = 60_000
DEFAULT_CATCH_UP_LIMIT = 100
MAX_CATCH_UP_LIMIT = 1000
MAX_SCAN = 2000  # missed ticks looked at in one step; more are skipped in further steps
MAX_ID_CHARS = 128
MAX_HEADERS = 64
DEFINITION_CACHE = 20_000  # decoded definitions kept per process
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DURATION = re.compile(
    r"P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+(?:[.,]\d{1,3})?)S)?)?")
_REPEAT = re.compile(r"R(?P<n>\d*)")
_EPOCH = datetime(1970, 1, 1)
CRON_NAMES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_CRON_SEARCH_YEARS = 10  # a cron that matches no time within this many years never fires


class ScheduleError(ValueError):
    """A definition that cannot describe a schedule; `message` says which field and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CatchUp(str, Enum):
    """What runs of the ticks missed while nobody could fire them."""

    NONE = "none"  # none: only the ticks due from now on
    ONE = "one"  # the last missed tick, once
    ALL = "all"  # every missed tick, up to catch_up_limit


class Overlap(str, Enum):
    """Whether a tick fires while the previous tick's invocation is still running."""

    ALLOW = "allow"  # always fire
    SKIP = "skip"  # skip the tick (counted as skipped)


# ---- time helpers ---------------------------------------------------------------------------------


def iso_ms(ms: int) -> str:
    """`ms` as an RFC 3339 UTC timestamp with milliseconds (`2026-12-01T00:00:00.000Z`)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _instant_ms(dt: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _aware(ms: int, zone: ZoneInfo) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def wall(ms: int, zone: ZoneInfo) -> datetime:
    """The naive wall-clock time of instant `ms` in `zone`."""
    return _aware(ms, zone).astimezone(zone).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class WallTime:
    """The instants a wall-clock time names in a zone: one (normal), two (a fall-back repeats it)
    or none (a spring-forward gap skips it; `gap_end_ms` is then the instant the gap ends)."""

    instants_ms: tuple[int, ...]
    gap_end_ms: int | None = None


def resolve(w: datetime, zone: ZoneInfo) -> WallTime:
    """The instants naive wall time `w` names in `zone`."""
    first = _instant_ms(w.replace(tzinfo=zone, fold=0))
    second = _instant_ms(w.replace(tzinfo=zone, fold=1))
    if first == second:
        return WallTime((first,))
    if wall(first, zone) == w:  # a real time twice: fold 0 is the first pass
        return WallTime((min(first, second), max(first, second)))
    return WallTime((), _offset_change(min(first, second), max(first, second), zone))


def _offset_change(lo_ms: int, hi_ms: int, zone: ZoneInfo) -> int:
    """The first instant in (lo_ms, hi_ms] whose UTC offset is the one at hi_ms (to the second)."""
    target = _aware(hi_ms, zone).astimezone(zone).utcoffset()
    lo_s, hi_s = lo_ms // 1000, hi_ms // 1000
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if _aware(mid * 1000, zone).astimezone(zone).utcoffset() == target:
            hi_s = mid
        else:
            lo_s = mid
    return hi_s * 1000


def parse_timestamp(raw: Any, name: str, zone: ZoneInfo) -> int:
    """An ISO 8601 / RFC 3339 timestamp in ms; one without an offset is wall time in `zone`.
    Raises ScheduleError."""
    if not isinstance(raw, str):
        raise ScheduleError(f"'{name}' must be an ISO 8601 timestamp string")
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise ScheduleError(f"'{name}' is not an ISO 8601 timestamp: {raw!r}") from None
    if dt.tzinfo is None:
        at = resolve(dt, zone)
        return at.instants_ms[0] if at.instants_ms else at.gap_end_ms or 0
    return _instant_ms(dt)


def parse_zone(raw: Any) -> ZoneInfo:
    """An IANA time zone (`Europe/Berlin`; absent = UTC). Raises ScheduleError."""
    if raw is None:
        return ZoneInfo("UTC")
    if not isinstance(raw, str) or not raw or raw.startswith(("/", ".")) or ".." in raw:
        raise ScheduleError(f"'timezone' is not an IANA time zone name: {json.dumps(raw)}")
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"'timezone' is not a known IANA time zone: {raw!r}") from None


# ---- durations ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """An ISO 8601 duration: calendar months and days (wall-clock arithmetic) plus elapsed ms."""

    months: int = 0
    days: int = 0
    exact_ms: int = 0

    @property
    def approx_ms(self) -> int:
        """A lower bound of its length, to estimate how many periods fit in a span."""
        return self.months * 28 * 86_400_000 + self.days * 23 * 3_600_000 + self.exact_ms

    @property
    def calendar(self) -> bool:
        return bool(self.months or self.days)


def parse_duration(raw: str, name: str) -> Period:
    """`PnYnMnWnDTnHnMnS` (fractions of seconds to ms). Raises ScheduleError when malformed,
    empty or shorter than one second."""
    m = _DURATION.fullmatch(raw)
    if m is None or raw in ("P", "PT") or raw.endswith("T"):
        raise ScheduleError(f"'{name}' is not an ISO 8601 duration (like PT15M or P1D): {raw!r}")
    g = {k: v for k, v in m.groupdict().items() if v is not None}
    seconds = float(g.get("s", "0").replace(",", "."))
    exact_ms = (int(g.get("h", 0)) * 3600 + int(g.get("mi", 0)) * 60) * 1000 + round(seconds * 1000)
    period = Period(int(g.get("y", 0)) * 12 + int(g.get("mo", 0)), int(g.get("w", 0)) * 7 + int(g.get("d", 0)),
                    exact_ms)
    if not period.calendar and period.exact_ms < MIN_PERIOD_MS:
        raise ScheduleError(f"'{name}' must be at least one second: {raw!r}")
    return period


def _add_months(w: datetime, months: int) -> datetime:
    """`w` plus calendar months, the day clipped to the month's last (Jan 31 + 1 month = Feb 28)."""
    total = w.year * 12 + (w.month - 1) + months
    year, month = divmod(total, 12)
    day = min(w.day, calendar.monthrange(year, month + 1)[1])
    return w.replace(year=year, month=month + 1, day=day)


# ---- recurrences ----------------------------------------------------------------------------------


class Recurrence(Protocol):
    """Nominal fire times of an expression."""

    def next_after(self, after_ms: int) -> int | None:
        """The first nominal time strictly after `after_ms`; None when there is none."""
        ...


class CronRecurrence:
    """A cron expression on the wall clock of a zone, with Vixie cron's DST rules."""

    def __init__(self, expression: str, zone: ZoneInfo) -> None:
        """Raises ScheduleError for an expression croniter does not accept."""
        text = CRON_NAMES.get(expression.strip().lower(), expression.strip())
        fields = text.split()
        if len(fields) not in (5, 6) or text.startswith("@"):
            raise ScheduleError(f"'cron' needs 5 fields (or 6 with leading seconds) or a name like @hourly: "
                                f"{expression!r}")
        if not croniter.is_valid(text, second_at_beginning=len(fields) == 6) or any("h" in f.lower() for f in fields):
            raise ScheduleError(f"'cron' is not a valid cron expression: {expression!r}")
        minute, hour = fields[-5], fields[-4]
        self._text, self._seconds = text, len(fields) == 6
        self.wildcard = minute.startswith("*") or hour.startswith("*")
        self._zone = zone

    def _walls(self, start: datetime) -> Any:
        it = croniter(self._text, start, second_at_beginning=self._seconds,
                      max_years_between_matches=_CRON_SEARCH_YEARS)
        while True:
            try:
                yield it.get_next(datetime)
            except CroniterBadDateError:
                return

    def _instants(self, w: datetime) -> tuple[int, ...]:
        at = resolve(w, self._zone)
        if not at.instants_ms:  # in a gap: wildcard jobs skip it, fixed-time jobs run at its end
            return () if self.wildcard or at.gap_end_ms is None else (at.gap_end_ms,)
        return at.instants_ms if self.wildcard else at.instants_ms[:1]

    def _first(self, start: datetime, after_ms: int) -> int | None:
        """The first instant after `after_ms` of the matching wall times after `start`."""
        for w in self._walls(start):
            candidates = [i for i in self._instants(w) if i > after_ms]
            if candidates:
                return candidates[0]
        return None

    def next_after(self, after_ms: int) -> int | None:
        first = self._first(wall(after_ms, self._zone).replace(microsecond=0), after_ms)
        if first is None or not self.wildcard or _offset(first, self._zone) >= _offset(after_ms, self._zone):
            return first
        # A fall-back lies between: the repeated hour's second pass has wall times behind the
        # ones just scanned; its first matching one may come earlier.
        change_ms = _offset_change(after_ms, first, self._zone)
        second = self._first(wall(change_ms, self._zone) - timedelta(seconds=1), after_ms)
        return first if second is None else min(first, second)


def _offset(ms: int, zone: ZoneInfo) -> timedelta:
    return _aware(ms, zone).astimezone(zone).utcoffset() or timedelta(0)


class IntervalRecurrence:
    """`anchor + k * period` for k = 0, 1, ... (fewer than `count` when given), the calendar part
    on the wall clock of the zone."""

    def __init__(self, anchor_wall: datetime, period: Period, zone: ZoneInfo, count: int | None = None,
                 anchor_ms: int | None = None) -> None:
        self._wall = anchor_wall
        self._anchor_ms = anchor_ms if anchor_ms is not None else self._resolve(anchor_wall, zone)
        self._period, self._zone, self._count = period, zone, count

    @staticmethod
    def _resolve(w: datetime, zone: ZoneInfo) -> int:
        at = resolve(w, zone)
        if at.instants_ms:
            return at.instants_ms[0]
        # in a gap: forward by the gap's length (the instant fold 0 names, as java.time does)
        return max(_instant_ms(w.replace(tzinfo=zone, fold=0)), _instant_ms(w.replace(tzinfo=zone, fold=1)))

    def nth(self, k: int) -> int:
        """The k-th nominal time (k >= 0)."""
        p = self._period
        if not p.calendar:
            return self._anchor_ms + k * p.exact_ms
        w = _add_months(self._wall, k * p.months) + timedelta(days=k * p.days)
        return self._resolve(w, self._zone) + k * p.exact_ms

    def next_after(self, after_ms: int) -> int | None:
        k = 0 if after_ms < self._anchor_ms else (after_ms - self._anchor_ms) // max(1, self._period.approx_ms)
        while k > 0 and self.nth(k) > after_ms:
            k -= 1
        while self.nth(k) <= after_ms:
            k += 1
        return None if self._count is not None and k >= self._count else self.nth(k)


def _repeating(raw: str, zone: ZoneInfo) -> IntervalRecurrence:
    """`R[n]/<start>/<duration>` or `R[n]/<start>/<end>`. Raises ScheduleError."""
    parts = raw.split("/")
    rep = _REPEAT.fullmatch(parts[0])
    if len(parts) != 3 or rep is None:
        raise ScheduleError(f"'every' repeating interval must be R[n]/<start>/<duration or end>: {raw!r}")
    count = int(rep.group("n")) if rep.group("n") else None
    if count == 0:
        raise ScheduleError(f"'every' repeats zero times: {raw!r}")
    start_ms = parse_timestamp(parts[1], "every", zone)
    if parts[2].startswith("P"):
        period = parse_duration(parts[2], "every")
    else:
        span_ms = parse_timestamp(parts[2], "every", zone) - start_ms
        if span_ms < MIN_PERIOD_MS:
            raise ScheduleError(f"'every' interval must end at least one second after it starts: {raw!r}")
        period = Period(exact_ms=span_ms)
    return IntervalRecurrence(wall(start_ms, zone), period, zone, count, anchor_ms=start_ms)


def interval(raw: str, zone: ZoneInfo, start_at_ms: int | None) -> IntervalRecurrence:
    """The recurrence of an `every` value. Raises ScheduleError."""
    if raw.startswith("R"):
        return _repeating(raw, zone)
    period = parse_duration(raw, "every")
    if start_at_ms is not None:
        return IntervalRecurrence(wall(start_at_ms, zone), period, zone, anchor_ms=start_at_ms)
    if not period.calendar:
        return IntervalRecurrence(_EPOCH, period, zone, anchor_ms=0)
    return IntervalRecurrence(_EPOCH, period, zone)


# ---- the definition -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleTarget:
    """What a tick invokes. `scope` and `limit_key` are passed through with each invocation."""

    service: str
    handler: str
    key: str | None = None
    scope: str | None = None
    limit_key: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"service": self.service, "handler": self.handler}
        out.update({k: v for k, v in (("key", self.key), ("scope", self.scope), ("limit_key", self.limit_key))
                    if v is not None})
        return out


@dataclass(frozen=True, slots=True)
class ScheduleDefinition:
    """A validated schedule, as PUT stores it (the fire state lives beside it in Redis)."""

    schedule_id: str
    target: ScheduleTarget
    cron: str | None = None
    every: str | None = None
    timezone: str = "UTC"
    body: Any = None  # any JSON value, sent as the JSON request body; None = empty body
    headers: dict[str, str] = field(default_factory=dict)
    start_at_ms: int | None = None
    end_at_ms: int | None = None
    catch_up: CatchUp = CatchUp.ONE
    catch_up_window_ms: int = DEFAULT_CATCH_UP_WINDOW_MS
    catch_up_limit: int = DEFAULT_CATCH_UP_LIMIT
    overlap: Overlap = Overlap.ALLOW

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def recurrence(self) -> Recurrence:
        """The nominal times of the expression (validated at parse time; built once per definition)."""
        return _recurrence(self.cron, self.every, self.timezone, self.start_at_ms)

    def body_bytes(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body, separators=(",", ":")).encode()

    def to_json(self) -> dict[str, Any]:
        """The API's (and the store's) JSON form; `from_json(d.to_json())` gives `d` back."""
        out: dict[str, Any] = {"id": self.schedule_id, "target": self.target.to_json()}
        out["cron" if self.cron is not None else "every"] = self.cron if self.cron is not None else self.every
        out.update(timezone=self.timezone, headers=dict(self.headers), catch_up=self.catch_up.value,
                   catch_up_window_ms=self.catch_up_window_ms, catch_up_limit=self.catch_up_limit,
                   overlap=self.overlap.value)
        if self.body is not None:
            out["body"] = self.body
        if self.start_at_ms is not None:
            out["start_at"] = iso_ms(self.start_at_ms)
        if self.end_at_ms is not None:
            out["end_at"] = iso_ms(self.end_at_ms)
        return out


@functools.lru_cache(maxsize=DEFINITION_CACHE)
def _recurrence(cron: str | None, every: str | None, timezone: str, start_at_ms: int | None) -> Recurrence:
    """The recurrence of an expression (raises ScheduleError for a bad one; failures are not cached)."""
    zone = ZoneInfo(timezone)
    if cron is not None:
        return CronRecurrence(cron, zone)
    assert every is not None
    return interval(every, zone, start_at_ms)



def validate_id(raw: str) -> str:
    """A schedule id: letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most 128
    characters. Raises ScheduleError."""
    if not (0 < len(raw) <= MAX_ID_CHARS and _ID.fullmatch(raw)):
        raise ScheduleError(f"schedule id must be 1-{MAX_ID_CHARS} letters, digits, '.', '_' or '-', starting "
                            f"with a letter or digit: {raw!r}")
    return raw


def _opt_str(body: dict[str, Any], name: str, where: str = "") -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise ScheduleError(f"'{where}{name}' must be a non-empty string")
    return value


def _target(raw: Any) -> ScheduleTarget:
    if not isinstance(raw, dict):
        raise ScheduleError("'target' must be an object with 'service' and 'handler'")
    service, handler = _opt_str(raw, "service", "target."), _opt_str(raw, "handler", "target.")
    if service is None or handler is None:
        raise ScheduleError("'target' needs 'service' and 'handler'")
    key = raw.get("key")
    if key is not None and not isinstance(key, str):
        raise ScheduleError("'target.key' must be a string")
    return ScheduleTarget(service, handler, key, _opt_str(raw, "scope", "target."),
                          _opt_str(raw, "limit_key", "target."))


def _headers(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    ok = isinstance(raw, dict) and len(raw) <= MAX_HEADERS and all(
        isinstance(k, str) and k and k.isascii() and isinstance(v, str) and "\n" not in v and "\r" not in v
        and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in k) for k, v in raw.items())
    if not ok:
        raise ScheduleError(f"'headers' must be an object of at most {MAX_HEADERS} header names to string values")
    return {k.lower(): v for k, v in raw.items()}


def _enum(body: dict[str, Any], name: str, enum: type[CatchUp | Overlap], default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    try:
        return enum(value)
    except ValueError:
        raise ScheduleError(f"'{name}' must be one of {', '.join(m.value for m in enum)}: {json.dumps(value)}") \
            from None


def _window_ms(body: dict[str, Any]) -> int:
    raw = body.get("catch_up_window")
    if raw is None:
        ms = body.get("catch_up_window_ms", DEFAULT_CATCH_UP_WINDOW_MS)
        if not isinstance(ms, int) or isinstance(ms, bool) or ms < MIN_PERIOD_MS:
            raise ScheduleError("'catch_up_window_ms' must be an integer of at least 1000")
        return ms
    if not isinstance(raw, str):
        raise ScheduleError("'catch_up_window' must be an ISO 8601 duration string")
    period = parse_duration(raw, "catch_up_window")
    if period.calendar:
        raise ScheduleError("'catch_up_window' takes hours, minutes and seconds only (PT...)")
    return period.exact_ms


def _limit(body: dict[str, Any]) -> int:
    value = body.get("catch_up_limit", DEFAULT_CATCH_UP_LIMIT)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CATCH_UP_LIMIT:
        raise ScheduleError(f"'catch_up_limit' must be an integer from 1 to {MAX_CATCH_UP_LIMIT}")
    return value


def parse_definition(schedule_id: str, body: Any) -> ScheduleDefinition:
    """Validate a PUT body (or a stored definition). Raises ScheduleError naming the field."""
    validate_id(schedule_id)
    if not isinstance(body, dict):
        raise ScheduleError("the body must be a JSON object")
    cron, every = _opt_str(body, "cron"), _opt_str(body, "every")
    if (cron is None) == (every is None):
        raise ScheduleError("give exactly one of 'cron' and 'every'")
    zone = parse_zone(body.get("timezone"))
    start = None if body.get("start_at") is None else parse_timestamp(body["start_at"], "start_at", zone)
    end = None if body.get("end_at") is None else parse_timestamp(body["end_at"], "end_at", zone)
    if start is not None and end is not None and end <= start:
        raise ScheduleError("'end_at' must be after 'start_at'")
    definition = ScheduleDefinition(
        schedule_id, _target(body.get("target")), cron, every, zone.key, body.get("body"),
        _headers(body.get("headers")), start, end, _enum(body, "catch_up", CatchUp, CatchUp.ONE),
        _window_ms(body), _limit(body), _enum(body, "overlap", Overlap, Overlap.ALLOW))
    definition.recurrence()  # raises ScheduleError for a bad expression
    return definition


def encode_definition(d: ScheduleDefinition) -> str:
    return json.dumps(d.to_json(), separators=(",", ":"), sort_keys=True)


@functools.lru_cache(maxsize=DEFINITION_CACHE)
def decode_definition(raw: str | bytes) -> ScheduleDefinition:
    """A definition stored by `encode_definition` (cached: the loop decodes it every tick).
    Raises ScheduleError when it no longer parses."""
    data = json.loads(raw)
    return parse_definition(data.pop("id"), data)


# ---- fire times and catch-up ----------------------------------------------------------------------


def next_fire(d: ScheduleDefinition, after_ms: int, rec: Recurrence | None = None) -> int | None:
    """The first nominal time after `after_ms`, within start_at / end_at; None once it ended.

    A cron that matches no time for years (`0 0 30 2 *`) has none."""
    rec = rec or d.recurrence()
    lower = after_ms if d.start_at_ms is None else max(after_ms, d.start_at_ms - 1)
    try:
        t = rec.next_after(lower)
    except (CroniterError, CroniterBadCronError, OverflowError, ValueError):
        return None
    if t is None or (d.end_at_ms is not None and t > d.end_at_ms):
        return None
    return t


def upcoming(d: ScheduleDefinition, first_ms: int | None, count: int) -> list[int]:
    """`first_ms` and the nominal times after it, `count` in all (fewer once the schedule ends)."""
    out: list[int] = []
    rec = d.recurrence()
    t = first_ms
    while t is not None and len(out) < count:
        out.append(t)
        t = next_fire(d, t, rec)
    return out


def tick_key(schedule_id: str, nominal_ms: int) -> str:
    """The idempotency key of a tick: `<schedule id>@<nominal time, RFC 3339 UTC with ms>`."""
    return f"{schedule_id}@{iso_ms(nominal_ms)}"


@dataclass(frozen=True, slots=True)
class TickPlan:
    """What to do with the due tick at `nominal_ms`: fire it or not, how many ticks are skipped
    (this one included when it does not fire), and the schedule's next nominal time after that."""

    nominal_ms: int
    fire: bool
    skipped: int
    next_ms: int | None
    overlapped: bool = False  # not fired because the previous tick's invocation still ran


def plan_due(d: ScheduleDefinition, nominal_ms: int, now_ms: int) -> TickPlan:
    """Apply the catch-up rule to the due tick at `nominal_ms` seen at `now_ms` (overlap is
    decided by the caller, who knows the previous invocation's status)."""
    rec = d.recurrence()
    cutoff_ms = now_ms - d.catch_up_window_ms  # ticks before this were missed
    if nominal_ms >= cutoff_ms:
        return TickPlan(nominal_ms, True, 0, next_fire(d, nominal_ms, rec))
    keep = {CatchUp.NONE: 0, CatchUp.ONE: 1, CatchUp.ALL: d.catch_up_limit}[d.catch_up]
    missed = [nominal_ms]
    t = next_fire(d, nominal_ms, rec)
    while t is not None and t < cutoff_ms and len(missed) < MAX_SCAN:
        missed.append(t)
        t = next_fire(d, t, rec)
    if t is not None and t < cutoff_ms:  # more than MAX_SCAN missed: skip these, look again
        return TickPlan(nominal_ms, False, len(missed), t)
    if len(missed) <= keep:
        return TickPlan(nominal_ms, True, 0, next_fire(d, nominal_ms, rec))
    drop = len(missed) - keep
    return TickPlan(nominal_ms, False, drop, missed[drop] if keep else t)


def overlap_skip(d: ScheduleDefinition, plan: TickPlan, previous_running: bool) -> TickPlan:
    """The plan after the overlap rule: with `skip`, a tick due while the previous tick's
    invocation still runs does not fire (and counts as skipped)."""
    if plan.fire and previous_running and d.overlap is Overlap.SKIP:
        return TickPlan(plan.nominal_ms, False, 1, plan.next_ms, overlapped=True)
    return plan
