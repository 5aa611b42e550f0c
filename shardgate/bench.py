"""`shardgate bench`: a bounded HTTP load generator for a shardgate (or Restate) ingress.

Runs --connections concurrent request loops against one target for --warmup + --duration seconds
(or until --requests responses were measured), prints a progress line per second on stderr and a
summary on stdout: requests, req/s, latency p50/p90/p99/max and errors by status / transport error.

Examples:
  shardgate bench --target Greeter/greet --duration 10
  shardgate bench --target Counter/add --keys 100 --body 1 --mode send --json

Loopback ingress URLs only, unless --allow-remote.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import math
import random
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

logger = logging.getLogger(__name__)

MAX_SAMPLES = 5_000_000
"""Latency samples kept in memory; beyond this a uniform reservoir sample is kept."""
TRANSPORT_ERROR_BACKOFF_S = 0.05
"""Pause of one loop after a transport error, so a dead server does not become a busy loop."""
MAX_CONNECTIONS = 10_000
MAX_DURATION_S = 24 * 3600.0


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


def invocation_path(service: str, handler: str, key: str | None, mode: str) -> str:
    """The ingress path of a call or send: /restate/call|send/Svc[/key]/handler."""
    segments = [service] + ([key] if key is not None else []) + [handler]
    return f"/restate/{'send' if mode == 'send' else 'call'}/" + "/".join(quote(s, safe="") for s in segments)


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

    def validate(self) -> None:
        """Raise `BenchError` for unusable settings."""
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


class RequestPlan:
    """Produces the URL of each request: fixed, or spread over `keys` keys."""

    def __init__(self, cfg: BenchConfig, rng: random.Random | None = None) -> None:
        self.base = cfg.url.rstrip("/")
        self.service, self.fixed_key, self.handler = parse_target(cfg.target)
        self.cfg = cfg
        self.rng = rng or random.Random()
        self._next = 0

    def next_url(self) -> str:
        key = self.fixed_key
        if self.cfg.keys:
            n = self.rng.randrange(self.cfg.keys) if self.cfg.key_order == "random" else self._next
            self._next = (self._next + 1) % self.cfg.keys
            key = f"{self.cfg.key_prefix}{n}"
        return self.base + invocation_path(self.service, self.handler, key, self.cfg.mode)


def display_url(cfg: BenchConfig) -> str:
    """The target URL for reports; keyed runs show the key range, e.g. /Counter/k{0..9}/add."""
    plan = RequestPlan(cfg)
    if not cfg.keys:
        return plan.next_url()
    url = plan.base + invocation_path(plan.service, plan.handler, "KEY", cfg.mode)
    return url.replace("/KEY/", f"/{quote(cfg.key_prefix, safe='')}{{0..{cfg.keys - 1}}}/", 1)


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
        elapsed = await _drive(session, cfg, rec)
    summary = summarize(rec.latencies, rec.statuses, rec.transport, elapsed,
                        rec.max_latency if rec.seen_ok else None)
    settings = {"url": display_url(cfg), "target": cfg.target, "mode": cfg.mode, "connections": cfg.connections,
                "duration_s": cfg.duration_s, "warmup_s": cfg.warmup_s, "keys": cfg.keys}
    return {**settings, **summary}


# ----------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `shardgate bench` options."""
    add = parser.add_argument
    add("--url", default="http://127.0.0.1:8080", help="ingress base URL (default http://127.0.0.1:8080)")
    add("--target", default="Greeter/greet", help="Service/handler or Service/key/handler")
    add("--mode", choices=("call", "send"), default="call", help="call (wait for result) or send (202)")
    add("--connections", type=int, default=32, help="concurrent request loops (default 32)")
    add("--duration", type=float, default=15.0, help="measured seconds (default 15)")
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


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Build and validate a BenchConfig from parsed arguments."""
    headers = {"content-type": "application/json"}
    headers.update((name.lower(), value) for name, value in map(parse_header, args.header))
    cfg = BenchConfig(
        url=args.url, target=args.target, mode=args.mode, connections=args.connections,
        duration_s=args.duration, body=parse_body(args.body), keys=args.keys, key_prefix=args.key_prefix,
        key_order=args.key_order, warmup_s=args.warmup, headers=headers, request_timeout_s=args.timeout,
        max_requests=args.requests, allow_remote=args.allow_remote,
    )
    cfg.validate()
    return cfg


def main(args: argparse.Namespace) -> int:
    """Entry point of `shardgate bench`: 0 if any request succeeded, 1 if none did, 2 on bad options."""
    try:
        cfg = config_from_args(args)
    except BenchError as exc:
        print(f"shardgate bench: {exc}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(run_bench(cfg))
    except KeyboardInterrupt:
        return 130
    print(json.dumps(summary) if args.json else format_summary(summary), flush=True)
    return 0 if summary["ok"] else 1
