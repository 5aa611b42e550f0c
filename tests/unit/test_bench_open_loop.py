"""sgtools.bench open loop: schedule, statistics and the runner on a virtual clock; one real run.

The runner tests drive `OpenLoopRunner` with a virtual clock: sleeps and the fake server's
response times are timers on it, and the clock jumps to the next timer whenever every task is
waiting, so seconds of schedule run in milliseconds with exact, repeatable times.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sgtools.bench import (
    BenchConfig,
    BenchError,
    OpenLoopRunner,
    RequestPlan,
    StepStats,
    TimeSeries,
    add_arguments,
    config_from_args,
    format_open_loop,
    format_progress,
    histogram_summary_ms,
    new_histogram,
    parse_rates,
    plot_open_loop,
    progress_bar,
    record_latency,
    run_open_loop,
    scheduled_time_s,
    step_request_count,
)

# ------------------------------------------------------------------------------- virtual clock


class VirtualClock:
    """Monotonic time that only moves when every task waits: then it jumps to the next timer."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        if delay_s <= 0:
            await asyncio.sleep(0)
            return
        await self.until(self.now + delay_s)

    async def until(self, when_s: float) -> None:
        if when_s <= self.now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (when_s, next(self._seq), future))
        await future

    async def drive(self, main: Awaitable[Any]) -> Any:
        """Run `main` to completion, advancing time whenever the loop has nothing else to do."""
        task = asyncio.ensure_future(main)
        while not task.done():
            for _ in range(50):  # let every runnable task reach its next wait
                await asyncio.sleep(0)
            if task.done() or not self._timers:
                continue
            when_s, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, when_s)
            future.set_result(None)
        return task.result()


def runner_for(vc: VirtualClock, send: Callable[[str], Awaitable[int]], max_in_flight: int = 1000,
               **cfg: Any) -> OpenLoopRunner:
    plan = RequestPlan(BenchConfig(rates_rps=(1.0,), **cfg))
    return OpenLoopRunner(send, plan, max_in_flight=max_in_flight, clock=vc.clock, sleep=vc.sleep)


# ------------------------------------------------------------------------------------- schedule


def test_parse_rates_accepts_one_rate_or_ramp_steps() -> None:
    assert parse_rates("200") == (200.0,)
    assert parse_rates("200, 400,800") == (200.0, 400.0, 800.0)
    assert parse_rates("0.5") == (0.5,)
    for bad in ("", ",", "fast", "100,x"):
        with pytest.raises(BenchError):
            parse_rates(bad)


def test_step_request_count_and_schedule_are_fixed_by_rate_and_duration() -> None:
    assert step_request_count(200, 10) == 2000
    assert step_request_count(3, 1) == 3
    assert step_request_count(0.5, 3) == 2  # due at 0 s and 2 s
    assert step_request_count(1000, 0.0015) == 2
    assert [scheduled_time_s(10.0, 4, i) for i in range(5)] == [10.0, 10.25, 10.5, 10.75, 11.0]


def test_open_loop_settings_are_validated() -> None:
    BenchConfig(rates_rps=(100.0, 200.0)).validate()
    for cfg in (BenchConfig(rates_rps=(0.0,)), BenchConfig(rates_rps=(100.0,), max_in_flight=0),
                BenchConfig(rates_rps=(100.0,), max_requests=10)):
        with pytest.raises(BenchError):
            cfg.validate()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_builds_an_open_loop_config_and_refuses_plot_without_rate(tmp_path: Path) -> None:
    cfg = config_from_args(parse("--rate", "100,200", "--duration", "5", "--max-in-flight", "50"))
    assert cfg.open_loop and cfg.rates_rps == (100.0, 200.0) and cfg.max_in_flight == 50
    assert not config_from_args(parse()).open_loop  # the closed loop stays the default
    with pytest.raises(BenchError, match="--rate"):
        config_from_args(parse("--plot", str(tmp_path / "x.png")))


# ----------------------------------------------------------------------------------- statistics


def test_histogram_summary_reports_milliseconds_within_its_precision() -> None:
    histogram = new_histogram()
    for ms in range(1, 1001):
        record_latency(histogram, ms / 1000.0)
    summary = histogram_summary_ms(histogram)
    for key, expected in (("p50", 500.0), ("p90", 900.0), ("p99", 990.0), ("p99.9", 999.0), ("max", 1000.0),
                          ("min", 1.0), ("mean", 500.5)):
        assert summary[key] == pytest.approx(expected, rel=2e-3), key
    assert set(histogram_summary_ms(new_histogram()).values()) == {None}


