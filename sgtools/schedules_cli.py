"""`shardgate schedules`: manage schedules through a running admin API.

  shardgate schedules list                          every schedule (table, or --json)
  shardgate schedules get ID                        one schedule: next fire times, last ticks
  shardgate schedules set ID (--cron EXPR | --every DURATION) --service S --handler H [--key K]
                             [--timezone TZ] [--body JSON] [--header NAME=VALUE ...]
                             [--start-at TS] [--end-at TS] [--catch-up none|one|all]
                             [--overlap allow|skip] [--paused]
  shardgate schedules set ID --file schedule.json   the PUT body as it is
  shardgate schedules pause ID | resume ID | delete ID

`--admin URL` (default http://127.0.0.1:9070) picks the admin API. Errors print the API's message
and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

DEFAULT_ADMIN = "http://127.0.0.1:9070"
TIMEOUT_S = 30.0
COLUMNS = ("id", "state", "expression", "target", "next", "fired", "skipped", "last invocation")


class CliError(Exception):
    """A request the admin API refused (its message) or could not be sent."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `schedules` subcommands."""
    parser.add_argument("--admin", default=DEFAULT_ADMIN, help=f"admin API base URL (default {DEFAULT_ADMIN})")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="list every schedule")
    for name in ("get", "pause", "resume", "delete"):
        sub.add_parser(name, help=f"{name} one schedule").add_argument("id")
    put = sub.add_parser("set", help="create or replace a schedule")
    put.add_argument("id")
    put.add_argument("--file", type=Path, help="a JSON file holding the whole PUT body")
    expr = put.add_mutually_exclusive_group()
    expr.add_argument("--cron", help="cron expression: 5 fields, 6 with leading seconds, or @hourly ...")
    expr.add_argument("--every", help="ISO 8601 duration (PT15M) or repeating interval (R/<start>/PT1H)")
    put.add_argument("--service")
    put.add_argument("--handler")
    put.add_argument("--key")
    put.add_argument("--timezone")
    put.add_argument("--body", help="JSON value sent as each tick's request body")
    put.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    put.add_argument("--start-at")
    put.add_argument("--end-at")
    put.add_argument("--catch-up", choices=("none", "one", "all"))
    put.add_argument("--overlap", choices=("allow", "skip"))
    put.add_argument("--paused", action="store_true")


def put_body(args: argparse.Namespace) -> dict[str, Any]:
    """The PUT body the `set` options describe. Raises CliError for missing or malformed options."""
    if args.file is not None:
        return dict(json.loads(args.file.read_text()))
    if not (args.cron or args.every) or not (args.service and args.handler):
        raise CliError("set needs --cron or --every, and --service and --handler (or --file)")
    target: dict[str, str] = {"service": args.service, "handler": args.handler}
    if args.key is not None:
        target["key"] = args.key
    body: dict[str, Any] = {"cron": args.cron} if args.cron else {"every": args.every}
    body["target"] = target
    optional = {"timezone": args.timezone, "start_at": args.start_at, "end_at": args.end_at,
                "catch_up": args.catch_up, "overlap": args.overlap}
    body.update({k: v for k, v in optional.items() if v is not None})
    if args.body is not None:
        try:
            body["body"] = json.loads(args.body)
        except json.JSONDecodeError as e:
            raise CliError(f"--body is not JSON: {e}") from None
    if args.header:
        pairs = [h.split("=", 1) for h in args.header]
        if any(len(p) != 2 for p in pairs):
            raise CliError("--header takes NAME=VALUE")
        body["headers"] = dict(pairs)
    if args.paused:
        body["paused"] = True
    return body


def request(admin: str, method: str, path: str, body: Any = None) -> Any:
    """One admin API request; the decoded JSON answer (None when empty). Raises CliError."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(admin.rstrip("/") + path, data=data, method=method,
                                 headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("message", "")
        except (ValueError, AttributeError):
            message = ""
        raise CliError(f"HTTP {e.code}: {message or e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise CliError(f"cannot reach the admin API at {admin}: {e}") from None
    return json.loads(raw) if raw else None


def _row(s: dict[str, Any]) -> tuple[str, ...]:
    t = s["target"]
    target = f"{t['service']}/{t['key']}/{t['handler']}" if "key" in t else f"{t['service']}/{t['handler']}"
    expression = f"cron {s['cron']}" if "cron" in s else f"every {s['every']}"
    if s.get("timezone", "UTC") != "UTC":
        expression += f" ({s['timezone']})"
    nxt = s["next_fire_times"][0] if s["next_fire_times"] else "-"
    return (s["id"], s["state"], expression, target, nxt, str(s["fired"]), str(s["skipped"]),
            s.get("last_invocation_id") or "-")


def table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...] = COLUMNS) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def render(action: str, answer: Any, out: TextIO) -> None:
    """Print an answer as a table (list) or a detail view (one schedule)."""
    if action == "list":
        out.write(table([_row(s) for s in answer["schedules"]]) + "\n")
        return
    if answer is None:
        return
    out.write(table([_row(answer)]) + "\n")
    out.write("next fire times: " + ", ".join(answer["next_fire_times"] or ["-"]) + "\n")
    ticks = [(t["nominal_time"], t["action"], t.get("invocation_id", "-"), t.get("outcome", "-"))
             for t in answer.get("last_ticks", [])]
    if ticks:
        out.write(table(ticks, ("nominal time", "action", "invocation", "outcome")) + "\n")


def run(args: argparse.Namespace) -> Any:
    """Send the request the action names; the API's answer. Raises CliError."""
    path = "/schedules" if args.action == "list" else f"/schedules/{args.id}"
    if args.action in ("list", "get"):
        return request(args.admin, "GET", path)
    if args.action in ("pause", "resume"):
        return request(args.admin, "PATCH", path, {"paused": args.action == "pause"})
    if args.action == "delete":
        return request(args.admin, "DELETE", path)
    return request(args.admin, "PUT", path, put_body(args))


def main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one `schedules` action, printing to `out` (stdout) and `err` (stderr); the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        answer = run(args)
    except CliError as e:
        err.write(f"shardgate schedules: {e}\n")
        return 1
    if args.json:
        if answer is not None:
            out.write(json.dumps(answer, indent=2) + "\n")
    else:
        render(args.action, answer, out)
    return 0
