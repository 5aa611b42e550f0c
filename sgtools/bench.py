"""`shardgate bench`: a bounded HTTP load generator for a shardgate (or Restate) ingress.

Closed loop (default): runs --connections concurrent request loops against one target for
--warmup + --duration seconds (or until --requests responses were measured), prints a progress
line per second on stderr and a summary on stdout: requests, req/s, latency p50/p90/p99/max and
errors by status / transport error. It measures how fast the server answers the clients it has.

Open loop (--rate R or --rate R1,R2,...): sends at a fixed offered rate for --duration seconds per
step, whatever the server does, with at most --max-in-flight requests outstanding. Latency is
measured from each request's scheduled send time (so queueing in the client or the server is
counted: no coordinated omission) into an HdrHistogram; a live progress bar goes to stderr, a
summary per step to stdout (--json: one JSON object with a per-second time series), and --plot
out.png draws latency percentiles and throughput over time (needs matplotlib, the dev extra).

Scoped load (--scope S, optionally --limit-keys N): every request goes to
/restate/scope/S/call|send/..., spread round robin over the limit keys lk0..lkN-1 (query
`limit-key`). With --metrics-url (a worker's /metrics, repeatable) the report adds how long the
invocations waited in their scope's queue during the run, from the workers' histogram
`shardgate_scope_queue_wait_seconds` (acceptance, or due time, to first start) read before and after.

Examples:
  shardgate bench --target Greeter/greet --duration 10
  shardgate bench --target Greeter/greet --scope tenant1 --limit-keys 10 --metrics-url http://127.0.0.1:9100/metrics
  shardgate bench --target Counter/add --keys 100 --body 1 --mode send --json
  shardgate bench --target Greeter/greet --rate 200,400,800 --duration 10 --plot open-loop.png

Loopback ingress URLs only, unless --allow-remote.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import ipaddress
import json
import logging
import math
import random
import re
import sys
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from shardgate.limits import component_error

logger = logging.getLogger(__name__)

MAX_SAMPLES = 5_000_000
"""Latency samples kept in memory; beyond this a uniform reservoir sample is kept."""
TRANSPORT_ERROR_BACKOFF_S = 0.05
"""Pause of one loop after a transport error, so a dead server does not become a busy loop."""
MAX_CONNECTIONS = 10_000
MAX_DURATION_S = 24 * 3600.0
MAX_RATE_RPS = 1_000_000.0
MAX_LIMIT_KEYS = 100_000
QUEUE_WAIT_METRIC = "shardgate_scope_queue_wait_seconds"
DEFAULT_MAX_IN_FLIGHT = 1000


class BenchError(ValueError):
    """A bench option cannot be used."""


# ----------------------------------------------------------------------------- pure statistics


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile `q` (0-100] of ascending `sorted_values`; None when empty."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    if not sorted_values:
        return None
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def latency_summary_ms(latencies_s: Sequence[float], max_latency_s: float | None = None) -> dict[str, Any]:
    """p50/p90/p99/max/mean/min of latencies given in seconds, reported in milliseconds."""
    values = sorted(latencies_s)
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None, "min": None}

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000.0, 3)

    return {
        "p50": ms(percentile(values, 50)),
        "p90": ms(percentile(values, 90)),
        "p99": ms(percentile(values, 99)),
        "max": ms(max(values[-1], max_latency_s or 0.0)),
        "mean": ms(sum(values) / len(values)),
        "min": ms(values[0]),
    }


def summarize(latencies_s: Sequence[float], statuses: Mapping[int, int], transport_errors: Mapping[str, int],
              elapsed_s: float, max_latency_s: float | None = None) -> dict[str, Any]:
    """The summary dict: counts, rates, latency of successful (2xx) responses, errors."""
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    by_status = {str(s): n for s, n in sorted(statuses.items()) if not 200 <= s < 300}
    transport = dict(sorted(transport_errors.items()))
    requests = sum(statuses.values()) + sum(transport.values())
    rate: Callable[[int], float] = (lambda n: round(n / elapsed_s, 1) if elapsed_s > 0 else 0.0)
    return {
        "requests": requests,
        "ok": ok,
        "elapsed_s": round(elapsed_s, 3),
        "rps": rate(requests),
        "ok_rps": rate(ok),
        "latency_ms": latency_summary_ms(latencies_s, max_latency_s),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "errors": {"total": requests - ok, "by_status": by_status, "transport": transport},
    }


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def format_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable multi-line text of a `summarize` dict (plus the run's settings, if present)."""
    lat = summary["latency_ms"]
    errors = summary["errors"]
    parts = [f"{s}: {n}" for s, n in errors["by_status"].items()]
    parts += [f"{name}: {n}" for name, n in errors["transport"].items()]
    lines = []
    if "url" in summary:
        lines.append(f"target    {summary['mode']} {summary['url']} ({summary['connections']} connections, "
                     f"{summary['duration_s']}s, warmup {summary['warmup_s']}s)")
    lines += [
        f"requests  {summary['requests']} in {summary['elapsed_s']}s, ok {summary['ok']}",
        f"req/s     {summary['rps']} (ok {summary['ok_rps']})",
        (f"latency   p50 {_fmt_ms(lat['p50'])}  p90 {_fmt_ms(lat['p90'])}  p99 {_fmt_ms(lat['p99'])}  "
         f"max {_fmt_ms(lat['max'])}  (mean {_fmt_ms(lat['mean'])})"),
        f"errors    {errors['total']}" + (f" ({', '.join(parts)})" if parts else ""),
    ]
    wait = summary.get("queue_wait")
    if wait is not None:
        lines.append(f"queued    {wait['started']} started; wait p50 {_fmt_ms(wait['p50_ms'])}  "
                     f"p90 {_fmt_ms(wait['p90_ms'])}  p99 {_fmt_ms(wait['p99_ms'])}  (mean {_fmt_ms(wait['mean_ms'])})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ pure requests


def is_loopback_url(url: str) -> bool:
    """True if the URL's host is localhost or a loopback IP address (no DNS lookups)."""
    host = urlsplit(url).hostname
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_target(target: str) -> tuple[str, str | None, str]:
    """`Service/handler` or `Service/key/handler` -> (service, fixed key or None, handler)."""
    parts = target.strip("/").split("/")
    if len(parts) == 2 and all(parts):
        return parts[0], None, parts[1]
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise BenchError(f"--target must be Service/handler or Service/key/handler, got {target!r}")


def invocation_path(service: str, handler: str, key: str | None, mode: str, scope: str | None = None) -> str:
    """The ingress path of a call or send: /restate[/scope/S]/call|send/Svc[/key]/handler."""
    segments = [service] + ([key] if key is not None else []) + [handler]
    prefix = "/restate" if scope is None else f"/restate/scope/{quote(scope, safe='')}"
    return f"{prefix}/{'send' if mode == 'send' else 'call'}/" + "/".join(quote(s, safe="") for s in segments)


def parse_header(value: str) -> tuple[str, str]:
    """`Name: value` (or `Name:value`) -> (name, value)."""
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        raise BenchError(f"--header must look like Name:value, got {value!r}")
    return name.strip(), val.strip()


def parse_body(literal: str) -> bytes:
    """Validate a JSON literal and return its compact UTF-8 encoding."""
    try:
        return json.dumps(json.loads(literal), separators=(",", ":")).encode()
    except ValueError:
        raise BenchError(f"--body must be a JSON literal, got {literal!r}") from None


# ------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BenchConfig:
    """One bench run."""

    url: str = "http://127.0.0.1:8080"
    target: str = "Greeter/greet"
    mode: str = "call"
    connections: int = 32
    duration_s: float = 15.0
    body: bytes = b'"bench"'
    keys: int = 0
    key_prefix: str = "k"
    key_order: str = "round-robin"
    warmup_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    request_timeout_s: float = 30.0
    max_requests: int = 0
    allow_remote: bool = False
    rates_rps: tuple[float, ...] = ()
    """Open loop: the offered rate of each step (each lasts `duration_s`); empty = closed loop."""
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    """Open loop: requests outstanding at once; a request due beyond it waits (and that wait counts)."""
    scope: str | None = None
    """Scoped load: every request under `/restate/scope/<scope>/...`."""
    limit_keys: int = 0
    """Scoped load: spread requests round robin over limit keys `<limit_key_prefix>0..N-1`."""
    limit_key_prefix: str = "lk"
    metrics_urls: tuple[str, ...] = ()
    """Workers' /metrics URLs: the report adds the queue wait the run caused (`queue_wait`)."""

    @property
    def open_loop(self) -> bool:
        return bool(self.rates_rps)

    def validate(self) -> None:
        """Raise `BenchError` for unusable settings."""
        if self.open_loop:
            self._validate_open_loop()
        if not self.allow_remote and not is_loopback_url(self.url):
            raise BenchError(f"refusing non-loopback URL {self.url!r}; pass --allow-remote to bench it")
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise BenchError(f"--connections must be in 1..{MAX_CONNECTIONS}")
        if not 0 < self.duration_s <= MAX_DURATION_S or not 0 <= self.warmup_s <= MAX_DURATION_S:
            raise BenchError(f"--duration must be in (0, {MAX_DURATION_S:.0f}] and --warmup >= 0")
        if self.keys < 0 or self.max_requests < 0 or self.request_timeout_s <= 0:
            raise BenchError("--keys and --requests must be >= 0, --timeout > 0")
        _, fixed_key, _ = parse_target(self.target)
        if fixed_key is not None and self.keys:
            raise BenchError("--keys cannot be combined with a key in --target")
        self._validate_scope()

    def _validate_scope(self) -> None:
        if self.scope is not None and component_error(self.scope) is not None:
            raise BenchError(f"--scope: {component_error(self.scope)}")
        if not 0 <= self.limit_keys <= MAX_LIMIT_KEYS:
            raise BenchError(f"--limit-keys must be in 0..{MAX_LIMIT_KEYS}")
        if self.limit_keys and self.scope is None:
            raise BenchError("--limit-keys needs --scope (a limit key requires a scope)")
        if self.limit_keys and component_error(f"{self.limit_key_prefix}{self.limit_keys - 1}") is not None:
            raise BenchError(f"--limit-key-prefix: {component_error(self.limit_key_prefix + '0')}")
        if not self.allow_remote and not all(is_loopback_url(u) for u in self.metrics_urls):
            raise BenchError("refusing a non-loopback --metrics-url; pass --allow-remote")

    def _validate_open_loop(self) -> None:
        if not all(0 < r <= MAX_RATE_RPS for r in self.rates_rps):
            raise BenchError(f"every --rate must be in (0, {MAX_RATE_RPS:.0f}] requests/s")
        if not 1 <= self.max_in_flight <= MAX_CONNECTIONS:
            raise BenchError(f"--max-in-flight must be in 1..{MAX_CONNECTIONS}")
        if self.max_requests:
            raise BenchError("--requests is for the closed loop; an open-loop step is bounded by --duration")


class RequestPlan:
    """Produces the URL of each request: fixed, or spread over `keys` keys."""

    def __init__(self, cfg: BenchConfig, rng: random.Random | None = None) -> None:
        self.base = cfg.url.rstrip("/")
        self.service, self.fixed_key, self.handler = parse_target(cfg.target)
        self.cfg = cfg
        self.rng = rng or random.Random()
        self._next = 0
        self._next_limit_key = 0

    def next_url(self) -> str:
        key = self.fixed_key
        if self.cfg.keys:
            n = self.rng.randrange(self.cfg.keys) if self.cfg.key_order == "random" else self._next
            self._next = (self._next + 1) % self.cfg.keys
            key = f"{self.cfg.key_prefix}{n}"
        url = self.base + invocation_path(self.service, self.handler, key, self.cfg.mode, self.cfg.scope)
        if self.cfg.limit_keys:
            url += f"?limit-key={quote(self.cfg.limit_key_prefix)}{self._next_limit_key}"
            self._next_limit_key = (self._next_limit_key + 1) % self.cfg.limit_keys
        return url


def display_url(cfg: BenchConfig) -> str:
    """The target URL for reports; keyed runs show the key range, e.g. /Counter/k{0..9}/add."""
    plan = RequestPlan(cfg)
    lks = f"?limit-key={cfg.limit_key_prefix}{{0..{cfg.limit_keys - 1}}}" if cfg.limit_keys else ""
    if not cfg.keys:
        return plan.next_url().partition("?")[0] + lks
    url = plan.base + invocation_path(plan.service, plan.handler, "KEY", cfg.mode, cfg.scope)
    return url.replace("/KEY/", f"/{quote(cfg.key_prefix, safe='')}{{0..{cfg.keys - 1}}}/", 1) + lks


# ------------------------------------------------------------------ scoped load: queue wait


@dataclass(frozen=True)
class HistogramSnapshot:
    """A Prometheus histogram summed over workers: cumulative counts per upper bound, sum, count."""

    buckets: tuple[tuple[float, float], ...] = ()  # (le, cumulative count), ascending le, +Inf last
    total_s: float = 0.0
    count: float = 0.0

    def minus(self, before: HistogramSnapshot) -> HistogramSnapshot:
        """What was observed between `before` and this snapshot."""
        old = dict(before.buckets)
        return HistogramSnapshot(tuple((le, n - old.get(le, 0.0)) for le, n in self.buckets),
                                 self.total_s - before.total_s, self.count - before.count)


_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)')


