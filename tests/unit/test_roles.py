"""deploy/bench/roles.py, its pure parts: reading the batch counters from a metrics page and the
per-process lines."""

from __future__ import annotations

from deploy.bench import roles


def test_metric_values_reads_the_unlabelled_samples_asked_for() -> None:
    text = ("# HELP shardgate_partition_script_batches_total x\n"
            "shardgate_partition_script_batches_total 12.0\n"
            "shardgate_partition_script_batched_calls_total 30.0\n"
            'shardgate_partition_script_duration_seconds_count{script="accept"} 4.0\n'
            "shardgate_other_total 1.0\n")
    assert roles.metric_values(text, roles.BATCH_METRICS) == {
        "shardgate_partition_script_batches_total": 12.0, "shardgate_partition_script_batched_calls_total": 30.0}


def test_per_call_lines_divide_by_the_calls_and_sum_the_servers_without_the_deployment() -> None:
    lines = roles.per_call_lines({"redis": 0.4, "worker-0": 0.8, "deployment": 1.0}, calls=1000, elapsed_s=2.0)
    assert lines[0].split()[:3] == ["redis", "0.400", "ms/call"] and "20 % of a core" in lines[0]
    assert lines[2].split()[:2] == ["deployment", "1.000"]
    assert lines[3].split()[:2] == ["servers", "1.200"]


def test_collapsed_stacks_are_read_and_ranked_by_self_and_inclusive_share() -> None:
    stacks = roles.read_collapsed("main;loop;write 6\nmain;loop 3\nmain;loop;write 1\nnot a stack line\n")
    assert stacks == {("main", "loop", "write"): 7, ("main", "loop"): 3}
    lines = roles.profile_lines(stacks, top=2)
    assert [line.split() for line in lines] == [
        ["self", "70.0", "%", "write"], ["self", "30.0", "%", "loop"],
        ["inclusive", "100.0", "%", "main"], ["inclusive", "100.0", "%", "loop"]]
    assert roles.profile_lines({}, top=3) == ["    no samples"]


def test_the_target_and_profile_options_are_read() -> None:
    args = roles.parse_args(["--target", "Greeter/nap", "--profile", "--profile-top", "5"])
    assert (args.target, args.profile, args.profile_top) == ("Greeter/nap", True, 5)
    assert roles.parse_args([]).target == "Greeter/greet" and not roles.parse_args([]).profile
