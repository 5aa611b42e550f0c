"""Collects each fault's figures into `.cache/chaos/report.md` (and `rows.jsonl` beside it).

Each chaos test calls `record(verdict)`; `python -m tests.chaos.report` prints the table (what
`make chaos` does after the run) and `python -m tests.chaos.report --reset` empties it first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.chaos.checks import Verdict

REPORT_DIR = Path(__file__).resolve().parents[2] / ".cache" / "chaos"
ROWS = REPORT_DIR / "rows.jsonl"
REPORT = REPORT_DIR / "report.md"
HEADER = ("| fault | load offered | acknowledged | executed once | duplicated (of them: run when the owner "
          "died) | lost | callers left without an answer | retried 503s | out of order | leftover keys |\n"
          "|---|---|---|---|---|---|---|---|---|---|\n")


def row(v: Verdict) -> dict[str, object]:
    """The figures of one verdict as a JSON-able dict."""
    return {"fault": v.fault, "offered": v.offered, "acknowledged": v.acknowledged,
            "executed_once": v.executed_once, "duplicated": len(v.duplicated),
            "rerun_after_owner_loss": len(v.rerun_after_owner_loss), "lost": len(v.lost),
            "unanswered": v.unanswered + v.not_acknowledged, "retried_503": v.retried_503,
            "out_of_order": len(v.order_violations), "leftovers": len(v.leftovers)}


def record(v: Verdict) -> None:
    """Append the verdict's row (raises OSError if .cache is not writable) and re-render the table."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    with ROWS.open("a") as fh:
        fh.write(json.dumps(row(v)) + "\n")
    REPORT.write_text(render())


def render() -> str:
    """The markdown table of every recorded row (latest run of each fault last)."""
    lines = [json.loads(line) for line in ROWS.read_text().splitlines()] if ROWS.exists() else []
    body = "".join(
        f"| {r['fault']} | {r['offered']} | {r['acknowledged']} | {r['executed_once']} | "
        f"{r['duplicated']} ({r.get('rerun_after_owner_loss', 0)}) | "
        f"{r['lost']} | {r['unanswered']} | {r['retried_503']} | {r['out_of_order']} | {r['leftovers']} |\n"
        for r in lines)
    return "# shardgate chaos report\n\n" + HEADER + body


def main(argv: list[str]) -> int:
    """`--reset` empties the collected rows; otherwise print the table."""
    if "--reset" in argv:
        ROWS.unlink(missing_ok=True)
        REPORT.unlink(missing_ok=True)
        return 0
    print(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