def parse_histogram(texts: Sequence[str], name: str) -> HistogramSnapshot:
    """Histogram `name` (no labels besides `le`) from Prometheus text expositions, summed."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for text in texts:
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m is None:
                continue
            value = float(m["value"])
            if m["name"] == f"{name}_bucket":
                le = re.search(r'le="([^"]+)"', m["labels"] or "")
                if le is not None:
                    bound = math.inf if le[1] == "+Inf" else float(le[1])
                    buckets[bound] = buckets.get(bound, 0.0) + value
            elif m["name"] == f"{name}_sum":
                total += value
            elif m["name"] == f"{name}_count":
                count += value
    return HistogramSnapshot(tuple(sorted(buckets.items())), total, count)


def histogram_quantile(q: float, h: HistogramSnapshot) -> float | None:
    """The q-quantile (0..1) of a histogram, interpolated linearly inside its bucket (as
    Prometheus's histogram_quantile); the last finite bound when it falls in +Inf; None if empty."""
    if h.count <= 0 or not h.buckets:
        return None
    rank = q * h.count
    lower_bound, lower_count = 0.0, 0.0
    for le, n in h.buckets:
        if n >= rank:
            if math.isinf(le):
                return lower_bound
            width = n - lower_count
            return lower_bound + (le - lower_bound) * ((rank - lower_count) / width if width > 0 else 1.0)
        lower_bound, lower_count = le, n
    return lower_bound


def queue_wait_summary(h: HistogramSnapshot) -> dict[str, Any]:
    """`queue_wait` of a report: invocations started, mean and p50/p90/p99 estimates in ms."""
    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000.0, 3)

    return {"started": int(h.count), "mean_ms": ms(h.total_s / h.count) if h.count > 0 else None,
            "p50_ms": ms(histogram_quantile(0.5, h)), "p90_ms": ms(histogram_quantile(0.9, h)),
            "p99_ms": ms(histogram_quantile(0.99, h))}


