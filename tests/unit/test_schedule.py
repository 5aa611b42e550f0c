"""The pure schedule model (`shardgate.schedule`) on fixed times: every expression form, DST in
Europe/Berlin and America/New_York, start_at / end_at, catch-up modes, overlap, validation."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from shardgate.schedule import (
    CatchUp,
    CronRecurrence,
    ScheduleDefinition,
    ScheduleError,
    decode_definition,
    encode_definition,
    iso_ms,
    next_fire,
    overlap_skip,
    parse_definition,
    parse_duration,
    plan_due,
    tick_key,
    upcoming,
)

TARGET = {"service": "Recorder", "handler": "tick"}


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def local(t: int, zone: str) -> str:
    return datetime.fromtimestamp(t / 1000, ZoneInfo(zone)).isoformat()


def definition(**fields: Any) -> ScheduleDefinition:
    return parse_definition("s1", {"target": TARGET, **fields})


def fires(d: ScheduleDefinition, after: str, n: int) -> list[str]:
    """The next `n` fire times after `after`, as local ISO strings in the schedule's zone."""
    first = next_fire(d, ms(after))
    return [local(t, d.timezone) for t in upcoming(d, first, n)]


# ---- expression forms -----------------------------------------------------------------------------


def test_five_field_cron_in_utc() -> None:
    d = definition(cron="*/15 9-10 * * 1-5")
    assert fires(d, "2026-12-04T10:40:00+00:00", 3) == [  # a Friday
        "2026-12-04T10:45:00+00:00", "2026-12-07T09:00:00+00:00", "2026-12-07T09:15:00+00:00"]


def test_six_fields_take_leading_seconds() -> None:
    d = definition(cron="*/20 * * * * *")
    assert fires(d, "2026-01-01T00:00:00+00:00", 4) == [
        "2026-01-01T00:00:20+00:00", "2026-01-01T00:00:40+00:00", "2026-01-01T00:01:00+00:00",
        "2026-01-01T00:01:20+00:00"]


@pytest.mark.parametrize(("name", "expected"), [
    ("@hourly", ["2026-05-01T11:00:00+00:00", "2026-05-01T12:00:00+00:00"]),
    ("@daily", ["2026-05-02T00:00:00+00:00", "2026-05-03T00:00:00+00:00"]),
    ("@midnight", ["2026-05-02T00:00:00+00:00", "2026-05-03T00:00:00+00:00"]),
    ("@weekly", ["2026-05-03T00:00:00+00:00", "2026-05-10T00:00:00+00:00"]),  # Sundays
    ("@monthly", ["2026-06-01T00:00:00+00:00", "2026-07-01T00:00:00+00:00"]),
    ("@yearly", ["2027-01-01T00:00:00+00:00", "2028-01-01T00:00:00+00:00"]),
    ("@annually", ["2027-01-01T00:00:00+00:00", "2028-01-01T00:00:00+00:00"]),
])
def test_cron_names(name: str, expected: list[str]) -> None:
    assert fires(definition(cron=name), "2026-05-01T10:30:00+00:00", 2) == expected


def test_every_counts_from_the_epoch_so_it_is_aligned() -> None:
    d = definition(every="PT15M")
    assert fires(d, "2026-05-01T10:07:00+00:00", 3) == [
        "2026-05-01T10:15:00+00:00", "2026-05-01T10:30:00+00:00", "2026-05-01T10:45:00+00:00"]


def test_every_counts_from_start_at() -> None:
    d = definition(every="PT1H30M", start_at="2026-05-01T10:05:00Z")
    assert fires(d, "2026-05-01T00:00:00+00:00", 3) == [
        "2026-05-01T10:05:00+00:00", "2026-05-01T11:35:00+00:00", "2026-05-01T13:05:00+00:00"]


def test_every_with_fractional_seconds_and_weeks() -> None:
    assert parse_duration("PT1.5S", "every").exact_ms == 1500
    assert parse_duration("P2W", "every").days == 14
    assert parse_duration("P1Y2M", "every").months == 14


def test_every_month_clips_to_the_months_last_day() -> None:
    d = definition(every="P1M", start_at="2026-01-31T08:00:00Z")
    assert fires(d, "2026-01-01T00:00:00+00:00", 4) == [
        "2026-01-31T08:00:00+00:00", "2026-02-28T08:00:00+00:00", "2026-03-31T08:00:00+00:00",
        "2026-04-30T08:00:00+00:00"]


def test_repeating_interval_unbounded() -> None:
    d = definition(every="R/2026-12-01T00:00:00Z/PT1H")
    assert fires(d, "2026-11-01T00:00:00+00:00", 3) == [
        "2026-12-01T00:00:00+00:00", "2026-12-01T01:00:00+00:00", "2026-12-01T02:00:00+00:00"]
    assert local(next_fire(d, ms("2026-12-01T05:30:00+00:00")) or 0, "UTC") == "2026-12-01T06:00:00+00:00"


