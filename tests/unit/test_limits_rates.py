"""Rate-limit rules (validation, the admission string the Lua reads), the bounded vqueue gauges,
the `/query` mirrors of the worker's hash fields, and the scoped bench's pure parts."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ingress.admin.query import vqueues
from ingress.admin.query.columns import SCHEMAS
from partition.invocation import HashField, Status
from partition.metrics import NO_RULE, VqueueGauges
from sgtools.bench import (
    BenchConfig,
    BenchError,
    HistogramSnapshot,
    RequestPlan,
    display_url,
    histogram_quantile,
    invocation_path,
    parse_histogram,
    queue_wait_summary,
)
from shardgate.limits import UNLIMITED, BucketView, Limits, QueueView, Rule, RuleBook, RuleError


@pytest.mark.parametrize(("raw", "message"), [
    ({"rate": "5/d"}, "invalid rate '5/d'"),
    ({"rate": "0/s"}, "invalid rate '0/s'"),
    ({"rate": "1000001/s"}, "count of 1 to 1000000"),
    ({"rate": 5}, "rate must be a string"),
    ({"rate": "5/s", "burst": 0}, "burst must be an integer from 1"),
    ({"rate": "5/s", "burst": True}, "burst must be an integer"),
    ({"concurrency": 2, "burst": 3}, "burst needs a rate"),
    ({"rate": "5/s", "on_limit": "drop"}, "on_limit must be 'queue' or 'reject'"),
    ({"burst": 3}, "burst needs a rate"),
])
def test_malformed_rate_limits_are_refused_with_a_clear_message(raw: dict[str, object], message: str) -> None:
    with pytest.raises(RuleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Limits.parse(raw)


def test_a_rule_without_limits_is_unlimited() -> None:
    """What `restate rules set P --unlimited` stores: it lifts a broader rule's limit."""
    unlimited = Limits.parse({})
    assert (unlimited.concurrency, unlimited.rate) == (None, None)
    assert unlimited.admission() == Limits.parse({"concurrency": None}).admission()
    assert unlimited.admission() != Limits.parse({"concurrency": 5}).admission()


def test_the_admission_of_a_plain_concurrency_rule_is_its_limit_as_before() -> None:
    assert Limits.parse({"concurrency": 5}).admission() == "5"


@pytest.mark.parametrize(("raw", "admission"), [
    ({"rate": "20/s", "burst": 5}, f"{UNLIMITED}|50.000000|5|queue"),
    ({"rate": "100/m"}, f"{UNLIMITED}|600.000000|1|queue"),
    ({"rate": "7/s", "concurrency": 3, "on_limit": "reject"}, "3|142.857143|1|reject"),
    ({"concurrency": 2, "on_limit": "reject"}, "2||1|reject"),
    ({"rate": "2/h"}, f"{UNLIMITED}|1800000.000000|1|queue"),
])
def test_rate_admissions(raw: dict[str, object], admission: str) -> None:
    limits = Limits.parse(raw)
    assert limits.admission() == admission
    assert Limits.parse(limits.to_json()) == limits  # the stored form reads back the same


def test_a_bucket_takes_the_admission_and_rule_of_the_rule_counting_it() -> None:
    book = RuleBook.of([Rule("s/*", Limits.parse({"rate": "10/s", "burst": 2})),
                        Rule("s", Limits.parse({"concurrency": 4}))])
    assert book.bucket_admission("s/a") == f"{UNLIMITED}|100.000000|2|queue"
    assert book.bucket_admission("s") == "4"
    assert book.bucket_admission("t") == str(UNLIMITED)  # no rule any more: the queue drains
    assert (book.rule_of("s/a"), book.rule_of("s"), book.rule_of("t")) == ("s/*", "s", None)


def test_the_query_package_mirrors_the_workers_hash_fields_and_statuses() -> None:
    assert (vqueues.F_LIMIT_KEY, vqueues.F_VQUEUE) == (HashField.LIMIT_KEY.value, HashField.VQUEUE.value)
    assert vqueues.INBOXED == Status.INBOXED.value
    assert set(vqueues._STAGES) | {vqueues.INBOXED, Status.COMPLETED.value} == {s.value for s in Status}


def test_sys_rules_and_sys_vqueues_use_restates_column_names() -> None:
    restate_rules = {"pattern", "concurrency", "description", "disabled", "version", "last_modified"}
    assert restate_rules <= set(SCHEMAS["sys_rules"].names)
    restate_vqueues = {"partition_key", "id", "stage", "status", "sequence_number", "entry_id", "entry_kind",
                       "created_at"}
    assert restate_vqueues <= set(SCHEMAS["sys_vqueues"].names)


