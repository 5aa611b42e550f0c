"""deploy/bench/inflight.py, its pure parts: the data-dir walk, the /query answer, the scaling to
10,000 invocations and the side-by-side table."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.bench import inflight
from deploy.bench.compare import CompareError
from deploy.bench.inflight import InflightResult, Memory


def result(server: str, accepted: int, before: Memory, after: Memory, statuses: dict[str, int]) -> InflightResult:
    return InflightResult(server, 10_000, accepted, 20.0, 1.0, statuses, before, after)


def test_dir_bytes_counts_the_files_below_and_nothing_for_a_missing_dir(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"12345")
    (tmp_path / "y").write_bytes(b"123")
    (tmp_path / "link").symlink_to(tmp_path / "y")
    assert inflight.dir_bytes(tmp_path) == 8
    assert inflight.dir_bytes(tmp_path / "missing") == 0


def test_statuses_come_from_the_rows_and_completed_ones_are_not_in_flight() -> None:
    statuses = inflight.statuses_from_query({"rows": [{"status": "suspended", "n": 9_999},
                                                      {"status": "completed", "n": 3}, {"status": "running", "n": 1}]})
    assert statuses == {"suspended": 9_999, "completed": 3, "running": 1}
    assert inflight.in_flight(statuses) == 10_000


@pytest.mark.parametrize("answer", [{"rows": [{"status": "suspended"}]}, "not json", {"rows": [{"n": "x"}]}])
def test_a_malformed_query_answer_raises(answer: object) -> None:
    with pytest.raises(CompareError):
        inflight.statuses_from_query(answer)


def test_growth_is_scaled_to_ten_thousand_accepted_invocations() -> None:
    r = result("shardgate", 5_000, Memory(100_000_000, 1_000_000, 0), Memory(112_500_000, 13_500_000, 0),
               {"suspended": 5_000})
    assert r.per(r.before.rss_bytes, r.after.rss_bytes) == 25.0
    assert r.per(r.before.redis_used_bytes, r.after.redis_used_bytes) == 25.0
    assert r.per(None, 5) is None
    assert result("x", 0, r.before, r.after, {}).per(1, 2) is None


def test_table_puts_the_servers_side_by_side() -> None:
    sg = result("shardgate", 10_000, Memory(300_000_000, 2_000_000, 1_000), Memory(350_000_000, 27_000_000, 5_001_000),
                {"suspended": 10_000, "completed": 1})
    rs = result("restate", 10_000, Memory(200_000_000, None, 0), Memory(290_000_000, None, 4_000_000),
                {"suspended": 10_000})
    table = inflight.format_table([rs, sg])
    head = next(line for line in table.splitlines() if line.startswith("| |"))
    assert head.index("shardgate") < head.index("Restate")
    assert "| RSS of the server processes, growth | 50.0 MB | 90.0 MB |" in table
    assert "| Redis `used_memory`, growth | 25.0 MB | - |" in table
    assert "| bytes on disk under the data dir, growth | 5.0 MB | 4.0 MB |" in table
    assert "| in flight (accepted, not completed) | 10,000 of 10,000 | 10,000 of 10,000 |" in table
    assert "| sends accepted per s | 500 | 500 |" in table
