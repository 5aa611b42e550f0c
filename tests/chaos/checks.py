"""The chaos suite's checks: the ledger against what the load saw acknowledged, and Redis leftovers."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from tests.chaos.load import Tally
from tests.services.ledger_service import read_ledger

LEFTOVER_PATTERNS = ("sg:{p*}:lock:*", "sg:{p*}:inbox:*", "sg:{p*}:s:*:lock:*", "sg:{p*}:s:*:inbox:*",
                     "sg:{p*}:vq:run:*", "sg:{p*}:vq:q:*")
"""Keys that hold an object's lock, its queue, or a concurrency slot (`partition/keys.py`)."""
NON_EMPTY_PATTERNS = ("sg:{p*}:active", "sg:{p*}:outbox", "sg:{p*}:timers")
"""Per-partition sets/lists that are empty once nothing runs, waits or is due."""


@dataclass
class Verdict:
    """One fault's figures: what the table in `.cache/chaos/report.md` shows."""

    fault: str
    offered: int
    acknowledged: int
    executed_once: int
    duplicated: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unanswered: int = 0
    not_acknowledged: int = 0
    order_violations: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    retried_503: int = 0
    rerun_after_owner_loss: list[str] = field(default_factory=list)
    """Duplicates explained by the fault itself: one invocation whose first run happened before the
    owner was lost (SIGKILL, freeze) and ran again on the new owner, which never learned of the first."""
    evidence: list[str] = field(default_factory=list)
    """The ledger lines (invocation id, ms after the owner's loss) of the unexplained duplicates, so
    a failure says which case it was (two invocations, or a first run after the loss)."""

    @property
    def unexplained_duplicates(self) -> list[str]:
        return sorted(set(self.duplicated) - set(self.rerun_after_owner_loss))

    @property
    def clean(self) -> bool:
        return not (self.unexplained_duplicates or self.lost or self.unanswered or self.not_acknowledged
                    or self.order_violations or self.leftovers)

    def explain(self, tally: Tally) -> str:
        """A failure message: the counts and the first few examples of each problem."""
        return (f"{self.fault}: duplicated {self.duplicated[:5]} (of them explained by the owner's loss: "
                f"{self.rerun_after_owner_loss[:5]}) lost {self.lost[:5]} "
                f"unanswered {tally.unanswered[:5]} bad 503/429 {tally.bad_retryables[:3]} "
                f"given up {tally.given_up[:5]} order {self.order_violations[:5]} leftovers {self.leftovers[:10]}"
                f"{' runs of the unexplained: ' + '; '.join(self.evidence[:5]) if self.evidence else ''}")


def ledger_counts(ledger_dir: Path) -> Counter[str]:
    """tag -> how many times its side effect ran."""
    return Counter(tag for tag, *_ in read_ledger(ledger_dir))


def missing_acked(tally: Tally, ledger_dir: Path) -> list[str]:
    """Acknowledged tags with no ledger line yet."""
    counts = ledger_counts(ledger_dir)
    return [t for t in (*tally.acked_sends, *tally.acked_calls) if counts[t] == 0]


def order_violations(ledger_dir: Path, prefix: str) -> list[str]:
    """Keys of this run whose sequence numbers ran out of order (a repeat of the last one is a
    duplicate, counted elsewhere)."""
    last: dict[str, int] = {}
    bad: defaultdict[str, list[int]] = defaultdict(list)
    for tag, key, seq, *_ in read_ledger(ledger_dir):
        if key == "-" or not tag.startswith(prefix):
            continue
        if key in last and seq < last[key]:
            bad[key].append(seq)
        last[key] = max(seq, last.get(key, seq))
    return [f"{k}: {v[:5]}" for k, v in bad.items()]


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def redis_leftovers(redis: Redis) -> list[str]:
    """Lock, inbox and slot keys still present, and non-empty active/outbox/timers collections."""
    found: list[str] = []
    for pattern in LEFTOVER_PATTERNS:
        found += [as_text(k) async for k in redis.scan_iter(match=pattern, count=1000)]
    for pattern in NON_EMPTY_PATTERNS:
        async for raw in redis.scan_iter(match=pattern, count=1000):
            key = as_text(raw)
            kind = as_text(await redis.type(key))
            size = await (redis.scard(key) if kind == "set" else
                          redis.llen(key) if kind == "list" else redis.zcard(key))
            if size:
                found.append(f"{key} ({size})")
    return found


OWNER_LOSS_SLACK_MS = 1500
"""A side effect of an attempt the lost owner had already sent may land in the ledger this much later
(the deployment runs it whenever its queue gets to it). It stays below the chaos clusters' lease TTL
(2 s, renewed every 300 ms): no new owner can have started a second run this early."""


def rerun_after_owner_loss(ledger_dir: Path, tags: list[str], lost_at_ms: int | None) -> list[str]:
    """Of the duplicated `tags`, those that are one invocation (one id on every line) whose first run
    happened no later than `lost_at_ms` (+ slack) and whose every other run came after it."""
    if lost_at_ms is None:
        return []
    lines: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)
    wanted = set(tags)
    for tag, _, _, inv, at_ms in read_ledger(ledger_dir):
        if tag in wanted:
            lines[tag].append((inv, at_ms))
    explained = []
    for tag, runs in lines.items():
        one_invocation = len({inv for inv, _ in runs}) == 1
        if one_invocation and runs[0][1] <= lost_at_ms + OWNER_LOSS_SLACK_MS and \
                all(at_ms >= lost_at_ms for _, at_ms in runs[1:]):
            explained.append(tag)
    return sorted(explained)


def verdict(fault: str, tally: Tally, ledger_dir: Path, prefix: str, leftovers: list[str],
            owner_lost_at_ms: int | None = None) -> Verdict:
    """Compare the ledger with the tally: once, duplicated (and whether the owner's loss at
    `owner_lost_at_ms`, wall clock, explains it), lost, out of order."""
    counts = ledger_counts(ledger_dir)
    acked = [*tally.acked_sends, *tally.acked_calls]
    mine = {t: n for t, n in counts.items() if t.startswith(prefix)}
    duplicated = sorted(t for t, n in mine.items() if n > 1)
    explained = rerun_after_owner_loss(ledger_dir, duplicated, owner_lost_at_ms)
    return Verdict(
        fault=fault, offered=tally.offered, acknowledged=tally.acknowledged,
        executed_once=sum(1 for t in acked if counts[t] == 1),
        duplicated=duplicated,
        rerun_after_owner_loss=explained,
        evidence=_runs(ledger_dir, sorted(set(duplicated) - set(explained)), owner_lost_at_ms),
        lost=sorted(t for t in acked if counts[t] == 0),
        unanswered=len(tally.unanswered) + len(tally.bad_retryables),
        not_acknowledged=len(tally.given_up),
        order_violations=order_violations(ledger_dir, prefix),
        leftovers=leftovers, retried_503=tally.retried[503],
    )


def _runs(ledger_dir: Path, tags: list[str], lost_at_ms: int | None) -> list[str]:
    """`tag: inv@+ms, inv@+ms` (ms after `lost_at_ms`, or wall clock without it) per tag."""
    runs: defaultdict[str, list[str]] = defaultdict(list)
    wanted = set(tags)
    for tag, _, _, inv, at_ms in read_ledger(ledger_dir):
        if tag in wanted:
            runs[tag].append(f"{inv}@{'+' if lost_at_ms is not None else ''}{at_ms - (lost_at_ms or 0)}ms")
    return [f"{tag}: {', '.join(r)}" for tag, r in sorted(runs.items())]