def _scrape(gauges: VqueueGauges) -> str:
    registry = CollectorRegistry()
    registry.register(gauges)
    return generate_latest(registry).decode()


def test_gauges_aggregate_per_rule_and_keep_only_the_busiest_buckets() -> None:
    gauges = VqueueGauges(top_n=2)
    views = [BucketView(f"s/k{n}", 1, (QueueView("", n, 1000 * n),)) for n in range(5)]
    rule_of = {v.bucket: "s/*" for v in views}.get
    gauges.update(3, views, rule_of)
    gauges.update(4, [BucketView("gone", 2)], lambda _: None)
    text = _scrape(gauges)
    assert 'shardgate_scope_rule_queued{rule="s/*"} 10.0' in text
    assert 'shardgate_scope_rule_running{rule="s/*"} 5.0' in text
    assert 'shardgate_scope_rule_oldest_queued_age_seconds{rule="s/*"} 4.0' in text
    assert f'shardgate_scope_rule_running{{rule="{NO_RULE}"}} 2.0' in text
    bucket_lines = [line for line in text.splitlines() if line.startswith("shardgate_scope_bucket_queued{")]
    assert bucket_lines == ['shardgate_scope_bucket_queued{bucket="s/k4",rule="s/*"} 4.0',
                            'shardgate_scope_bucket_queued{bucket="s/k3",rule="s/*"} 3.0']
    gauges.forget(3)
    assert "s/k4" not in _scrape(gauges)


def test_scoped_bench_urls_spread_over_limit_keys() -> None:
    cfg = BenchConfig(target="Greeter/greet", scope="t1", limit_keys=3)
    cfg.validate()
    plan = RequestPlan(cfg)
    urls = [plan.next_url() for _ in range(4)]
    base = "http://127.0.0.1:8080/restate/scope/t1/call/Greeter/greet?limit-key="
    assert urls == [base + "lk0", base + "lk1", base + "lk2", base + "lk0"]
    assert display_url(cfg) == base + "lk{0..2}"
    assert invocation_path("Counter", "add", "k", "send", "t1") == "/restate/scope/t1/send/Counter/k/add"


@pytest.mark.parametrize(("cfg", "message"), [
    (BenchConfig(scope="bad scope"), "--scope"),
    (BenchConfig(limit_keys=2), "--limit-keys needs --scope"),
    (BenchConfig(scope="s", limit_keys=-1), "--limit-keys must be"),
    (BenchConfig(scope="s", limit_keys=2, limit_key_prefix="a/b"), "--limit-key-prefix"),
    (BenchConfig(scope="s", metrics_urls=("http://10.1.2.3:9100/metrics",)), "--metrics-url"),
])
def test_scoped_bench_settings_are_validated(cfg: BenchConfig, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        cfg.validate()


_EXPOSITION = """# HELP shardgate_scope_queue_wait_seconds x
# TYPE shardgate_scope_queue_wait_seconds histogram
shardgate_scope_queue_wait_seconds_bucket{le="0.1"} 2.0
shardgate_scope_queue_wait_seconds_bucket{le="1.0"} 6.0
shardgate_scope_queue_wait_seconds_bucket{le="+Inf"} 10.0
shardgate_scope_queue_wait_seconds_count 10.0
shardgate_scope_queue_wait_seconds_sum 12.5
shardgate_other_count 99.0
"""


def test_queue_wait_comes_from_the_histogram_delta_of_all_workers() -> None:
    before = parse_histogram([_EXPOSITION], "shardgate_scope_queue_wait_seconds")
    after = parse_histogram([_EXPOSITION, _EXPOSITION], "shardgate_scope_queue_wait_seconds")
    waited = after.minus(before)
    assert waited == HistogramSnapshot(((0.1, 2.0), (1.0, 6.0), (float("inf"), 10.0)), 12.5, 10.0)
    assert histogram_quantile(0.1, waited) == pytest.approx(0.05)
    assert histogram_quantile(0.5, waited) == pytest.approx(0.1 + 0.9 * 3 / 4)
    assert histogram_quantile(0.99, waited) == 1.0  # in +Inf: the last finite bound
    summary = queue_wait_summary(waited)
    assert summary["started"] == 10 and summary["mean_ms"] == 1250.0
    assert queue_wait_summary(HistogramSnapshot())["p50_ms"] is None