def test_latency_is_clamped_to_the_histogram_range() -> None:
    histogram = new_histogram()
    record_latency(histogram, 0.0)
    record_latency(histogram, 10 * 3600.0)
    summary = histogram_summary_ms(histogram)
    assert summary["min"] == pytest.approx(0.001)
    assert summary["max"] == pytest.approx(3600_000.0, rel=2e-3)


def test_step_stats_measure_from_the_scheduled_time_and_count_errors() -> None:
    step = StepStats(rate_rps=10, duration_s=1.0, start_s=100.0)
    step.on_sent(100.0, 100.0)
    step.on_sent(100.1, 100.6)  # the sender was 0.5 s late: that wait is part of the latency
    step.on_response(200, 100.0, 100.01)
    step.on_response(200, 100.1, 100.61)
    step.on_response(503, 100.2, 100.3)
    step.on_error("ClientConnectorError", 100.4)
    summary = step.summary()
    assert summary["sent"] == 2 and summary["requests"] == 4 and summary["ok"] == 2
    assert summary["latency_ms"]["max"] == pytest.approx(510.0, rel=2e-3)
    assert summary["latency_ms"]["min"] == pytest.approx(10.0, rel=2e-3)
    assert summary["max_send_lag_ms"] == pytest.approx(500.0)
    assert summary["errors"] == {"total": 2, "by_status": {"503": 1}, "transport": {"ClientConnectorError": 1}}
    assert summary["ok_rps"] == 2.0 and summary["sent_rps"] == 2.0
    json.dumps(summary)


def test_time_series_closes_intervals_including_idle_ones() -> None:
    series = TimeSeries(start_s=10.0, interval_s=1.0)
    series.on_sent(10.1)
    series.on_done(10.2, 0.1)
    series.on_done(10.9, None)
    series.on_done(13.5, 0.5)  # 11..12 and 12..13 were idle
    series.finish(13.75)
    assert [p["t_s"] for p in series.points] == [1.0, 2.0, 3.0, 3.75]
    first, idle, _, last = series.points
    assert (first["sent"], first["ok"], first["errors"], first["ok_rps"]) == (1, 1, 1, 1.0)
    assert first["latency_ms"]["p99"] == pytest.approx(100.0, rel=2e-3)
    assert idle["ok"] == 0 and idle["latency_ms"]["p50"] is None
    assert last["ok"] == 1 and last["ok_rps"] == pytest.approx(1 / 0.75, abs=0.1)
    with pytest.raises(ValueError):
        TimeSeries(0.0, interval_s=0.0)


def test_progress_bar_and_line() -> None:
    assert progress_bar(0.0, 4) == "[----]"
    assert progress_bar(0.5, 4) == "[##--]"
    assert progress_bar(7.0, 4) == "[####]"
    vc = VirtualClock()

    async def send(url: str) -> int:
        return 200

    runner = runner_for(vc, send)
    assert "warmup" in format_progress(runner, 0.0, 2)
    runner.current = StepStats(100, 10.0, 0.0)
    runner.steps.append(runner.current)
    line = format_progress(runner, 5.0, 2)
    assert "step 1/2" in line and "100/s" in line and "[##########----------]" in line


# ---------------------------------------------------------------------------- runner, virtual time


async def test_runner_sends_on_schedule_against_a_fast_server() -> None:
    vc = VirtualClock()
    sent_at: list[float] = []

    async def send(url: str) -> int:
        sent_at.append(vc.now)
        await vc.sleep(0.002)  # a 2 ms server
        return 200

    runner = runner_for(vc, send)
    steps = await vc.drive(runner.run([100.0, 200.0], duration_s=2.0))
    first, second = (s.summary() for s in steps)
    assert (first["sent"], first["ok"], second["sent"], second["ok"]) == (200, 200, 400, 400)
    assert sent_at[:3] == pytest.approx([0.0, 0.01, 0.02])
    assert sent_at[200:202] == pytest.approx([2.0, 2.005])  # the second step starts on time, at 200/s
    for summary in (first, second):
        assert summary["latency_ms"]["p50"] == pytest.approx(2.0, rel=2e-3)
        assert summary["latency_ms"]["max"] == pytest.approx(2.0, rel=2e-3)
        assert summary["max_send_lag_ms"] == pytest.approx(0.0, abs=1e-6)
    assert first["ok_rps"] == pytest.approx(100.0, rel=0.01)
    assert second["ok_rps"] == pytest.approx(200.0, rel=0.01)
    rates = [p["ok_rps"] for p in runner.series.points]
    assert rates[:4] == pytest.approx([100.0, 100.0, 200.0, 200.0], abs=1.0)