async def scrape_queue_wait(session: aiohttp.ClientSession, urls: Sequence[str]) -> HistogramSnapshot:
    """The workers' queue-wait histogram now (an unreachable worker counts as empty)."""
    texts = []
    for url in urls:
        try:
            async with session.get(url) as resp:
                texts.append(await resp.text())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("cannot read %s: %s", url, exc)
    return parse_histogram(texts, QUEUE_WAIT_METRIC)


# ------------------------------------------------------------------------------------ runtime


class Recorder:
    """Counts outcomes of requests started inside the measurement window; bounded memory."""

    def __init__(self, max_samples: int = MAX_SAMPLES, rng: random.Random | None = None) -> None:
        self.measure_from = math.inf
        self.latencies = array("d")
        self.seen_ok = 0
        self.max_latency = 0.0
        self.statuses: Counter[int] = Counter()
        self.transport: Counter[str] = Counter()
        self.max_samples = max_samples
        self.rng = rng or random.Random()

    @property
    def count(self) -> int:
        return sum(self.statuses.values()) + sum(self.transport.values())

    def response(self, status: int, started: float, latency: float) -> None:
        if started < self.measure_from:
            return
        self.statuses[status] += 1
        if 200 <= status < 300:
            self._sample(latency)

    def error(self, name: str, started: float) -> None:
        if started >= self.measure_from:
            self.transport[name] += 1

    def _sample(self, latency: float) -> None:
        self.seen_ok += 1
        self.max_latency = max(self.max_latency, latency)
        if len(self.latencies) < self.max_samples:
            self.latencies.append(latency)
            return
        slot = self.rng.randrange(self.seen_ok)
        if slot < self.max_samples:
            self.latencies[slot] = latency


