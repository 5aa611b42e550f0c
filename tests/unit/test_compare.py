"""deploy/bench/compare.py, its pure parts: /proc CPU and RSS accounting (on a fake /proc written to
a temp dir), the round order and the side-by-side table."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.bench import compare
from deploy.bench.compare import RoundResult

HZ = 100


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int) -> str:
    """A /proc/<pid>/stat line: fields 5..13 zero, utime and stime at 14 and 15, the rest zero."""
    return f"{pid} ({comm}) S {ppid} " + "0 " * 9 + f"{utime} {stime} " + " ".join(["0"] * 30) + "\n"


def fake_process(root: Path, pid: int, *, comm: str = "proc", ppid: int = 1, utime: int = 0, stime: int = 0,
                 rss_kb: int = 0) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "stat").write_text(stat_line(pid, comm, ppid, utime, stime))
    (root / str(pid) / "status").write_text(f"Name:\t{comm}\nPid:\t{pid}\nVmRSS:\t  {rss_kb} kB\nThreads:\t4\n")


# ---------------------------------------------------------------------------------------- /proc


def test_stat_ticks_are_utime_plus_stime_even_with_parentheses_in_the_name() -> None:
    assert compare.parse_stat_cpu_ticks(stat_line(7, "weird) (name 1", 1, 250, 50)) == 300


@pytest.mark.parametrize("line", ["", "12 no-parens S 1", "12 (short) S 1 0 0"])
def test_malformed_stat_lines_raise(line: str) -> None:
    with pytest.raises(ValueError):
        compare.parse_stat_cpu_ticks(line)


def test_cpu_seconds_sums_every_process_and_counts_a_gone_one_as_zero(tmp_path: Path) -> None:
    fake_process(tmp_path, 101, comm="redis-server", utime=120, stime=30)
    fake_process(tmp_path, 102, comm="python -m partition", utime=400, stime=100)
    assert compare.cpu_seconds([101, 102, 999], tmp_path, ticks_per_s=HZ) == pytest.approx(6.5)


def test_cpu_delta_per_request_in_milliseconds(tmp_path: Path) -> None:
    fake_process(tmp_path, 5, utime=100, stime=0)
    before = compare.cpu_seconds([5], tmp_path, ticks_per_s=HZ)
    (tmp_path / "5" / "stat").write_text(stat_line(5, "restate-server", 1, 250, 50))
    after = compare.cpu_seconds([5], tmp_path, ticks_per_s=HZ)
    assert compare.cpu_ms_per_request(before, after, 1000) == pytest.approx(2.0)
    assert compare.cpu_ms_per_request(before, after, 0) is None


def test_rss_sums_vmrss_of_the_live_processes(tmp_path: Path) -> None:
    fake_process(tmp_path, 11, rss_kb=2048)
    fake_process(tmp_path, 12, rss_kb=1024)
    (tmp_path / "13").mkdir()
    (tmp_path / "13" / "status").write_text("Name:\tzombie\nState:\tZ\n")  # no VmRSS line
    assert compare.rss_bytes([11, 12, 13, 14], tmp_path) == 3072 * 1024


def test_process_tree_follows_parent_pids(tmp_path: Path) -> None:
    fake_process(tmp_path, 20, ppid=1)
    fake_process(tmp_path, 21, ppid=20)
    fake_process(tmp_path, 22, ppid=21)
    fake_process(tmp_path, 30, ppid=1)
    (tmp_path / "self").mkdir()  # not a pid: ignored
    assert sorted(compare.process_tree(20, tmp_path)) == [20, 21, 22]
    assert compare.process_tree(30, tmp_path) == [30]


def test_cluster_pids_are_the_live_children_only() -> None:
    cluster = {"supervisor_pid": 1, "processes": [
        {"role": "redis", "name": "redis", "pid": 10}, {"role": "worker", "name": "worker-0", "pid": 11},
        {"role": "worker", "name": "worker-1", "pid": None}, {"role": "ingress", "name": "ingress", "pid": 12}]}
    assert compare.cluster_server_pids(cluster) == [10, 11, 12]


# ------------------------------------------------------------------------------- rounds and table


def test_rounds_alternate_between_the_servers() -> None:
    plan = compare.round_plan(["ts"], 2, ["call", "send"])
    assert [server for *_, server in plan] == ["shardgate", "restate"] * 4
    assert [(n, sc) for _, n, sc, _ in plan[:4]] == [(1, "call"), (1, "call"), (1, "send"), (1, "send")]


def test_send_result_counts_the_drain_in_the_executed_rate() -> None:
    summary = {"requests": 1000, "ok": 1000, "elapsed_s": 8.0, "ok_rps": 125.0,
               "latency_ms": {"p50": 1.5, "p99": 9.0}, "errors": {"total": 0}}
    r = compare.result_from_bench(summary, deployment="ts", scenario="send", server="restate", round_no=1,
                                  server_cpu_s=1.0, deployment_cpu_s=0.5, rss=100 * 2**20, drain_s=2.0)
    assert (r.rps, r.executed_rps, r.cpu_ms_per_request, r.deployment_cpu_ms_per_request, r.rss_mb) == \
        (125.0, 100.0, 1.0, 0.5, 100.0)


@pytest.mark.parametrize(("values", "unit", "decimals", "expected"), [
    ([528.2, 890.4], "req/s", 0, "528-890 req/s"),
    ([1166.0, 1551.0], "req/s", 0, "1,166-1,551 req/s"),
    ([861.0, 861.2], "/s", 0, "861/s"),
    ([1.9, None, 2.1], "ms", 2, "1.90-2.10 ms"),
    ([None], "ms", 2, "-"),
    ([], "", 0, "-"),
])
def test_format_range(values: list[float | None], unit: str, decimals: int, expected: str) -> None:
    assert compare.format_range(values, unit, decimals) == expected


def result(server: str, scenario: str, round_no: int, rps: float, cpu_ms: float, rss_mb: float) -> RoundResult:
    return RoundResult(deployment="ts", scenario=scenario, server=server, round=round_no, requests=int(rps * 8),
                       ok=int(rps * 8), elapsed_s=8.0, rps=rps, p50_ms=20.0, p99_ms=60.0, errors=0,
                       cpu_ms_per_request=cpu_ms, deployment_cpu_ms_per_request=0.4, rss_mb=rss_mb,
                       executed_rps=rps / 2 if scenario == "send" else None)


def test_table_puts_shardgate_and_restate_side_by_side() -> None:
    results = [result("shardgate", "call", 1, 528.0, 2.1, 280.0), result("restate", "call", 1, 1166.0, 1.1, 430.0),
               result("shardgate", "call", 2, 890.0, 1.9, 289.0), result("restate", "call", 2, 1551.0, 0.88, 436.0),
               result("shardgate", "send", 1, 862.0, 1.5, 289.0), result("restate", "send", 1, 1722.0, 0.7, 436.0)]
    text = compare.format_table(results, {"duration_s": 8, "connections": 32,
                                          "deployments": {"ts": "@restatedev/restate-sdk 1.17.2"}})
    lines = text.splitlines()
    assert lines[0].startswith("TypeScript SDK deployment (node), @restatedev/restate-sdk 1.17.2; registered with "
                               "use_http_11: HTTP/1.1 request-response: 2 alternating rounds, 8 s each, 32 connections")
    h2c = compare.format_table(results, {"duration_s": 8, "connections": 32, "transport": "h2c"}).splitlines()
    assert "registered for h2c: both bidirectional where the SDK says BIDI_STREAM" in h2c[0]
    assert "| | shardgate (2 workers, 1 ingress, Redis) | Restate 1.7.12 |" in lines
    assert "| call Greeter/greet | 528-890 req/s | 1,166-1,551 req/s |" in lines
    assert ("| server CPU per call (all server processes, Redis included) | 1.90-2.10 ms | 0.88-1.10 ms |"
            in lines)
    assert "| call p50 / p99 | 20.0 / 60.0 ms | 20.0 / 60.0 ms |" in lines
    assert "| send, accepted | 862/s | 1,722/s |" in lines
    assert "| send, executed (accepted / (bench + drain)) | 431/s | 861/s |" in lines
    assert "| RSS of the server processes | 280-289 MB | 430-436 MB |" in lines


def test_the_table_names_the_handler_called() -> None:
    text = compare.format_table([result("shardgate", "call", 1, 300.0, 2.0, 280.0)], {"target": "Greeter/with_run"})
    assert "| call Greeter/with_run | 300 req/s | - |" in text.splitlines()
    assert compare.parse_args(["--target", "Greeter/with_run"]).target == "Greeter/with_run"
    assert compare.parse_args([]).target == "Greeter/greet"


def test_table_shows_a_dash_for_a_server_without_rounds() -> None:
    text = compare.format_table([result("shardgate", "call", 1, 500.0, 2.0, 280.0)], {})
    assert "| call Greeter/greet | 500 req/s | - |" in text.splitlines()


def test_a_baseline_tree_gets_its_own_column_and_turn() -> None:
    rounds = [result("shardgate", "call", 1, 500.0, 2.0, 280.0), result("baseline", "call", 1, 400.0, 2.5, 270.0),
              result("restate", "call", 1, 800.0, 1.0, 300.0)]
    lines = compare.format_table(rounds, {"baseline": "/tmp/base"}).splitlines()
    assert "| | shardgate (2 workers, 1 ingress, Redis) | shardgate baseline (/tmp/base) | Restate 1.7.12 |" in lines
    assert "| call Greeter/greet | 500 req/s | 400 req/s | 800 req/s |" in lines
    plan = compare.round_plan(["ts"], 1, ["call"], ["shardgate", "restate", "baseline"])
    assert [server for *_, server in plan] == ["shardgate", "restate", "baseline"]