def test_repeating_interval_with_a_count_ends() -> None:
    d = definition(every="R3/2026-12-01T00:00:00Z/PT1H")
    assert fires(d, "2026-11-01T00:00:00+00:00", 10) == [
        "2026-12-01T00:00:00+00:00", "2026-12-01T01:00:00+00:00", "2026-12-01T02:00:00+00:00"]
    assert next_fire(d, ms("2026-12-01T02:00:00+00:00")) is None


def test_repeating_interval_from_start_and_end() -> None:
    d = definition(every="R2/2026-12-01T00:00:00Z/2026-12-01T00:10:00Z")
    assert fires(d, "2026-11-01T00:00:00+00:00", 5) == ["2026-12-01T00:00:00+00:00", "2026-12-01T00:10:00+00:00"]


# ---- DST: Vixie cron's rules ------------------------------------------------------------------------


def test_berlin_spring_forward_wildcard_skips_the_missing_hour() -> None:
    d = definition(cron="*/30 * * * *", timezone="Europe/Berlin")
    assert fires(d, "2026-03-29T01:00:00+01:00", 4) == [
        "2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00",
        "2026-03-29T04:00:00+02:00"]


def test_berlin_spring_forward_fixed_time_runs_at_the_end_of_the_gap() -> None:
    d = definition(cron="30 2 * * *", timezone="Europe/Berlin")
    assert fires(d, "2026-03-28T12:00:00+01:00", 3) == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]


def test_berlin_fall_back_wildcard_runs_in_both_passes() -> None:
    d = definition(cron="*/30 * * * *", timezone="Europe/Berlin")
    assert fires(d, "2026-10-25T01:00:00+02:00", 7) == [
        "2026-10-25T01:30:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00", "2026-10-25T02:30:00+01:00", "2026-10-25T03:00:00+01:00",
        "2026-10-25T03:30:00+01:00"]


def test_berlin_fall_back_hourly_runs_twice_an_hour_apart() -> None:
    d = definition(cron="@hourly", timezone="Europe/Berlin")
    got = [next_fire(d, ms("2026-10-25T00:30:00+02:00"))]
    for _ in range(3):
        got.append(next_fire(d, got[-1] or 0))
    assert [local(t or 0, "UTC") for t in got] == [
        "2026-10-24T23:00:00+00:00", "2026-10-25T00:00:00+00:00", "2026-10-25T01:00:00+00:00",
        "2026-10-25T02:00:00+00:00"]


def test_berlin_fall_back_fixed_time_runs_once() -> None:
    d = definition(cron="30 2 * * *", timezone="Europe/Berlin")
    assert fires(d, "2026-10-24T12:00:00+02:00", 3) == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"]


def test_a_second_pass_time_is_not_repeated_for_a_fixed_job() -> None:
    d = definition(cron="30 2 * * *", timezone="Europe/Berlin")
    # asked from inside the second pass (02:10 CET): the next run is the next day
    assert fires(d, "2026-10-25T02:10:00+01:00", 1) == ["2026-10-26T02:30:00+01:00"]


def test_new_york_spring_forward_and_fall_back() -> None:
    daily = definition(cron="30 2 * * *", timezone="America/New_York")
    assert fires(daily, "2026-03-07T12:00:00-05:00", 2) == ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
    assert fires(daily, "2026-10-31T12:00:00-04:00", 2) == ["2026-11-01T02:30:00-05:00",
                                                           "2026-11-02T02:30:00-05:00"]
    at_130 = definition(cron="30 1 * * *", timezone="America/New_York")  # 01:30 repeats: once
    assert fires(at_130, "2026-10-31T12:00:00-04:00", 2) == ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
    quarter = definition(cron="*/15 1 * * *", timezone="America/New_York")  # minute '*': both passes
    assert fires(quarter, "2026-11-01T00:50:00-04:00", 8) == [
        "2026-11-01T01:00:00-04:00", "2026-11-01T01:15:00-04:00", "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:45:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T01:15:00-05:00",
        "2026-11-01T01:30:00-05:00", "2026-11-01T01:45:00-05:00"]


def test_every_day_keeps_the_local_time_across_dst() -> None:
    d = definition(every="P1D", timezone="Europe/Berlin", start_at="2026-03-27T09:00:00+01:00")
    assert fires(d, "2026-03-27T08:00:00+01:00", 4) == [
        "2026-03-27T09:00:00+01:00", "2026-03-28T09:00:00+01:00", "2026-03-29T09:00:00+02:00",
        "2026-03-30T09:00:00+02:00"]