async def _one_request(session: aiohttp.ClientSession, url: str, cfg: BenchConfig, rec: Recorder) -> bool:
    """Send one request and record it; False after a transport error."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with session.post(url, data=cfg.body, headers=cfg.headers) as resp:
            await resp.read()
            status = resp.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        rec.error(type(exc).__name__, started)
        return False
    rec.response(status, started, loop.time() - started)
    return True


async def connection_loop(session: aiohttp.ClientSession, plan: RequestPlan, rec: Recorder,
                          done: asyncio.Event) -> None:
    """Issue requests back to back until `done` is set (or the loop is cancelled)."""
    cfg = plan.cfg
    while not done.is_set():
        if not await _one_request(session, plan.next_url(), cfg, rec):
            await asyncio.sleep(TRANSPORT_ERROR_BACKOFF_S)
        if cfg.max_requests and rec.count >= cfg.max_requests:
            done.set()


async def progress_loop(rec: Recorder, start: float, cfg: BenchConfig) -> None:
    """One stderr line per second: phase, elapsed, measured requests, req/s so far and errors."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(1.0)
        now = loop.time()
        if now < rec.measure_from:
            print(f"bench warmup {now - start:5.1f}s", file=sys.stderr, flush=True)
            continue
        elapsed = now - rec.measure_from
        count = rec.count
        errors = count - sum(n for s, n in rec.statuses.items() if 200 <= s < 300)
        rps = count / elapsed if elapsed > 0 else 0.0
        print(f"bench {elapsed:6.1f}s {count:9d} req {rps:9.1f} req/s errors {errors}",
              file=sys.stderr, flush=True)


async def _drive(session: aiohttp.ClientSession, cfg: BenchConfig, rec: Recorder) -> float:
    """Run warmup + measurement; return the measured elapsed seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    rec.measure_from = start + cfg.warmup_s
    end = rec.measure_from + cfg.duration_s
    done = asyncio.Event()
    plan = RequestPlan(cfg)
    tasks = [asyncio.create_task(connection_loop(session, plan, rec, done)) for _ in range(cfg.connections)]
    tasks.append(asyncio.create_task(progress_loop(rec, start, cfg)))
    try:
        await asyncio.wait_for(done.wait(), timeout=end - loop.time())
    except TimeoutError:
        pass
    finally:
        stopped = min(loop.time(), end)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return max(stopped - rec.measure_from, 0.0)


async def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark and return the summary dict (settings included)."""
    cfg.validate()
    rec = Recorder()
    connector = aiohttp.TCPConnector(limit=cfg.connections)
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        before = await scrape_queue_wait(session, cfg.metrics_urls) if cfg.metrics_urls else None
        elapsed = await _drive(session, cfg, rec)
        waited = (await scrape_queue_wait(session, cfg.metrics_urls)).minus(before) if before else None
    summary = summarize(rec.latencies, rec.statuses, rec.transport, elapsed,
                        rec.max_latency if rec.seen_ok else None)
    settings = {"url": display_url(cfg), "target": cfg.target, "mode": cfg.mode, "connections": cfg.connections,
                "duration_s": cfg.duration_s, "warmup_s": cfg.warmup_s, "keys": cfg.keys}
    if cfg.scope is not None:
        settings.update(scope=cfg.scope, limit_keys=cfg.limit_keys)
    if waited is not None:
        summary["queue_wait"] = queue_wait_summary(waited)
    return {**settings, **summary}


# --------------------------------------------------------------------------- open loop: statistics

HISTOGRAM_MIN_US = 1
HISTOGRAM_MAX_US = 3_600_000_000
"""Latencies are recorded in microseconds from 1 us to one hour (larger ones are clamped)."""
HISTOGRAM_DIGITS = 3
REPORT_PERCENTILES = (50.0, 90.0, 99.0, 99.9)
INTERVAL_S = 1.0
"""Width of one point of the open-loop time series (progress line, --json "intervals", --plot)."""