async def test_a_stalled_server_shows_up_in_the_latency_of_every_request_it_held() -> None:
    """The server answers nothing between t=1 s and t=2 s: requests due then wait up to 1 s."""
    vc = VirtualClock()

    async def send(url: str) -> int:
        if 1.0 <= vc.now < 2.0:
            await vc.until(2.0)
        return 200

    runner = runner_for(vc, send)
    (step,) = await vc.drive(runner.run([100.0], duration_s=3.0))
    summary = step.summary()
    assert summary["sent"] == summary["ok"] == 300
    lat = summary["latency_ms"]
    assert lat["p50"] == pytest.approx(0.001, abs=0.01)  # the 200 unstalled requests
    assert lat["p90"] == pytest.approx(700.0, rel=0.02)  # the 70th of the 100 stalled ones, 1000..10 ms
    assert lat["max"] == pytest.approx(1000.0, rel=2e-3)
    points = runner.series.points
    assert points[1]["ok"] == 0  # nothing completed during the stall ...
    assert points[2]["ok"] >= 100  # ... and then all at once


async def test_a_full_window_delays_sending_and_that_delay_is_counted() -> None:
    """One slot and a 100 ms server at 100/s: request i leaves at 0.1 i s, though it was due at
    0.01 i s. Measured from the actual send (coordinated omission) every latency would be 100 ms."""
    vc = VirtualClock()

    async def send(url: str) -> int:
        await vc.sleep(0.1)
        return 200

    runner = runner_for(vc, send, max_in_flight=1)
    (step,) = await vc.drive(runner.run([100.0], duration_s=1.0))
    summary = step.summary()
    assert summary["sent"] == summary["ok"] == 100
    lat = summary["latency_ms"]
    assert lat["min"] == pytest.approx(100.0, rel=2e-3)
    assert lat["p50"] == pytest.approx(100.0 + 90.0 * 49, rel=2e-3)
    assert lat["max"] == pytest.approx(100.0 + 90.0 * 99, rel=2e-3)
    assert summary["max_send_lag_ms"] == pytest.approx(90.0 * 99, rel=1e-6)
    assert summary["ok_rps"] == pytest.approx(10.0, rel=0.01)  # 100 answers over 10 s


async def test_errors_are_counted_and_warmup_is_not_measured() -> None:
    vc = VirtualClock()
    calls = itertools.count()

    async def send(url: str) -> int:
        n = next(calls)
        if n % 10 == 3:
            raise ConnectionResetError("reset")
        return 500 if n % 10 == 7 else 200

    runner = runner_for(vc, send, target="Counter/add", keys=3)
    (step,) = await vc.drive(runner.run([10.0], duration_s=2.0, warmup_s=1.0))
    summary = step.summary()
    assert summary["sent"] == 20  # the 10 warmup requests are not in it
    assert summary["errors"] == {"total": 4, "by_status": {"500": 2},
                                 "transport": {"ConnectionResetError": 2}}
    assert summary["ok"] == 16
    assert sum(p["ok"] for p in runner.series.points) == 16
    assert runner.series.points[0]["t_s"] == 1.0  # the series starts after the warmup


# ------------------------------------------------------------------------------------ real run


async def test_run_open_loop_against_a_loopback_server_with_json_report_and_plot(tmp_path: Path) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.match_info["key"])
        await asyncio.sleep(0.005)
        return web.json_response(1)

    app = web.Application()
    app.router.add_post("/restate/call/Counter/{key}/add", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        cfg = BenchConfig(url=str(server.make_url("")), target="Counter/add", keys=4, rates_rps=(50.0, 100.0),
                          duration_s=1.0, headers={"content-type": "application/json"})
        report = await run_open_loop(cfg, progress=False)
    json.dumps(report)
    first, second = report["steps"]
    assert (first["sent"], second["sent"]) == (50, 100)
    assert first["ok"] == 50 and second["ok"] == 100 and report["ok"] == 150
    assert first["errors"]["total"] == 0 and second["errors"]["total"] == 0
    for step in (first, second):
        assert 5.0 <= step["latency_ms"]["p50"] < 1000.0
        assert step["latency_ms"]["max"] >= step["latency_ms"]["p99"] >= step["latency_ms"]["p50"]
    assert set(seen) == {"k0", "k1", "k2", "k3"}
    assert sum(p["ok"] for p in report["intervals"]) == 150
    text = format_open_loop(report)
    assert "rate 50/s  sent 50" in text and "rate 100/s  sent 100" in text and "p99.9" in text

    out = tmp_path / "open-loop.png"
    plot_open_loop(report, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
