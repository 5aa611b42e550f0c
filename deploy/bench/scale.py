"""Scale curve: the same open-loop `shardgate bench` scenario against clusters of 1, 2, 4 ... workers.

For every worker count it starts a fresh `shardgate dev` (free ports, its own data dir), registers
the deployment, runs `shardgate bench --rate ... --json` against it, stops it, and finally prints a
table and draws `--out` (achieved throughput against workers, one line per offered rate, and p99
latency against offered rate, one line per worker count). Not a test; meant for a machine bigger
than a laptop, e.g.

    .venv/bin/python deploy/bench/scale.py --workers 1,2,4,8 --rate 500,1000,2000,4000 --duration 20 \\
        --partitions 128 --ingress-nodes 4 --load-balancer --out scale.png --json scale.json

The deployment is the conformance services (`tests/services/conformance_service.py`) served by
hypercorn, unless --deployment names one that is already running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def _int_list(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def http_json(url: str, body: Any = None, timeout_s: float = 30.0) -> tuple[int, Any]:
    """GET (body None) or POST JSON; returns (status, decoded body or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for(what: str, timeout_s: float, probe: Any) -> None:
    """Poll `probe()` until truthy; raise RuntimeError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if probe():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


@contextlib.contextmanager
def served_deployment(app: str, log_dir: Path) -> Iterator[str]:
    """The restate-sdk app `module:attr` under hypercorn on a free port; yields its URL."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.deployments import serve_sdk_app

    with serve_sdk_app(app, log_dir / "deployment.log") as url:
        yield url


@contextlib.contextmanager
def dev_cluster(data_dir: Path, workers: int, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """`shardgate dev --workers N` on free ports until its ready line; yields its cluster.json."""
    argv = [sys.executable, "-m", "sgtools.cli", "dev", "--data-dir", str(data_dir), "--workers", str(workers),
            "--partitions", str(args.partitions), "--ingress-port", "0", "--admin-port", "0",
            "--log-level", "WARNING"]
    if args.load_balancer:
        argv += ["--load-balancer", "--ingress-nodes", str(args.ingress_nodes)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                                        if p)}
    stderr_path = data_dir.with_name(data_dir.name + ".stderr")
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        for line in proc.stdout:
            if line.startswith("shardgate dev ready:"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"shardgate dev not ready; see {stderr_path}")
        else:
            raise RuntimeError(f"shardgate dev exited with {proc.wait()}; see {stderr_path}")
        yield dict(json.loads((data_dir / "cluster.json").read_text()))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def register(cluster: dict[str, Any], deployment: str, probe_target: str) -> None:
    """Register the deployment and wait until the ingress serves `probe_target`."""
    status, body = http_json(f"{cluster['admin_url']}/deployments", {"uri": deployment, "force": True})
    if status not in (200, 201):
        raise RuntimeError(f"registering {deployment} failed: {status} {body}")
    wait_for(f"{probe_target} to answer", 30.0,
             lambda: http_json(f"{cluster['ingress_url']}/restate/call/{probe_target}", "ready", 10)[0] == 200)


def bench(cluster: dict[str, Any], workers: int, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Run the open-loop scenario against the cluster; returns the bench's JSON report."""
    argv = [sys.executable, "-m", "sgtools.cli", "bench", "--url", cluster["ingress_url"], "--target", args.target,
            "--mode", args.mode, "--body", args.body, "--rate", args.rate, "--duration", str(args.duration),
            "--warmup", str(args.warmup), "--max-in-flight", str(args.max_in_flight), "--json",
            "--key-prefix", f"scale-w{workers}-"]
    if args.keys:
        argv += ["--keys", str(args.keys)]
    if args.plot_each:
        argv += ["--plot", str(out_dir / f"open-loop-w{workers}.png")]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    if not done.stdout.strip():
        raise RuntimeError(f"shardgate bench failed ({done.returncode}): {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: dict[int, dict[str, Any]]) -> str:
    """One line per (workers, offered rate): achieved ok/s, p50, p99, p99.9, errors."""
    lines = [f"{'workers':>7} {'offered/s':>9} {'ok/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'errors':>6}"]
    for workers, report in sorted(results.items()):
        for step in report["steps"]:
            lat = step["latency_ms"]
            lines.append(f"{workers:>7} {step['rate_rps']:>9g} {step['ok_rps']:>8.1f} {_ms(lat['p50']):>8} "
                         f"{_ms(lat['p99']):>8} {_ms(lat['p99.9']):>9} {step['errors']['total']:>6}")
    return "\n".join(lines)


def plot(results: dict[int, dict[str, Any]], path: Path, title: str) -> None:
    """Throughput against workers (per offered rate) and p99 against offered rate (per worker count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(results)
    rates = [step["rate_rps"] for step in results[counts[0]]["steps"]]
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(12, 5))
    for i, rate in enumerate(rates):
        ax_tp.plot(counts, [results[w]["steps"][i]["ok_rps"] for w in counts], marker="o", label=f"offered {rate:g}/s")
    ax_tp.set_xlabel("partition workers")
    ax_tp.set_ylabel("achieved ok requests/s")
    ax_tp.set_xticks(counts)
    ax_tp.grid(True, alpha=0.3)
    ax_tp.legend()
    for w in counts:
        p99 = [step["latency_ms"]["p99"] for step in results[w]["steps"]]
        ax_lat.plot(rates, [float("nan") if v is None else v for v in p99], marker="o", label=f"{w} workers")
    ax_lat.set_xlabel("offered requests/s")
    ax_lat.set_ylabel("p99 latency from scheduled send (ms)")
    ax_lat.set_yscale("log")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=_int_list, default=[1, 2, 4], help="worker counts (default 1,2,4)")
    ap.add_argument("--rate", default="100,200,400", help="offered rate steps, as for shardgate bench --rate")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate step (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    ap.add_argument("--target", default="Greeter/greet")
    ap.add_argument("--mode", choices=("call", "send"), default="call")
    ap.add_argument("--body", default='"bench"')
    ap.add_argument("--keys", type=int, default=0)
    ap.add_argument("--max-in-flight", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--load-balancer", action="store_true", help="haproxy in front of --ingress-nodes nodes")
    ap.add_argument("--ingress-nodes", type=int, default=2)
    ap.add_argument("--deployment", default=None, help="URL of a running deployment (default: serve --app)")
    ap.add_argument("--app", default="tests.services.conformance_service:app")
    ap.add_argument("--probe", default="Greeter/greet", help="call that must answer 200 before the bench")
    ap.add_argument("--out", type=Path, default=Path("scale.png"), help="the scale-curve plot")
    ap.add_argument("--json", type=Path, default=None, help="write every bench report here")
    ap.add_argument("--plot-each", action="store_true", help="also an open-loop plot per worker count, open-loop-w<N>.png next to --out")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="shardgate-scale-") as tmp:
        work = Path(tmp)
        with contextlib.ExitStack() as stack:
            deployment = args.deployment or stack.enter_context(served_deployment(args.app, work))
            for workers in args.workers:
                with dev_cluster(work / f"w{workers}", workers, args) as cluster:
                    register(cluster, deployment, args.probe)
                    results[workers] = bench(cluster, workers, args, args.out.parent)
                print(table({workers: results[workers]}), file=sys.stderr, flush=True)
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({str(w): r for w, r in results.items()}, indent=2))
    title = (f"shardgate scale: open-loop {args.mode} {args.target}, {args.duration:g}s per rate, "
             f"{args.partitions} partitions" + (f", {args.ingress_nodes} ingress nodes behind haproxy"
                                                if args.load_balancer else ""))
    plot(results, args.out, title)
    print(f"scale curve written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