def parse_rates(value: str) -> tuple[float, ...]:
    """`200` or `200,400,800` -> the offered rate of each step in requests/s; raises BenchError."""
    try:
        rates = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise BenchError(f"--rate must be a number or a comma-separated list of numbers, got {value!r}") from None
    if not rates:
        raise BenchError("--rate needs at least one rate")
    return rates


def step_request_count(rate_rps: float, duration_s: float) -> int:
    """Requests one step schedules: request i is due at i / rate for every i with i / rate < duration."""
    return max(math.ceil(rate_rps * duration_s - 1e-9), 0)


def scheduled_time_s(start_s: float, rate_rps: float, index: int) -> float:
    """When request `index` of a step that starts at `start_s` is due (a fixed schedule, not a delay)."""
    return start_s + index / rate_rps


def new_histogram() -> Any:
    """An HdrHistogram of microseconds, 1 us .. 1 h, 3 significant digits."""
    return HdrHistogram(HISTOGRAM_MIN_US, HISTOGRAM_MAX_US, HISTOGRAM_DIGITS)


def record_latency(histogram: Any, latency_s: float) -> None:
    """Record one latency given in seconds (clamped to the histogram's range)."""
    histogram.record_value(min(max(round(latency_s * 1e6), HISTOGRAM_MIN_US), HISTOGRAM_MAX_US))


def histogram_summary_ms(histogram: Any) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max/mean/min of a microsecond histogram, in milliseconds (None when empty)."""
    names = [f"p{q:g}" for q in REPORT_PERCENTILES] + ["max", "mean", "min"]
    if histogram.get_total_count() == 0:
        return dict.fromkeys(names)
    values_us = [histogram.get_value_at_percentile(q) for q in REPORT_PERCENTILES]
    values_us += [histogram.get_max_value(), histogram.get_mean_value(), histogram.get_min_value()]
    return {name: round(float(us) / 1000.0, 3) for name, us in zip(names, values_us, strict=True)}


class StepStats:
    """Outcomes of the requests one open-loop step scheduled, whenever they complete.

    Latency is taken from each request's scheduled send time, so a request that waited (for a
    free slot, or behind a stalled server) counts that wait: no coordinated omission.
    """

    def __init__(self, rate_rps: float, duration_s: float, start_s: float, *, measured: bool = True) -> None:
        self.rate_rps = rate_rps
        self.duration_s = duration_s
        self.start_s = start_s
        self.measured = measured
        self.histogram = new_histogram()
        self.statuses: Counter[int] = Counter()
        self.transport: Counter[str] = Counter()
        self.sent = 0
        self.max_send_lag_s = 0.0
        self.last_done_s = start_s

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def done(self) -> int:
        return sum(self.statuses.values()) + sum(self.transport.values())

    def on_sent(self, due_s: float, now_s: float) -> None:
        """A request due at `due_s` left at `now_s` (later when the sender fell behind)."""
        self.sent += 1
        self.max_send_lag_s = max(self.max_send_lag_s, now_s - due_s)

    def on_response(self, status: int, due_s: float, now_s: float) -> None:
        self.statuses[status] += 1
        self.last_done_s = max(self.last_done_s, now_s)
        if 200 <= status < 300:
            record_latency(self.histogram, now_s - due_s)

    def on_error(self, name: str, now_s: float) -> None:
        self.transport[name] += 1
        self.last_done_s = max(self.last_done_s, now_s)

    def summary(self) -> dict[str, Any]:
        """The step's report: counts, offered/sent/achieved rates, latency, errors."""
        ok = self.ok
        window_s = max(self.duration_s, self.last_done_s - self.start_s)
        by_status = {str(s): n for s, n in sorted(self.statuses.items()) if not 200 <= s < 300}
        transport = dict(sorted(self.transport.items()))
        return {
            "rate_rps": self.rate_rps,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "requests": self.done,
            "ok": ok,
            "sent_rps": round(self.sent / self.duration_s, 1),
            "ok_rps": round(ok / window_s, 1) if window_s > 0 else 0.0,
            "latency_ms": histogram_summary_ms(self.histogram),
            "max_send_lag_ms": round(self.max_send_lag_s * 1000.0, 3),
            "statuses": {str(s): n for s, n in sorted(self.statuses.items())},
            "errors": {"total": self.done - ok, "by_status": by_status, "transport": transport},
        }


