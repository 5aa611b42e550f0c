"""sgtools.bench: percentiles, summaries, request planning and one bounded run on loopback."""

from __future__ import annotations

import json
import random

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sgtools.bench import (
    BenchConfig,
    BenchError,
    Recorder,
    RequestPlan,
    display_url,
    format_summary,
    invocation_path,
    is_loopback_url,
    latency_summary_ms,
    parse_body,
    parse_header,
    parse_target,
    percentile,
    run_bench,
    summarize,
)

# ---------------------------------------------------------------------------------- percentile


def test_percentile_of_empty_list_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_of_single_value_is_that_value() -> None:
    assert percentile([7.0], 1) == 7.0
    assert percentile([7.0], 100) == 7.0


def test_percentile_uses_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 51) == 3.0


@pytest.mark.parametrize("q", [0, -1, 100.1])
def test_percentile_rejects_out_of_range_q(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


# ------------------------------------------------------------------------------------ summaries


def test_latency_summary_reports_milliseconds_of_unsorted_input() -> None:
    summary = latency_summary_ms([0.003, 0.001, 0.002, 0.004])
    assert summary == {"p50": 2.0, "p90": 4.0, "p99": 4.0, "max": 4.0, "mean": 2.5, "min": 1.0}


def test_latency_summary_of_no_samples_is_all_none() -> None:
    assert set(latency_summary_ms([]).values()) == {None}


def test_latency_summary_max_can_come_from_outside_the_sample() -> None:
    assert latency_summary_ms([0.001], max_latency_s=0.5)["max"] == 500.0


def test_summarize_counts_rates_and_errors() -> None:
    summary = summarize([0.01] * 8, {200: 8, 500: 1, 503: 2}, {"ClientConnectorError": 1}, elapsed_s=2.0)
    assert summary["requests"] == 12
    assert summary["ok"] == 8
    assert summary["rps"] == 6.0
    assert summary["ok_rps"] == 4.0
    assert summary["errors"] == {"total": 4, "by_status": {"500": 1, "503": 2},
                                 "transport": {"ClientConnectorError": 1}}
    assert summary["statuses"] == {"200": 8, "500": 1, "503": 2}
    assert summary["latency_ms"]["p99"] == 10.0
    json.dumps(summary)  # JSON-serialisable as printed by --json


def test_summarize_treats_202_as_success_and_zero_elapsed_as_zero_rate() -> None:
    summary = summarize([], {202: 3}, {}, elapsed_s=0.0)
    assert summary["ok"] == 3
    assert summary["errors"]["total"] == 0
    assert summary["rps"] == 0.0


def test_format_summary_mentions_every_number() -> None:
    summary = summarize([0.001, 0.002], {200: 2, 500: 1}, {"TimeoutError": 1}, elapsed_s=1.0)
    text = format_summary(summary)
    for needle in ("requests  4", "p50 1.00 ms", "p99 2.00 ms", "max 2.00 ms", "500: 1", "TimeoutError: 1"):
        assert needle in text


# ------------------------------------------------------------------------------------ requests


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost", "http://[::1]:1/", "http://127.3.2.1"])
def test_loopback_urls_are_accepted(url: str) -> None:
    assert is_loopback_url(url)


@pytest.mark.parametrize("url", ["http://10.0.0.1:8080", "http://example.com", "http://0.0.0.0", "nonsense"])
def test_other_urls_are_not_loopback(url: str) -> None:
    assert not is_loopback_url(url)


def test_non_loopback_url_is_refused_unless_allowed() -> None:
    with pytest.raises(BenchError, match="--allow-remote"):
        BenchConfig(url="http://192.0.2.1:8080").validate()
    BenchConfig(url="http://192.0.2.1:8080", allow_remote=True).validate()


def test_parse_target_accepts_optional_fixed_key() -> None:
    assert parse_target("Greeter/greet") == ("Greeter", None, "greet")
    assert parse_target("/Counter/my-key/add") == ("Counter", "my-key", "add")
    with pytest.raises(BenchError):
        parse_target("Greeter")


def test_invocation_path_follows_restate_layout() -> None:
    assert invocation_path("Greeter", "greet", None, "call") == "/restate/call/Greeter/greet"
    assert invocation_path("Greeter", "greet", None, "send") == "/restate/send/Greeter/greet"
    assert invocation_path("Counter", "add", "a b/c", "call") == "/restate/call/Counter/a%20b%2Fc/add"


def test_parse_header_and_body() -> None:
    assert parse_header("X-Test: a:b") == ("X-Test", "a:b")
    with pytest.raises(BenchError):
        parse_header("novalue")
    assert parse_body('{"a": 1}') == b'{"a":1}'
    with pytest.raises(BenchError):
        parse_body("not json")


def test_request_plan_round_robins_over_keys() -> None:
    plan = RequestPlan(BenchConfig(target="Counter/add", keys=3, key_prefix="k"))
    urls = [plan.next_url() for _ in range(4)]
    assert urls == [f"http://127.0.0.1:8080/restate/call/Counter/k{i}/add" for i in (0, 1, 2, 0)]


def test_request_plan_random_keys_stay_in_range() -> None:
    cfg = BenchConfig(target="Counter/add", keys=5, key_order="random", mode="send")
    plan = RequestPlan(cfg, rng=random.Random(1))
    keys = {plan.next_url().split("/")[-2] for _ in range(200)}
    assert keys == {f"k{i}" for i in range(5)}


def test_display_url_shows_the_key_range() -> None:
    assert display_url(BenchConfig(target="Greeter/greet")) == "http://127.0.0.1:8080/restate/call/Greeter/greet"
    keyed = BenchConfig(target="Counter/add", keys=10, mode="send")
    assert display_url(keyed) == "http://127.0.0.1:8080/restate/send/Counter/k{0..9}/add"


# ------------------------------------------------------------------------------------ recorder


def test_recorder_ignores_requests_started_during_warmup() -> None:
    rec = Recorder()
    rec.measure_from = 10.0
    rec.response(200, started=9.0, latency=0.1)
    rec.error("OSError", started=9.5)
    rec.response(200, started=10.0, latency=0.2)
    rec.response(500, started=11.0, latency=0.3)
    assert rec.statuses == {200: 1, 500: 1}
    assert list(rec.latencies) == [0.2]
    assert not rec.transport


def test_recorder_keeps_a_bounded_sample() -> None:
    rec = Recorder(max_samples=10, rng=random.Random(0))
    rec.measure_from = 0.0
    for i in range(1000):
        rec.response(200, started=1.0, latency=float(i))
    assert len(rec.latencies) == 10
    assert rec.seen_ok == 1000
    assert rec.max_latency == 999.0


# ------------------------------------------------------------------------------- bounded run


async def test_run_bench_stops_after_max_requests_and_counts_statuses() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        status = 500 if request.match_info["key"] == "k1" else 200
        return web.json_response("ok", status=status)

    app = web.Application()
    app.router.add_post("/restate/call/Counter/{key}/add", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        cfg = BenchConfig(url=str(server.make_url("")), target="Counter/add", keys=2, connections=4,
                          duration_s=30.0, max_requests=40, headers={"content-type": "application/json"})
        summary = await run_bench(cfg)
    assert 40 <= summary["requests"] <= 40 + cfg.connections
    assert summary["ok"] + summary["errors"]["by_status"]["500"] == summary["requests"]
    assert summary["ok"] > 0
    assert summary["elapsed_s"] < 30.0
    assert summary["latency_ms"]["p50"] is not None
    assert set(seen) == {"/restate/call/Counter/k0/add", "/restate/call/Counter/k1/add"}