def test_every_hour_is_elapsed_time_across_dst() -> None:
    d = definition(every="PT1H", timezone="Europe/Berlin")
    got = fires(d, "2026-10-25T01:30:00+02:00", 3)
    assert got == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"]


def test_a_day_start_inside_a_gap_moves_forward_by_the_gap() -> None:
    d = definition(every="P1D", timezone="Europe/Berlin", start_at="2026-03-28T02:30:00")
    assert fires(d, "2026-03-27T00:00:00+01:00", 3) == [
        "2026-03-28T02:30:00+01:00", "2026-03-29T03:30:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_naive_timestamps_are_wall_time_in_the_zone() -> None:
    d = definition(every="PT1H", timezone="America/New_York", start_at="2026-07-01T09:00:00")
    assert d.start_at_ms == ms("2026-07-01T09:00:00-04:00")


# ---- start_at / end_at ----------------------------------------------------------------------------


def test_nothing_fires_before_start_at_or_after_end_at() -> None:
    d = definition(cron="0 * * * *", start_at="2026-05-01T10:00:00Z", end_at="2026-05-01T12:00:00Z")
    assert fires(d, "2026-04-01T00:00:00+00:00", 10) == [
        "2026-05-01T10:00:00+00:00", "2026-05-01T11:00:00+00:00", "2026-05-01T12:00:00+00:00"]
    assert next_fire(d, ms("2026-05-01T12:00:00+00:00")) is None


def test_a_cron_that_matches_no_date_never_fires() -> None:
    assert next_fire(definition(cron="0 0 30 2 *"), ms("2026-01-01T00:00:00+00:00")) is None


# ---- catch-up and overlap -------------------------------------------------------------------------

T0 = ms("2026-05-01T10:00:00+00:00")


def _plan(catch_up: str, now_offset_s: int, limit: int = 100) -> tuple[bool, int, str | None]:
    d = definition(every="PT1M", catch_up=catch_up, catch_up_window="PT2M", catch_up_limit=limit)
    p = plan_due(d, T0, T0 + now_offset_s * 1000)
    return p.fire, p.skipped, None if p.next_ms is None else iso_ms(p.next_ms)


def test_a_late_tick_inside_the_window_fires_in_every_mode() -> None:
    for mode in ("none", "one", "all"):
        assert _plan(mode, 90) == (True, 0, "2026-05-01T10:01:00.000Z")


def test_catch_up_none_skips_every_missed_tick() -> None:
    # down 10 minutes: ticks 10:00 .. 10:07 are older than the 2-minute window
    assert _plan("none", 600) == (False, 8, "2026-05-01T10:08:00.000Z")


def test_catch_up_one_runs_the_last_missed_tick_once() -> None:
    assert _plan("one", 600) == (False, 7, "2026-05-01T10:07:00.000Z")
    d = definition(every="PT1M", catch_up="one", catch_up_window="PT2M")
    last = plan_due(d, ms("2026-05-01T10:07:00+00:00"), T0 + 600_000)
    assert (last.fire, last.skipped, iso_ms(last.next_ms or 0)) == (True, 0, "2026-05-01T10:08:00.000Z")


def test_catch_up_all_runs_every_missed_tick_up_to_the_limit() -> None:
    assert _plan("all", 600) == (True, 0, "2026-05-01T10:01:00.000Z")
    assert _plan("all", 600, limit=3) == (False, 5, "2026-05-01T10:05:00.000Z")  # keeps 10:05 .. 10:07


def test_catch_up_all_walks_through_every_missed_tick() -> None:
    d = definition(every="PT1M", catch_up="all", catch_up_window="PT2M", catch_up_limit=3)
    now, nominal, fired, skipped = T0 + 600_000, T0, [], 0
    while nominal <= now:
        p = plan_due(d, nominal, now)
        skipped += p.skipped
        if p.fire:
            fired.append(iso_ms(nominal)[11:16])
        assert p.next_ms is not None
        nominal = p.next_ms
    assert (fired, skipped) == (["10:05", "10:06", "10:07", "10:08", "10:09", "10:10"], 5)


def test_overlap_skip_skips_while_the_previous_tick_runs() -> None:
    skip = definition(every="PT1M", overlap="skip")
    plan = plan_due(skip, T0, T0 + 100)
    assert overlap_skip(skip, plan, previous_running=False) == plan
    skipped = overlap_skip(skip, plan, previous_running=True)
    assert (skipped.fire, skipped.skipped, skipped.overlapped, skipped.next_ms) == (False, 1, True, T0 + 60_000)
    allow = definition(every="PT1M")
    assert overlap_skip(allow, plan_due(allow, T0, T0), previous_running=True).fire


# ---- the definition -------------------------------------------------------------------------------


def test_definition_round_trips_through_its_stored_form() -> None:
    d = definition(cron="0 9 * * 1", timezone="Europe/Berlin", body={"a": [1, 2]}, headers={"X-Trace": "1"},
                   start_at="2026-01-01T00:00:00Z", end_at="2027-01-01T00:00:00Z", catch_up="all",
                   catch_up_window="PT5M", catch_up_limit=7, overlap="skip",
                   target={**TARGET, "scope": "tenant-1", "limit_key": "reports"})
    assert decode_definition(encode_definition(d)) == d
    assert d.headers == {"x-trace": "1"} and d.catch_up is CatchUp.ALL
    assert d.body_bytes() == b'{"a":[1,2]}'
    assert d.target.scope == "tenant-1" and d.target.limit_key == "reports"


def test_tick_key_is_schedule_id_at_nominal_time() -> None:
    assert tick_key("daily-report", ms("2026-12-01T00:00:00+00:00")) == "daily-report@2026-12-01T00:00:00.000Z"


@pytest.mark.parametrize(("body", "message"), [
    ({}, "give exactly one of 'cron' and 'every'"),
    ({"cron": "* * * * *", "every": "PT1M"}, "give exactly one of 'cron' and 'every'"),
    ({"cron": "* * *"}, "'cron' needs 5 fields"),
    ({"cron": "61 * * * *"}, "'cron' is not a valid cron expression"),
    ({"cron": "* * * * * * *"}, "'cron' needs 5 fields"),
    ({"cron": "@reboot"}, "'cron' needs 5 fields"),
    ({"cron": "H * * * *"}, "'cron' is not a valid cron expression"),
    ({"every": "15m"}, "'every' is not an ISO 8601 duration"),
    ({"every": "PT0.5S"}, "'every' must be at least one second"),
    ({"every": "PT"}, "'every' is not an ISO 8601 duration"),
    ({"every": "R0/2026-12-01T00:00:00Z/PT1H"}, "'every' repeats zero times"),
    ({"every": "R/2026-12-01T00:00:00Z"}, "'every' repeating interval must be"),
    ({"every": "R/yesterday/PT1H"}, "'every' is not an ISO 8601 timestamp"),
    ({"every": "PT1M", "timezone": "Mars/Olympus"}, "'timezone' is not a known IANA time zone"),
    ({"every": "PT1M", "timezone": "../etc/passwd"}, "'timezone' is not an IANA time zone name"),
    ({"every": "PT1M", "timezone": 5}, "'timezone' is not an IANA time zone name"),
    ({"every": "PT1M", "start_at": "soon"}, "'start_at' is not an ISO 8601 timestamp"),
    ({"every": "PT1M", "start_at": "2026-01-02T00:00:00Z", "end_at": "2026-01-01T00:00:00Z"},
     "'end_at' must be after 'start_at'"),
    ({"every": "PT1M", "catch_up": "some"}, "'catch_up' must be one of none, one, all"),
    ({"every": "PT1M", "overlap": "queue"}, "'overlap' must be one of allow, skip"),
    ({"every": "PT1M", "catch_up_limit": 0}, "'catch_up_limit' must be an integer from 1 to 1000"),
    ({"every": "PT1M", "catch_up_window": "P1D"}, "'catch_up_window' takes hours, minutes and seconds only"),
    ({"every": "PT1M", "headers": {"bad name": "x"}}, "'headers' must be an object"),
    ({"every": "PT1M", "target": {"service": "S"}}, "'target' needs 'service' and 'handler'"),
    ({"every": "PT1M", "target": "S/h"}, "'target' must be an object"),
    ({"every": "PT1M", "target": {**TARGET, "key": 3}}, "'target.key' must be a string"),
])
def test_bad_definitions_name_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ScheduleError) as err:
        parse_definition("s1", {"target": TARGET, **body})
    assert err.value.message.startswith(message), err.value.message


@pytest.mark.parametrize("sid", ["", "-x", "a b", "a:b", "a@b", "x" * 129])
def test_bad_ids(sid: str) -> None:
    with pytest.raises(ScheduleError):
        parse_definition(sid, {"target": TARGET, "every": "PT1M"})


def test_cron_wildcard_detection_follows_vixie() -> None:
    zone = ZoneInfo("UTC")
    assert CronRecurrence("*/5 * * * *", zone).wildcard
    assert CronRecurrence("0 * * * *", zone).wildcard
    assert not CronRecurrence("30 2 * * *", zone).wildcard
    assert not CronRecurrence("*/10 30 2 * * *", zone).wildcard  # seconds do not count