class TimeSeries:
    """Completions and latency percentiles per `interval_s` over the measured run (the plot's data).

    Time is whatever the caller passes (monotonic seconds); an interval closes as soon as a later
    time is seen, so idle intervals appear too (with zero completions and no percentiles).
    """

    def __init__(self, start_s: float, interval_s: float = INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.start_s = start_s
        self.interval_s = interval_s
        self.points: list[dict[str, Any]] = []
        self._end_s = start_s + interval_s
        self._histogram = new_histogram()
        self._sent = self._ok = self._errors = 0

    @property
    def last(self) -> dict[str, Any] | None:
        """The most recently closed interval."""
        return self.points[-1] if self.points else None

    def roll(self, now_s: float) -> None:
        """Close every interval that ended at or before `now_s`."""
        while now_s >= self._end_s:
            self._close(self._end_s, self.interval_s)

    def on_sent(self, now_s: float) -> None:
        self.roll(now_s)
        self._sent += 1

    def on_done(self, now_s: float, latency_s: float | None) -> None:
        """A request completed at `now_s`: ok with its latency, or an error (None)."""
        self.roll(now_s)
        if latency_s is None:
            self._errors += 1
            return
        self._ok += 1
        record_latency(self._histogram, latency_s)

    def finish(self, now_s: float) -> None:
        """Close the intervals up to `now_s`, and the partial last one if anything happened in it."""
        self.roll(now_s)
        width_s = now_s - (self._end_s - self.interval_s)
        if (self._sent or self._ok or self._errors) and width_s > 0:
            self._close(now_s, width_s)

    def _close(self, end_s: float, width_s: float) -> None:
        lat = histogram_summary_ms(self._histogram)
        self.points.append({
            "t_s": round(end_s - self.start_s, 3),
            "sent": self._sent,
            "ok": self._ok,
            "errors": self._errors,
            "ok_rps": round(self._ok / width_s, 1),
            "latency_ms": {k: lat[k] for k in ("p50", "p90", "p99", "max")},
        })
        self._histogram.reset()
        self._sent = self._ok = self._errors = 0
        self._end_s = end_s + self.interval_s


# ------------------------------------------------------------------------------ open loop: runtime

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Send = Callable[[str], Awaitable[int]]
"""Sends one request to the URL and returns its HTTP status; raises one of TRANSPORT_ERRORS."""
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class OpenLoopRunner:
    """Sends requests on a fixed schedule per rate step, whatever the server answers.

    The clock and sleep are injected (the event loop's in production, a virtual clock in tests).
    At most `max_in_flight` requests are outstanding; a request due while all slots are taken
    leaves when one frees up, and its latency still counts from when it was due.
    """

    def __init__(self, send: Send, plan: RequestPlan, *, max_in_flight: int, clock: Clock, sleep: Sleep) -> None:
        self.send = send
        self.plan = plan
        self.clock = clock
        self.sleep = sleep
        self.steps: list[StepStats] = []
        self.current: StepStats | None = None
        self.series = TimeSeries(clock())
        self.in_flight = 0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, rates_rps: Sequence[float], duration_s: float, warmup_s: float = 0.0) -> list[StepStats]:
        """Warm up at the first rate (unmeasured), run every step, then wait for the last answers."""
        start_s = self.clock()
        if warmup_s > 0:
            await self._step(StepStats(rates_rps[0], warmup_s, start_s, measured=False))
            start_s += warmup_s
        self.series = TimeSeries(start_s)
        for rate_rps in rates_rps:
            step = StepStats(rate_rps, duration_s, start_s)
            self.steps.append(step)
            self.current = step
            await self._step(step)
            start_s += duration_s
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.series.finish(self.clock())
        return self.steps

    async def _step(self, step: StepStats) -> None:
        for index in range(step_request_count(step.rate_rps, step.duration_s)):
            due_s = scheduled_time_s(step.start_s, step.rate_rps, index)
            await self.sleep(max(due_s - self.clock(), 0.0))
            await self._slots.acquire()
            self._launch(step, due_s)
        rest_s = step.start_s + step.duration_s - self.clock()
        if rest_s > 0:
            await self.sleep(rest_s)

    def _launch(self, step: StepStats, due_s: float) -> None:
        now_s = self.clock()
        step.on_sent(due_s, now_s)
        if step.measured:
            self.series.on_sent(now_s)
        self.in_flight += 1
        task = asyncio.create_task(self._one(step, due_s, self.plan.next_url()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, step: StepStats, due_s: float, url: str) -> None:
        try:
            status = await self.send(url)
        except TRANSPORT_ERRORS as exc:
            now_s = self.clock()
            step.on_error(type(exc).__name__, now_s)
            if step.measured:
                self.series.on_done(now_s, None)
        else:
            now_s = self.clock()
            step.on_response(status, due_s, now_s)
            if step.measured:
                self.series.on_done(now_s, now_s - due_s if 200 <= status < 300 else None)
        finally:
            self.in_flight -= 1
            self._slots.release()


def progress_bar(fraction: float, width: int = 20) -> str:
    """`[#####---------------]` for a fraction in [0, 1]."""
    filled = round(min(max(fraction, 0.0), 1.0) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def format_progress(runner: OpenLoopRunner, now_s: float, steps: int) -> str:
    """The live progress line: step, bar, counts, in flight and the last second's rate and p99."""
    step = runner.current
    if step is None:
        return f"bench warmup {progress_bar(0.0)}"
    index = runner.steps.index(step) + 1
    elapsed_s = now_s - step.start_s
    last = runner.series.last
    p99 = last["latency_ms"]["p99"] if last else None
    rate = f"{last['ok_rps']:.0f} ok/s" if last else "- ok/s"
    return (f"bench step {index}/{steps} "
            f"{step.rate_rps:g}/s {progress_bar(elapsed_s / step.duration_s)} {min(elapsed_s, step.duration_s):5.1f}s "
            f"sent {step.sent} ok {step.ok} errors {step.done - step.ok} in-flight {runner.in_flight} "
            f"last 1s {rate} p99 {_fmt_ms(p99)}")


async def progress_ticker(runner: OpenLoopRunner, steps: int) -> None:
    """Redraw the progress line on stderr once per interval (in place on a terminal)."""
    tty = sys.stderr.isatty()
    while True:
        await runner.sleep(INTERVAL_S)
        now_s = runner.clock()
        runner.series.roll(now_s)
        line = format_progress(runner, now_s, steps)
        print(("\r" + line + "\x1b[K") if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


def http_sender(session: aiohttp.ClientSession, cfg: BenchConfig) -> Send:
    """POST the configured body to a URL and return the status (the body is read and dropped)."""
    async def send(url: str) -> int:
        async with session.post(url, data=cfg.body, headers=cfg.headers) as resp:
            await resp.read()
            return resp.status

    return send


def open_loop_report(cfg: BenchConfig, runner: OpenLoopRunner) -> dict[str, Any]:
    """Settings, one summary per step, totals and the per-interval time series."""
    steps = [step.summary() for step in runner.steps]
    return {
        "url": display_url(cfg), "target": cfg.target, "mode": cfg.mode, "loop": "open",
        "rates_rps": list(cfg.rates_rps), "duration_s": cfg.duration_s, "warmup_s": cfg.warmup_s,
        "max_in_flight": cfg.max_in_flight, "keys": cfg.keys,
        **({"scope": cfg.scope, "limit_keys": cfg.limit_keys} if cfg.scope is not None else {}),
        "requests": sum(s["requests"] for s in steps), "ok": sum(s["ok"] for s in steps),
        "steps": steps, "interval_s": runner.series.interval_s, "intervals": runner.series.points,
    }


async def run_open_loop(cfg: BenchConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the open-loop steps of `cfg` against its URL and return the report (see open_loop_report)."""
    cfg.validate()
    if not cfg.open_loop:
        raise BenchError("run_open_loop needs at least one rate")
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=cfg.max_in_flight)
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        runner = OpenLoopRunner(http_sender(session, cfg), RequestPlan(cfg), max_in_flight=cfg.max_in_flight,
                                clock=loop.time, sleep=asyncio.sleep)
        before = await scrape_queue_wait(session, cfg.metrics_urls) if cfg.metrics_urls else None
        ticker = asyncio.create_task(progress_ticker(runner, len(cfg.rates_rps))) if progress else None
        try:
            await runner.run(cfg.rates_rps, cfg.duration_s, cfg.warmup_s)
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
                if sys.stderr.isatty():
                    print(file=sys.stderr)
        waited = (await scrape_queue_wait(session, cfg.metrics_urls)).minus(before) if before else None
    report = open_loop_report(cfg, runner)
    if waited is not None:
        report["queue_wait"] = queue_wait_summary(waited)
    return report


def format_open_loop(report: Mapping[str, Any]) -> str:
    """Human-readable text of an open-loop report: the settings, then one line per step."""
    lines = [(f"target    open-loop {report['mode']} {report['url']} ({report['duration_s']}s per step, "
              f"warmup {report['warmup_s']}s, at most {report['max_in_flight']} in flight)")]
    for step in report["steps"]:
        lat = step["latency_ms"]
        errors = step["errors"]
        parts = [f"{s}: {n}" for s, n in errors["by_status"].items()]
        parts += [f"{name}: {n}" for name, n in errors["transport"].items()]
        lines.append(
            f"rate {step['rate_rps']:g}/s  sent {step['sent']} ({step['sent_rps']}/s)  ok {step['ok']} "
            f"({step['ok_rps']}/s)  p50 {_fmt_ms(lat['p50'])}  p90 {_fmt_ms(lat['p90'])}  "
            f"p99 {_fmt_ms(lat['p99'])}  p99.9 {_fmt_ms(lat['p99.9'])}  max {_fmt_ms(lat['max'])}  "
            f"errors {errors['total']}" + (f" ({', '.join(parts)})" if parts else "")
            + f"  send lag max {_fmt_ms(step['max_send_lag_ms'])}")
    wait = report.get("queue_wait")
    if wait is not None:
        lines.append(f"queued    {wait['started']} started; wait p50 {_fmt_ms(wait['p50_ms'])}  "
                     f"p90 {_fmt_ms(wait['p90_ms'])}  p99 {_fmt_ms(wait['p99_ms'])}  (mean {_fmt_ms(wait['mean_ms'])})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- open loop: plot


def require_matplotlib() -> None:
    """Raise BenchError unless matplotlib can be imported (it is only in the dev extra)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise BenchError("--plot needs matplotlib: pip install matplotlib (or the dev extra: pip install -e '.[dev]')")


def plot_open_loop(report: Mapping[str, Any], path: Path) -> None:
    """Draw latency percentiles (top, log scale) and throughput against the offered rate (bottom) over
    time into a PNG at `path`; raises BenchError without matplotlib."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["intervals"]
    times = [p["t_s"] for p in points]
    fig, (ax_lat, ax_tp) = plt.subplots(2, 1, sharex=True, figsize=(10, 7))
    for key in ("p50", "p90", "p99", "max"):
        values = [math.nan if p["latency_ms"][key] is None else p["latency_ms"][key] for p in points]
        ax_lat.plot(times, values, marker=".", label=key)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency from scheduled send (ms)")
    ax_lat.legend(loc="upper left")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_tp.plot(times, [p["ok_rps"] for p in points], marker=".", label="ok/s")
    ax_tp.plot(times, [p["errors"] / report["interval_s"] for p in points], marker=".", label="errors/s")
    edges = [i * report["duration_s"] for i in range(len(report["steps"]) + 1)]
    offered = [s["rate_rps"] for s in report["steps"]]
    ax_tp.stairs(offered, edges, label="offered", linestyle="--")
    for edge in edges[1:-1]:
        ax_lat.axvline(edge, color="grey", alpha=0.4)
        ax_tp.axvline(edge, color="grey", alpha=0.4)
    ax_tp.set_xlabel("time (s)")
    ax_tp.set_ylabel("requests/s")
    ax_tp.legend(loc="upper left")
    ax_tp.grid(True, alpha=0.3)
    fig.suptitle(f"shardgate bench, open loop: {report['mode']} {report['url']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `shardgate bench` options."""
    add = parser.add_argument
    add("--url", default="http://127.0.0.1:8080", help="ingress base URL (default http://127.0.0.1:8080)")
    add("--target", default="Greeter/greet", help="Service/handler or Service/key/handler")
    add("--mode", choices=("call", "send"), default="call", help="call (wait for result) or send (202)")
    add("--connections", type=int, default=32, help="closed loop: concurrent request loops (default 32)")
    add("--rate", default=None, metavar="R[,R...]",
        help="open loop: offered requests/s, or a comma list of ramp steps (each lasts --duration)")
    add("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
        help=f"open loop: outstanding requests at most (default {DEFAULT_MAX_IN_FLIGHT})")
    add("--plot", type=Path, default=None, metavar="OUT.png",
        help="open loop: draw latency percentiles and throughput over time (needs matplotlib)")
    add("--duration", type=float, default=15.0, help="measured seconds (per step with --rate; default 15)")
    add("--warmup", type=float, default=0.0, help="unmeasured seconds before (default 0)")
    add("--requests", type=int, default=0, help="stop after this many measured requests (0 = no limit)")
    add("--body", default='"bench"', help='JSON literal sent as the request body (default "bench")')
    add("--keys", type=int, default=0, help="spread keyed targets over keys <prefix>0..<prefix>N-1")
    add("--key-prefix", default="k", help="key prefix (default k)")
    add("--key-order", choices=("round-robin", "random"), default="round-robin")
    add("--header", action="append", default=[], metavar="K:V", help="extra request header (repeatable)")
    add("--timeout", type=float, default=30.0, help="per-request timeout in seconds (default 30)")
    add("--json", action="store_true", help="print one JSON object instead of text")
    add("--allow-remote", action="store_true", help="allow a non-loopback --url")
    add("--scope", default=None, help="scoped load: send every request under /restate/scope/SCOPE/...")
    add("--limit-keys", type=int, default=0, metavar="N",
        help="scoped load: spread requests round robin over limit keys <prefix>0..<prefix>N-1")
    add("--limit-key-prefix", default="lk", help="limit key prefix (default lk)")
    add("--metrics-url", action="append", default=[], metavar="URL",
        help="a worker's /metrics (repeatable): report the queue wait of scoped invocations during the run")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Build and validate a BenchConfig from parsed arguments."""
    headers = {"content-type": "application/json"}
    headers.update((name.lower(), value) for name, value in map(parse_header, args.header))
    cfg = BenchConfig(
        url=args.url, target=args.target, mode=args.mode, connections=args.connections,
        duration_s=args.duration, body=parse_body(args.body), keys=args.keys, key_prefix=args.key_prefix,
        key_order=args.key_order, warmup_s=args.warmup, headers=headers, request_timeout_s=args.timeout,
        max_requests=args.requests, allow_remote=args.allow_remote,
        rates_rps=parse_rates(args.rate) if args.rate is not None else (), max_in_flight=args.max_in_flight,
        scope=args.scope, limit_keys=args.limit_keys, limit_key_prefix=args.limit_key_prefix,
        metrics_urls=tuple(args.metrics_url),
    )
    cfg.validate()
    if args.plot is not None:
        if not cfg.open_loop:
            raise BenchError("--plot draws an open-loop run: give --rate")
        require_matplotlib()
    return cfg


def _main_open_loop(cfg: BenchConfig, args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(run_open_loop(cfg))
    except KeyboardInterrupt:
        return 130
    print(json.dumps(report) if args.json else format_open_loop(report), flush=True)
    if args.plot is not None:
        plot_open_loop(report, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0 if report["ok"] else 1


def main(args: argparse.Namespace) -> int:
    """Entry point of `shardgate bench` (closed or open loop): 0 if any request succeeded, 1 if none
    did, 2 on bad options."""
    try:
        cfg = config_from_args(args)
    except BenchError as exc:
        print(f"shardgate bench: {exc}", file=sys.stderr)
        return 2
    if cfg.open_loop:
        return _main_open_loop(cfg, args)
    try:
        summary = asyncio.run(run_bench(cfg))
    except KeyboardInterrupt:
        return 130
    print(json.dumps(summary) if args.json else format_summary(summary), flush=True)
    return 0 if summary["ok"] else 1
